"""Smoke tests of the overhead benchmark's pure parts (bench/overhead); no LiteLLM, no wrk.

The harness itself is exercised by running it (`python -m bench.overhead --quick`).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.overhead import loadgen, mock_upstream, orchesity_target
from bench.overhead.probe import Client, check_completion
from bench.overhead.redis_count import RedisCounter
from bench.overhead.report import add_overheads, failed_row, goals, table

# --- the mock upstream ---------------------------------------------------------------------

def test_parse_request_content_length_and_incomplete() -> None:
    raw = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"
    assert mock_upstream.parse_request(raw[:-1]) is None
    used, method, target, headers, body = mock_upstream.parse_request(raw + b"GET /")
    assert (used, method, target, body) == (len(raw), b"POST", b"/v1/chat/completions", b"body")
    assert headers[b"host"] == b"x"


def test_parse_request_chunked() -> None:
    raw = (b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert mock_upstream.parse_request(raw[:-2]) is None
    used, _, _, _, body = mock_upstream.parse_request(raw)
    assert used == len(raw) and body == b"abcde"


def test_wants_stream() -> None:
    assert mock_upstream.wants_stream(b'{"model": "m", "stream": true}') == ("m", True)
    assert mock_upstream.wants_stream(b'{"stream": "yes"}') == ("mock", False)
    assert mock_upstream.wants_stream(b"not json") == ("mock", False)


@pytest.fixture(scope="module")
def mock_port() -> Iterator[int]:
    from bench.overhead.procs import free_port

    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: list[asyncio.Event] = []

    async def main() -> None:
        started = asyncio.Event()
        stop.append(asyncio.Event())
        task = asyncio.ensure_future(mock_upstream.serve("127.0.0.1", port, 0.0, 0.0, started, stop[0]))
        await started.wait()
        ready.set()
        await task

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert ready.wait(5)
    yield port
    loop.call_soon_threadsafe(stop[0].set)
    thread.join(5)
    loop.close()


def test_mock_completion_stream_and_stats(mock_port: int) -> None:
    client = Client(mock_port)
    try:
        reply = client.post(b'{"model": "m", "messages": []}', {"Content-Type": "application/json"})
        assert check_completion(reply, mock_upstream.COMPLETION_TEXT) is None
        assert reply.json()["usage"]["total_tokens"] == 22
        first, total = client.ttft(b'{"model": "m", "stream": true}', {})
        assert 0 < first <= total
        assert client.get("/__stats").json()["completions"] == 2
        assert client.get("/nope").status == 404
    finally:
        client.close()


# --- wrk script and result --------------------------------------------------------------

def test_lua_script_escapes_and_parses() -> None:
    script = loadgen.lua_script(b'{"a": "x\\"y"}', {"Authorization": "Bearer k"})
    assert 'wrk.body = "{\\"a\\": \\"x\\\\\\"y\\"}"' in script
    assert 'wrk.headers["Authorization"] = "Bearer k"' in script
    assert "function done(" in script and "request()" not in script
    varying = loadgen.lua_script(b'{"p": "#V#"}', {}, vary_marker="#V#")
    assert "function request()" in varying


def test_parse_result() -> None:
    line = ('BENCH_RESULT {"requests":1000,"duration_us":2000000,"connect":0,"read":1,"write":0,'
            '"status":2,"timeout":0,"p50_us":1500,"p95_us":2500,"p99_us":4000,"mean_us":1600.5,"max_us":9000}')
    result = loadgen.parse_result("noise\n" + line + "\n", "wrk", 0.5)
    assert result.rps == 500.0 and result.p50_ms == 1.5 and result.p99_ms == 4.0
    assert result.errors == 3 and result.errors_detail["status"] == 2
    with pytest.raises(loadgen.LoadgenUnavailable):
        loadgen.parse_result("no result", "wrk", 0)


# --- report ------------------------------------------------------------------------------

def _row(target: str, conc: int, rps: float, p50: float, **extra: object) -> dict:
    return {"target": target, "concurrency": conc, "rps": rps, "p50_ms": p50, "p95_ms": p50,
            "p99_ms": p50, "overhead_p50_ms": None, "errors": 0, "peak_rss_mb": 60.0, **extra}


def test_overheads_goals_and_table() -> None:
    rows = [_row("direct", 1, 800, 1.2), _row("direct", 16, 10000, 1.5), _row("litellm", 16, 80, 170),
            _row("reference", 16, 800, 19), _row("orchesity", 1, 500, 2.0), _row("orchesity", 16, 900, 16),
            failed_row("orchesity_cache_hit", 1, "HTTP 404 from POST /v1/chat/completions")]
    add_overheads(rows)
    assert rows[0]["overhead_p50_ms"] == 0.0
    assert rows[4]["overhead_p50_ms"] == 0.8
    assert rows[6]["overhead_p50_ms"] is None
    by_goal = {g["goal"]: g for g in goals(rows, 2.0)}
    assert by_goal["c=16: orchesity rps >= 10x litellm, no errors"]["status"] == "pass"
    assert by_goal["c=1: orchesity cache hit p50 <= 2 ms"]["status"] == "n/a"
    assert by_goal["2 Redis round trips per cache miss"]["status"] == "pass"
    text = table(rows)
    assert "FAILED: HTTP 404" in text and "orchesity_cache_hit" in text
    json.dumps(rows)  # the JSON output is plain data


# --- Orchesity's providers file ------------------------------------------------------------

def test_providers_file_is_accepted_by_orchesity(tmp_path: Path) -> None:
    path = orchesity_target.write_providers_file(tmp_path / "providers.toml", 9999)
    assert orchesity_target.validate_providers_file(path) is None
    assert 'base_url = "http://127.0.0.1:9999/v1"' in path.read_text()


# --- Redis round-trip counting, on a real Redis ----------------------------------------------

def test_round_trip_counter_counts_round_trips_not_commands(redis_server) -> None:
    counter = RedisCounter(redis_server.socket_path)
    try:
        calibration = counter.calibrate(n=20, pipeline_size=4)
    finally:
        counter.close()
    assert calibration["ok"], calibration
    assert calibration["measured_commands"] == 20 + 20 * 4
