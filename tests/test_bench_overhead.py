"""Smoke tests of the overhead benchmark's parts (bench/overhead); no LiteLLM, no Portkey, no wrk.

The harness itself is exercised by running it (`python -m bench.overhead --quick`).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.overhead import cli, loadgen, mock_upstream, orchesity_target, streamload
from bench.overhead.cli import workers_summary
from bench.overhead.probe import Client, check_completion
from bench.overhead.redis_count import RedisCounter, per_request
from bench.overhead.report import add_overheads, add_stream_overheads, failed_row, goals, growth, table

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
            _row("reference", 16, 800, 19), _row("orchesity", 1, 500, 2.0), _row("orchesity", 16, 1300, 16),
            failed_row("orchesity_cache_hit", 1, "HTTP 404 from POST /v1/chat/completions")]
    add_overheads(rows)
    assert rows[0]["overhead_p50_ms"] == 0.0
    assert rows[4]["overhead_p50_ms"] == 0.8
    assert rows[6]["overhead_p50_ms"] is None
    by_goal = {g["goal"]: g for g in goals(rows, 2.0)}
    assert by_goal["c=16: orchesity rps >= 15x litellm, no errors"]["status"] == "pass"
    assert by_goal["c=16: orchesity rps >= 2x portkey, no errors"]["status"] == "n/a"
    assert by_goal["c=1: orchesity miss p50 overhead <= 1 ms"]["status"] == "pass"
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


# --- issue 15: long streams, the stream load generator, the sections ----------------------

def _stream_spec(chunks: int, delay_ms: float) -> dict:
    body = {"model": "m", "stream": True, "messages": [
        {"role": "user", "content": "hi " + mock_upstream.long_stream_marker(chunks, delay_ms)}]}
    return {"body": json.dumps(body), "headers": {"Content-Type": "application/json"}}


def test_mock_long_stream_has_the_chunks_asked_for(mock_port: int) -> None:
    assert mock_upstream.long_stream(b'{"x": "[mock-stream 7 x 2.5]"}') == (7, 0.0025)
    assert mock_upstream.long_stream(b'{"x": "plain"}') is None
    client = Client(mock_port)
    try:
        reply = client.post(_stream_spec(7, 1)["body"].encode(), {"Content-Type": "application/json"})
    finally:
        client.close()
    events = [json.loads(line[6:]) for line in reply.body.decode().splitlines()
              if line.startswith("data: {")]
    contents = [e["choices"][0]["delta"].get("content") for e in events if e["choices"]]
    assert [c for c in contents if c] == ["tok"] + [" tok"] * 6
    assert events[-1]["usage"]["completion_tokens"] == mock_upstream.COMPLETION_TOKENS


def test_content_events_keeps_a_cut_event() -> None:
    buffer = bytearray(b'data: {"delta": {"content": "a"}}\n\ndata: {"delta": {"content": ""}}\n\ndata: {"de')
    assert streamload.content_events(buffer) == (1, False)
    assert buffer == bytearray(b'data: {"de')
    buffer += b'lta": {"content": "b"}}\n\ndata: [DONE]\n\n'
    assert streamload.content_events(buffer) == (1, True)


def test_stream_load_generator_reads_every_stream_to_its_end(mock_port: int) -> None:
    url_path = "/v1/chat/completions"
    once = asyncio.run(streamload.drive("127.0.0.1", mock_port, url_path, _stream_spec(5, 20), 8,
                                        duration=None, ramp=0.01, timeout=10, expect=5))
    assert (once["streams"], once["content_chunks"], once["errors"]) == (8, 40, 0)
    assert once["peak_open_streams"] == 8 and once["ttft_p50_ms"] is not None
    short = asyncio.run(streamload.drive("127.0.0.1", mock_port, url_path, _stream_spec(3, 0), 2,
                                         duration=None, ramp=0, timeout=10, expect=5))
    assert short["errors_detail"]["short"] == 2
    loop = asyncio.run(streamload.drive("127.0.0.1", mock_port, url_path, _stream_spec(2, 1), 2,
                                        duration=0.2, ramp=0, timeout=10, expect=2))
    assert loop["streams"] > 2 and loop["errors"] == 0


def test_section_goals_growth_and_workers_summary() -> None:
    streams = {"direct": {"ttft_p50_ms": 2.0}, "portkey": {"ttft_p50_ms": 40.0, "cpu_us_per_chunk": 180.0},
               "orchesity": {"ttft_p50_ms": 5.5, "cpu_us_per_chunk": 90.0}}
    add_stream_overheads(streams)
    assert streams["orchesity"]["ttft_overhead_p50_ms"] == 3.5
    levels = {"100": {"peak_rss_mb": 150.0, "target_cpu_pct": 10.0},
              "1000": {"peak_rss_mb": 240.0, "target_cpu_pct": 55.0, "errors": 0, "peak_open_streams": 1000},
              "2000": {"skipped": "a smaller level had errors"}}
    assert growth(levels) == [{"from": 100, "to": 1000, "rss_kb_per_added_stream": 102.4,
                               "cpu_pct_per_1000_added_streams": 50.0}]
    runs = [{"workers": 1, "rps": 1000.0}, {"workers": 2, "rps": 1500.0},
            {"workers": 1, "rps": 1100.0}, {"workers": 2, "rps": 1700.0}]
    workers = workers_summary(runs, 16)
    assert workers["speedup_per_round"] == [1.5, 1.55]
    assert workers["speedup"] == round(1600 / 1050, 2)
    by_goal = {g["goal"]: g for g in goals([], None, streams=streams, connections={"orchesity": levels},
                                           workers=workers)}
    assert by_goal["streaming TTFT p50 overhead: orchesity <= portkey"]["status"] == "pass"
    assert by_goal["CPU per relayed chunk (us): orchesity <= portkey"]["status"] == "pass"
    assert by_goal["1,000 concurrent streams: 0 errors, all open at once, peak RSS <= 400 MB"]["status"] == "pass"
    assert by_goal["2 workers >= 1.6x 1 worker (c=16 rps)"]["status"] == "FAIL"
    levels["1000"]["peak_open_streams"] = 258  # queued in the gateway: not held open
    by_goal = {g["goal"]: g for g in goals([], None, connections={"orchesity": levels})}
    assert by_goal["1,000 concurrent streams: 0 errors, all open at once, peak RSS <= 400 MB"]["status"] == "FAIL"


def test_a_tiny_run_writes_the_new_sections(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    code = cli.main(["--targets", "direct", "--sections", "streams,connections", "--loadgen", "python",
                     "--duration", "0.5", "--warmup", "0.2", "--concurrency", "2", "--quiet-wait", "0",
                     "--ttft-requests", "3", "--stream-duration", "0.3", "--stream-concurrency", "2",
                     "--stream-chunks", "4", "--stream-chunk-delay-ms", "2", "--connections", "5,10",
                     "--connection-chunks", "2", "--connection-chunk-delay-ms", "20",
                     "--bench-dir", str(tmp_path / "bench"), "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert [(r["target"], r["concurrency"], r["errors"]) for r in report["results"]] == [("direct", 2, 0)]
    direct = report["streams"]["direct"]
    assert direct["errors"] == 0 and direct["content_chunks"] >= 2 * 4 and direct["ttft_overhead_p50_ms"] == 0
    levels = report["connections"]["direct"]
    assert (levels["5"]["streams"], levels["10"]["streams"]) == (5, 10)
    assert levels["growth"][0]["from"] == 5
    assert report["workers"] == {} and "portkey" not in report["targets"]
    assert report["config"]["nofile"]["soft"] >= min(2 * 10 + 1024, report["config"]["nofile"]["hard"])


# --- REST round trips behind the Upstash endpoint ------------------------------------------

def _counted(redis_server, requests: int, send) -> dict:
    """per_request over `requests` calls of `send`, after three uncounted ones."""
    for _ in range(3):
        send()
    counter = RedisCounter(redis_server.socket_path)
    try:
        return per_request(counter, requests, send, idle_seconds=0.3)
    finally:
        counter.close()


def test_round_trip_counter_counts_upstash_rest_calls(redis_server, redis_url: str) -> None:
    import httpx

    from tests.upstash_rest import serve_upstash

    token = "bench-test-token"
    with serve_upstash(redis_url, token) as url, httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        key = "orchesity:test:bench-rest"

        def send() -> int:  # two REST calls carrying four commands
            http.post("/pipeline", json=[["SET", key, "1"], ["INCR", key], ["GET", key]]).raise_for_status()
            return http.post("/", json=["DEL", key]).status_code

        result = _counted(redis_server, 20, send)  # the endpoint's Redis connection opened first
    assert result["ok_requests"] == 20
    assert abs(result["round_trips_per_request"] - 2) < 0.2, result
    assert abs(result["commands_per_request"] - 4) < 0.2, result


def test_round_trip_counter_counts_the_log_drain_apart(redis_server) -> None:
    """A drain's batches come with the requests, not with time, so the idle rate misses
    them: they are counted apart, and a request's figures stay its own."""
    import redis

    client = redis.Redis(unix_socket_path=redis_server.socket_path)
    stream = "orchesity:test:bench-drain"

    def send() -> int:  # a request: one pipeline of two commands
        pipe = client.pipeline(transaction=False)
        pipe.incr("orchesity:test:bench-n")
        pipe.xadd(stream, {"e": "{}"})
        pipe.execute()
        if int(client.xlen(stream)) >= 4:  # every fourth request, a drain: three round trips
            ids = [entry_id for entry_id, _ in client.xrange(stream, count=500)]
            client.xdel(stream, *ids)
        return 200

    try:
        result = _counted(redis_server, 40, send)
    finally:
        client.delete(stream, "orchesity:test:bench-n")
        client.close()
    assert abs(result["round_trips_per_request"] - 1) < 0.1, result
    assert abs(result["commands_per_request"] - 2) < 0.1, result
    assert abs(result["drain_round_trips_per_request"] - 1.5) < 0.1, result  # XLEN each time, XRANGE + XDEL every 4th


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed (apt-get install valgrind)")
def test_the_instruction_count_of_a_few_gateway_requests(tmp_path: Path) -> None:
    from bench.overhead import instructions

    out = tmp_path / "count.json"
    argv = ["--requests", "3", "--warmup", "1", "--data-dir", str(tmp_path / "data"), "--json", str(out)]
    assert instructions.main(argv) == 0  # and only 200s from the gateway, or it fails
    result = json.loads(out.read_text())
    assert result["path"] == "miss" and result["requests"] == 3
    assert 100_000 < result["instructions_per_request"] < 50_000_000
