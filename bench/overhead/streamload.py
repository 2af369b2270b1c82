"""The streaming load generator: many concurrent SSE streams, each read to its end.

    python -m bench.overhead.streamload --url URL --script-json F -c 1000 --once --ramp 2

asyncio over raw sockets (uvloop when installed), in its own process, so its CPU is
its own (the harness reads it from RUSAGE_CHILDREN). Each of `-c` connections sends the
body of the script's JSON twin (the one `loadgen.write_scripts` writes) with
`"stream": true` in it, and reads the chunked SSE reply to `data: [DONE]`:

- `--duration D`: closed loop, each connection starts its next stream when the last one
  ended, for D seconds after its first (the streams run);
- `--once`: each connection carries one stream, the connections opened evenly over
  `--ramp` seconds (the many-connections run; the mock's long streams keep them open).

It prints one line `BENCH_STREAMS {json}`: streams finished, content chunks received,
time to first content chunk (from sending the request) p50/p95/p99, stream time p50,
the most streams open at once, and the errors (connect, status, read, timeout, short:
a stream that ended with fewer content chunks than `--expect-chunks`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.overhead.loadgen import LoadgenUnavailable, children_cpu, percentile

RESULT_TAG = "BENCH_STREAMS "
_CONTENT = re.compile(rb'"content":\s*"[^"]')
ERROR_KINDS = ("connect", "status", "read", "timeout", "short")


def content_events(buffer: bytearray) -> tuple[int, bool]:
    """(content events, saw [DONE]) among the complete SSE events at the front of
    `buffer`, which loses them; an event cut in two stays for the next read."""
    end = buffer.rfind(b"\n\n")
    if end < 0:
        return 0, False
    events = bytes(buffer[:end])
    del buffer[:end + 2]
    return len(_CONTENT.findall(events)), b"data: [DONE]" in events


class Tally:
    def __init__(self) -> None:
        self.ttft: list[float] = []
        self.totals: list[float] = []
        self.chunks = 0
        self.streams = 0
        self.open = 0
        self.peak_open = 0
        self.errors = dict.fromkeys(ERROR_KINDS, 0)


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, bool, int | None]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    chunked, length = False, None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"content-length":
            length = int(value)
    return status, chunked, length


async def one_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes,
                     tally: Tally, expect: int) -> bool:
    """Send one streaming request and read its reply; False if the connection is unusable."""
    started = time.perf_counter()
    writer.write(request)
    status, chunked, length = await _read_head(reader)
    sse = bytearray()
    first: float | None = None
    chunks, done = 0, False
    tally.open += 1
    tally.peak_open = max(tally.peak_open, tally.open)
    try:
        while not done:
            if chunked:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    break
                sse += data[:-2]
            elif length is not None:
                sse += await reader.readexactly(length)
                length = 0
                done = True
            else:
                data = await reader.read(65536)
                if not data:
                    break
                sse += data
            n, saw_done = content_events(sse)
            if n and first is None:
                first = time.perf_counter()
            chunks += n
            done = done or saw_done
        if chunked and done:  # the terminating zero-size chunk after [DONE]
            while int((await reader.readuntil(b"\r\n")).split(b";")[0], 16) != 0:
                pass
            await reader.readexactly(2)
    finally:
        tally.open -= 1
    ended = time.perf_counter()
    if status != 200:
        tally.errors["status"] += 1
        return chunked or length is not None
    tally.streams += 1
    tally.chunks += chunks
    tally.totals.append(ended - started)
    if first is not None:
        tally.ttft.append(first - started)
    if chunks < expect:
        tally.errors["short"] += 1
    return chunked or length is not None


async def drive(host: str, port: int, path: str, spec: dict[str, Any], connections: int, *,
                duration: float | None, ramp: float, timeout: float, expect: int) -> dict[str, Any]:
    headers = "".join(f"{k}: {v}\r\n" for k, v in spec["headers"].items())
    body = spec["body"].encode()
    request = (f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\n{headers}"
               f"content-length: {len(body)}\r\n\r\n").encode() + body
    tally = Tally()
    started = time.perf_counter()
    deadline = started + ramp + duration if duration is not None else None

    async def connection(i: int) -> None:
        if ramp and connections > 1:
            await asyncio.sleep(ramp * i / connections)
        reader = writer = None
        while True:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError:
                    tally.errors["connect"] += 1
                    if deadline is None:
                        return
                    await asyncio.sleep(0.05)
                    continue
            try:
                reusable = await asyncio.wait_for(one_stream(reader, writer, request, tally, expect),  # type: ignore[arg-type]
                                                  timeout)
            except TimeoutError:
                tally.errors["timeout"] += 1
                reusable = False
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                tally.errors["read"] += 1
                reusable = False
            if not reusable:
                writer.close()
                writer = None
            if deadline is None or time.perf_counter() >= deadline:
                break
        if writer is not None:
            writer.close()

    await asyncio.gather(*(connection(i) for i in range(connections)))
    elapsed = time.perf_counter() - started
    ttft = sorted(v * 1000 for v in tally.ttft)
    totals = sorted(v * 1000 for v in tally.totals)

    def ms(values: list[float], q: float) -> float | None:
        return round(percentile(values, q), 3) if values else None

    return {"connections": connections, "streams": tally.streams, "content_chunks": tally.chunks,
            "duration_s": round(elapsed, 3), "peak_open_streams": tally.peak_open,
            "ttft_p50_ms": ms(ttft, 50), "ttft_p95_ms": ms(ttft, 95),
            "ttft_p99_ms": ms(ttft, 99), "stream_p50_ms": ms(totals, 50),
            "errors": sum(tally.errors.values()), "errors_detail": tally.errors}


def parse_result(output: str) -> dict[str, Any]:
    for line in output.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise ValueError(f"the stream load generator printed no result line; output:\n{output[-2000:]}")


def run(url: str, script: Path, connections: int, *, duration: float | None = None, ramp: float = 0.0,
        timeout: float = 60.0, expect: int = 1) -> dict[str, Any]:
    """Run the generator in its own process (the harness's side); its result, with
    `loadgen_cpu_s` (from RUSAGE_CHILDREN across the run, as `loadgen.run` does)."""
    argv = [sys.executable, "-m", "bench.overhead.streamload", "--url", url, "--script-json",
            str(script.with_suffix(".json")), "-c", str(connections), "--ramp", str(ramp),
            "--timeout", str(timeout), "--expect-chunks", str(expect)]
    argv += ["--duration", str(duration)] if duration is not None else ["--once"]
    cpu_before = children_cpu()
    done = subprocess.run(argv, capture_output=True, text=True, check=False, start_new_session=True,
                          timeout=(duration or 0) + ramp + timeout + 60)
    cpu = children_cpu() - cpu_before
    if done.returncode != 0:
        raise LoadgenUnavailable(f"the stream load generator exited {done.returncode}: {done.stderr[-1000:]}")
    return {**parse_result(done.stdout), "loadgen_cpu_s": round(cpu, 3)}


def main(argv: list[str] | None = None) -> None:
    from urllib.parse import urlsplit

    parser = argparse.ArgumentParser(description="many concurrent SSE streams, each read to its end")
    parser.add_argument("--url", required=True)
    parser.add_argument("--script-json", required=True, type=Path)
    parser.add_argument("-c", type=int, default=1, help="connections")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--duration", type=float, help="closed loop for this many seconds")
    mode.add_argument("--once", action="store_true", help="one stream per connection")
    parser.add_argument("--ramp", type=float, default=0.0, help="seconds over which to open the connections")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per stream")
    parser.add_argument("--expect-chunks", type=int, default=1, help="fewer content chunks is an error")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a project dependency
        runner = asyncio.run
    else:
        runner = uvloop.run
    url = urlsplit(args.url)
    spec = json.loads(args.script_json.read_text())
    out = runner(drive(url.hostname or "127.0.0.1", url.port or 80, url.path or "/", spec, args.c,
                       duration=args.duration, ramp=args.ramp, timeout=args.timeout,
                       expect=args.expect_chunks))
    sys.stdout.write(RESULT_TAG + json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
