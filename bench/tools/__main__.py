"""python -m bench.tools: what calling a tool through Orchesity costs, over REST and MCP.

(a) REST: `POST /api/tools/text_stats/invoke` (the python tool of tools.json) against
    `core.tools.builtin.text_stats` called in-process; the overhead of a call is its
    latency minus the in-process median.
(b) MCP: a `tools/call` of text_stats through Orchesity's `/mcp` against the same
    function in a plain SDK server (bench/tools/apps.py: MCPServer, stateless, JSON
    answers). Timed twice: the exact request the SDK's client sends, replayed on one
    keep-alive connection (what the server costs), and the SDK's client itself calling
    the tool (what a user of it sees). Target: Orchesity no slower than the plain server.

Orchesity runs under uvicorn (one process, uvloop + httptools, no access log; the plain
server the same) on an embedded PostgreSQL and Redis started here in a temporary
directory, migrated, with a key whose verdict is already in Redis; every call is
authorised by that key and written to the tool-call log, as in production. Requests are
sequential, over loopback, in interleaved rounds so both servers meet the same machine.

    uv run python -m bench.tools --json bench-out/tools.json [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.coldstart.__main__ import _prepare
from bench.overhead.procs import Service, Supervisor, free_port
from bench.routing.sim import percentile
from core.tools.builtin import stats as text_stats

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / ".bench" / "tools" / "logs"
TEXT = ("Orchesity routes each call to the provider most likely to answer it well. It keeps a log "
        "of every request, a cache of deterministic answers, and the state of each provider. "
        "Tools are defined once and exported three ways!\nIs that enough? It is a start.\n") * 4
EXPECTED = text_stats(TEXT)
ROUNDS = 5


def _uvicorn(target: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "--factory", target, "--host", "127.0.0.1", "--port", str(port),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]


def _stats(seconds: list[float], minus: float = 0.0) -> dict[str, float]:
    values = [(s - minus) * 1000 for s in seconds]
    return {"median_ms": round(statistics.median(values), 4), "p99_ms": round(percentile(values, 99), 4),
            "samples": len(values)}


def _direct(n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        text_stats(TEXT)
        out.append(time.perf_counter() - started)
    return out


class Replay:
    """One recorded request, sent again and again on one keep-alive connection."""

    def __init__(self, port: int, path: str, headers: dict[str, str], body: bytes,
                 check: Callable[[Any], bool]) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.path, self.headers, self.body, self.check = path, headers, body, check

    def send(self) -> float:
        started = time.perf_counter()
        try:
            self.conn.request("POST", self.path, self.body, self.headers)
        except (BrokenPipeError, ConnectionResetError):  # the server closed it while idle between rounds
            self.conn.close()
            started = time.perf_counter()
            self.conn.request("POST", self.path, self.body, self.headers)
        response = self.conn.getresponse()
        raw = response.read()
        took = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"{self.path}: HTTP {response.status}: {raw[:300]!r}")
        return took

    def verify(self) -> None:
        self.conn.request("POST", self.path, self.body, self.headers)
        answer = json.loads(self.conn.getresponse().read())
        if not self.check(answer):
            raise RuntimeError(f"{self.path}: unexpected answer {json.dumps(answer)[:300]}")


def _mcp_result(answer: Any) -> bool:
    return answer.get("result", {}).get("structuredContent") == EXPECTED


async def _recorded_call(url: str, key: str | None) -> tuple[dict[str, str], bytes]:
    """The headers and body of the tools/call the SDK's client sends to `url`."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    sent: list[httpx2.Request] = []

    async def record(request: httpx2.Request) -> None:
        sent.append(request)

    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx2.AsyncClient(headers=headers, event_hooks={"request": [record]}) as http:
        async with Client(streamable_http_client(url, http_client=http), cache=None) as client:
            await client.list_tools()
            await client.call_tool("text_stats", {"text": TEXT})
    call = sent[-1]
    kept = {k: v for k, v in call.headers.items() if k.lower() not in ("host", "content-length")}
    return kept, call.content


async def _sdk_calls(url: str, key: str | None, n: int) -> list[float]:
    """`n` calls of text_stats by the SDK's client, each timed."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"authorization": f"Bearer {key}"} if key else {}
    out = []
    async with httpx2.AsyncClient(headers=headers) as http:
        async with Client(streamable_http_client(url, http_client=http), cache=None) as client:
            await client.list_tools()
            for _ in range(n):
                started = time.perf_counter()
                result = await client.call_tool("text_stats", {"text": TEXT})
                out.append(time.perf_counter() - started)
                if result.is_error:
                    raise RuntimeError(f"{url}: {result.content}")
    return out


def _table(rows: list[tuple[str, dict[str, float]]]) -> str:
    width = max(len(name) for name, _ in rows)
    lines = [f"{'measure'.ljust(width)}  median ms    p99 ms", f"{'-' * width}  ---------  --------"]
    lines += [f"{name.ljust(width)}  {row['median_ms']:9.3f}  {row['p99_ms']:8.3f}" for name, row in rows]
    return "\n".join(lines)


def _environment() -> dict[str, Any]:
    from importlib.metadata import version

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "mcp": version("mcp"), "fastapi": version("fastapi"), "uvicorn": version("uvicorn"),
            "commit": commit.stdout.strip()}


def run(requests: int) -> dict[str, Any]:
    per_round = max(1, requests // ROUNDS)
    with tempfile.TemporaryDirectory(prefix="orchesity-bench-tools-") as tmp, Supervisor() as supervisor:
        loop = asyncio.new_event_loop()
        services, env, key = loop.run_until_complete(_prepare(Path(tmp)))

        def close_services() -> None:  # after the servers (the supervisor stops them first)
            loop.run_until_complete(services.close())
            if services.db.embedded is not None:
                services.db.embedded.stop()

        supervisor.on_close("embedded servers", close_services)
        env = {**env, "ORCHESITY_TOOLS_FILE": str(ROOT / "tools.json"), "LOG_LEVEL": "WARNING"}
        ours_port, plain_port = free_port(), free_port()
        ours = supervisor.start(Service("orchesity", _uvicorn("bench.tools.apps:orchesity", ours_port), ours_port,
                                        LOGS / "orchesity.log", env=env, cwd=ROOT))
        plain = supervisor.start(Service("plain-sdk", _uvicorn("bench.tools.apps:plain", plain_port), plain_port,
                                         LOGS / "plain.log", env={"PATH": env["PATH"]}, cwd=ROOT))
        for service in (ours, plain):
            service.wait_ready(60)
        print("servers up; recording the SDK client's tools/call", flush=True)
        auth = {"authorization": f"Bearer {key}"}
        rest = Replay(ours.port, "/api/tools/text_stats/invoke", {**auth, "content-type": "application/json"},
                      json.dumps({"arguments": {"text": TEXT}}).encode(),
                      lambda answer: answer.get("status") == "ok" and answer.get("result") == EXPECTED)
        ours_headers, ours_body = loop.run_until_complete(_recorded_call(f"http://127.0.0.1:{ours.port}/mcp", key))
        plain_headers, plain_body = loop.run_until_complete(_recorded_call(f"http://127.0.0.1:{plain.port}/mcp", None))
        replays = {"rest": rest,
                   "mcp_orchesity": Replay(ours.port, "/mcp", ours_headers, ours_body, _mcp_result),
                   "mcp_plain": Replay(plain.port, "/mcp", plain_headers, plain_body, _mcp_result)}
        samples: dict[str, list[float]] = {name: [] for name in (*replays, "sdk_orchesity", "sdk_plain")}
        for replay in replays.values():
            replay.verify()
            for _ in range(200):  # warm-up: caches, pools, the first thread of each server
                replay.send()
        direct = _direct(requests * 10)
        for number in range(ROUNDS):
            print(f"round {number + 1}/{ROUNDS}", flush=True)
            for name, replay in replays.items():
                samples[name] += [replay.send() for _ in range(per_round)]
            samples["sdk_orchesity"] += loop.run_until_complete(
                _sdk_calls(f"http://127.0.0.1:{ours.port}/mcp", key, per_round // 2))
            samples["sdk_plain"] += loop.run_until_complete(
                _sdk_calls(f"http://127.0.0.1:{plain.port}/mcp", None, per_round // 2))
    floor = statistics.median(direct)
    results = {
        "direct": _stats(direct),
        "rest_invoke": _stats(samples["rest"]),
        "rest_overhead": _stats(samples["rest"], minus=floor),
        "mcp_raw": {"orchesity": _stats(samples["mcp_orchesity"]), "plain_sdk": _stats(samples["mcp_plain"])},
        "mcp_sdk_client": {"orchesity": _stats(samples["sdk_orchesity"]), "plain_sdk": _stats(samples["sdk_plain"])},
    }
    goals = []
    for measure in ("mcp_raw", "mcp_sdk_client"):
        ours_row, plain_row = results[measure]["orchesity"], results[measure]["plain_sdk"]
        for figure in ("median_ms", "p99_ms"):
            goals.append({"goal": f"{measure} {figure}: Orchesity <= plain SDK server",
                          "orchesity": ours_row[figure], "plain_sdk": plain_row[figure],
                          "status": "pass" if ours_row[figure] <= plain_row[figure] else "FAIL"})
    return {"text_chars": len(TEXT), "requests": requests, "results": results, "goals": goals,
            "environment": _environment()}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tools", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per replayed measure")
    options = parser.parse_args()
    out = run(options.requests)
    results = out["results"]
    print(_table([
        ("text_stats in-process", results["direct"]),
        ("REST invoke, Orchesity", results["rest_invoke"]),
        ("REST overhead (invoke - in-process median)", results["rest_overhead"]),
        ("MCP tools/call replayed, Orchesity /mcp", results["mcp_raw"]["orchesity"]),
        ("MCP tools/call replayed, plain SDK server", results["mcp_raw"]["plain_sdk"]),
        ("MCP call_tool by the SDK client, Orchesity", results["mcp_sdk_client"]["orchesity"]),
        ("MCP call_tool by the SDK client, plain SDK", results["mcp_sdk_client"]["plain_sdk"]),
    ]))
    for goal in out["goals"]:
        print(f"  [{goal['status'].lower()}] {goal['goal']}: {goal['orchesity']} vs {goal['plain_sdk']}")
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {options.json}")
    return 0 if all(goal["status"] == "pass" for goal in out["goals"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
