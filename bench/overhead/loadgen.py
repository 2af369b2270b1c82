"""The load generator: wrk (Debian's package) with a Lua script, or a Python fallback.

Both are closed-loop: C connections, each sending its next request as soon as the last
reply is in, for a fixed duration. Both print one line `BENCH_RESULT {json}` with the
request count, the duration, latency percentiles in microseconds and the errors, which
`run` turns into a `LoadResult`.

wrk is installed with apt-get when missing (`ensure_wrk`). If it cannot be, the Python
fallback (`python -m bench.overhead.loadgen`, asyncio over raw sockets, in its own
process) is used; the harness then reports its CPU use and its rate against the mock
(`direct`), which bound what it can drive: see bench/README.md.

Errors are what wrk counts: socket errors (connect, read, write, timeout) plus HTTP
status errors. wrk counts a status >= 400 as an error (it never sees 1xx, and no target
redirects), so "non-2xx" and wrk's count are the same thing here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULT_TAG = "BENCH_RESULT "


class LoadgenUnavailable(RuntimeError):
    pass


@dataclass
class LoadResult:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: int
    errors_detail: dict[str, int] = field(default_factory=dict)
    loadgen_cpu_s: float = 0.0
    tool: str = "wrk"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ensure_wrk(install: bool = True, log: Any = None) -> str | None:
    """The path of wrk, installing Debian's package if it is missing and we may."""
    found = shutil.which("wrk")
    if found or not install:
        return found
    apt = shutil.which("apt-get")
    if not apt:
        return None
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        if not sudo:
            return None
        prefix = [sudo, "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in ([*prefix, apt, "update", "-qq"], [*prefix, apt, "install", "-y", "-qq", "wrk"]):
        done = subprocess.run(argv, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                              env=env, timeout=600, check=False)
        if done.returncode != 0:
            return None
    return shutil.which("wrk")


# --- wrk ---------------------------------------------------------------------------------

def _lua_string(text: str) -> str:
    """`text` as a double-quoted Lua string literal."""
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\0", "\\000"))
    return f'"{escaped}"'


def lua_script(body: bytes, headers: dict[str, str], vary_marker: str | None = None) -> str:
    """wrk script: POST `body` with `headers`; print the summary as JSON in done().

    With `vary_marker`, each request replaces that marker in the body with a counter
    (unique per thread and run), so no two request bodies are the same.
    """
    text = body.decode()
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(text)}"]
    for name, value in headers.items():
        lines.append(f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}")
    if vary_marker:
        head, _, tail = text.partition(vary_marker)
        lines += [
            f"local head, tail = {_lua_string(head)}, {_lua_string(tail)}",
            "counter = 0",
            "function setup(thread) threads_seen = (threads_seen or 0) + 1; thread:set('tid', threads_seen) end",
            "function request()",
            "  counter = counter + 1",
            "  return wrk.format(nil, nil, nil, head .. (tid or 0) .. '-' .. counter .. tail)",
            "end",
        ]
    lines += [
        "function done(summary, latency, requests)",
        "  local e = summary.errors",
        "  io.write(string.format('" + RESULT_TAG + "{\"requests\":%d,\"duration_us\":%d,"
        "\"connect\":%d,\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d,"
        "\"p50_us\":%.0f,\"p95_us\":%.0f,\"p99_us\":%.0f,\"mean_us\":%.2f,\"max_us\":%.0f}\\n',",
        "    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,",
        "    latency:percentile(50), latency:percentile(95), latency:percentile(99),",
        "    latency.mean, latency.max))",
        "end",
    ]
    return "\n".join(lines) + "\n"


def parse_result(output: str, tool: str, cpu_s: float) -> LoadResult:
    for line in output.splitlines():
        if line.startswith(RESULT_TAG):
            raw = json.loads(line[len(RESULT_TAG):])
            break
    else:
        raise LoadgenUnavailable(f"{tool} printed no result line; output:\n{output[-2000:]}")
    duration = raw["duration_us"] / 1e6
    detail = {k: int(raw[k]) for k in ("connect", "read", "write", "timeout", "status")}
    return LoadResult(
        requests=int(raw["requests"]), duration_s=round(duration, 3),
        rps=round(raw["requests"] / duration, 1) if duration else 0.0,
        p50_ms=round(raw["p50_us"] / 1000, 3), p95_ms=round(raw["p95_us"] / 1000, 3),
        p99_ms=round(raw["p99_us"] / 1000, 3), mean_ms=round(raw["mean_us"] / 1000, 3),
        max_ms=round(raw["max_us"] / 1000, 3), errors=sum(detail.values()),
        errors_detail=detail, loadgen_cpu_s=round(cpu_s, 3), tool=tool)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(tool: str, url: str, script: Path, connections: int, duration: float,
        timeout_s: float = 30.0) -> LoadResult:
    """One closed-loop run; `tool` is a wrk path or "python" for the fallback.

    The CPU the load generator used comes from RUSAGE_CHILDREN across its run (it is
    the only child the harness reaps meanwhile).
    """
    if tool == "python":
        argv = [sys.executable, "-m", "bench.overhead.loadgen", "--url", url, "--script-json",
                str(script.with_suffix(".json")), "-c", str(connections), "-d", str(duration),
                "--timeout", str(timeout_s)]
    else:
        argv = [tool, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
                f"--timeout={max(1, round(timeout_s))}s", "--latency", "-s", str(script), url]
    cpu_before = children_cpu()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + timeout_s + 60,
                          check=False, start_new_session=True)
    cpu = children_cpu() - cpu_before
    if done.returncode != 0:
        raise LoadgenUnavailable(f"{argv[0]} exited {done.returncode}: {done.stderr[-1000:]}")
    return parse_result(done.stdout + done.stderr, "python" if tool == "python" else "wrk", cpu)


def write_scripts(directory: Path, name: str, body: bytes, headers: dict[str, str],
                  vary_marker: str | None = None) -> Path:
    """The Lua script for wrk and its JSON twin for the fallback; returns the .lua path."""
    directory.mkdir(parents=True, exist_ok=True)
    lua = directory / f"{name}.lua"
    lua.write_text(lua_script(body, headers, vary_marker))
    lua.with_suffix(".json").write_text(json.dumps(
        {"body": body.decode(), "headers": headers, "vary_marker": vary_marker}))
    return lua


# --- the Python fallback -----------------------------------------------------------------

def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


async def _drive(host: str, port: int, path: str, spec: dict[str, Any], connections: int,
                 duration: float, timeout: float) -> dict[str, Any]:
    headers = "".join(f"{k}: {v}\r\n" for k, v in spec["headers"].items())
    body_text: str = spec["body"]
    marker = spec.get("vary_marker")
    head_tpl = f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\n{headers}content-length: %d\r\n\r\n"
    fixed_body = body_text.encode()
    fixed = (head_tpl % len(fixed_body)).encode() + fixed_body
    latencies: list[float] = []
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0}
    counter = 0
    deadline = time.perf_counter() + duration

    def request_bytes() -> bytes:
        nonlocal counter
        if not marker:
            return fixed
        counter += 1
        body = body_text.replace(marker, f"py-{counter}").encode()
        return (head_tpl % len(body)).encode() + body

    async def read_reply(reader: asyncio.StreamReader) -> int:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length:
            await reader.readexactly(length)
        return status

    async def worker() -> None:
        reader = writer = None
        while time.perf_counter() < deadline:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError:
                    errors["connect"] += 1
                    await asyncio.sleep(0.01)
                    continue
            started = time.perf_counter()
            try:
                writer.write(request_bytes())
                status = await asyncio.wait_for(read_reply(reader), timeout)  # type: ignore[arg-type]
            except TimeoutError:
                errors["timeout"] += 1
                writer.close()
                writer = None
                continue
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors["read"] += 1
                writer.close()
                writer = None
                continue
            latencies.append(time.perf_counter() - started)
            if status >= 400:
                errors["status"] += 1
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    us = [v * 1e6 for v in latencies]
    return {"requests": len(latencies), "duration_us": int(elapsed * 1e6), **errors,
            "p50_us": percentile(us, 50), "p95_us": percentile(us, 95), "p99_us": percentile(us, 99),
            "mean_us": sum(us) / len(us) if us else 0.0, "max_us": us[-1] if us else 0.0}


def main(argv: list[str] | None = None) -> None:
    from urllib.parse import urlsplit

    parser = argparse.ArgumentParser(description="Python fallback load generator (wrk-like)")
    parser.add_argument("--url", required=True)
    parser.add_argument("--script-json", required=True)
    parser.add_argument("-c", type=int, default=1)
    parser.add_argument("-d", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    url = urlsplit(args.url)
    spec = json.loads(Path(args.script_json).read_text())
    out = asyncio.run(_drive(url.hostname or "127.0.0.1", url.port or 80, url.path or "/", spec,
                             args.c, args.d, args.timeout))
    sys.stdout.write(RESULT_TAG + json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
