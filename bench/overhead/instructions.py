"""python -m bench.overhead.instructions: machine instructions per gateway request.

CPU time on a shared 2-core box moves by a quarter from one run to the next, which hides
a 5% change; an instruction count moves by a percent or two. This runs the gateway app
in-process under valgrind's callgrind, with the overhead benchmark's mock upstream and
its own embedded Postgres and Redis (`--data-dir`, default `.bench/instructions-data`),
sends `--warmup` requests, then counts the instructions of `--requests` more, sent one
after another through the app's ASGI interface: the miss path of `bench.overhead`'s
`orchesity` target (the same body, a key checked, routing, the request log and DWA
recording on), or with `--stream` a 200-chunk stream (counted per request). What uvicorn
and the client's socket cost is not in it (most changes to the gateway leave it as it
is); the sockets to the mock, Redis and Postgres are. The request log's drain and the run
worker, background work on timers, are off. Needs `valgrind` (Debian's package).

    uv run python -m bench.overhead.instructions              # ~30 s
    uv run python -m bench.overhead.instructions --stream --requests 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.overhead import orchesity_target
from bench.overhead.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".bench" / "instructions-data"
PROMPT = "Say hello. (run instructions)"


def _body(stream: bool) -> bytes:
    body = {"model": orchesity_target.MODEL_NAME, "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": PROMPT + (" [mock-stream 200 x 0]" if stream else "")}]}
    body = orchesity_target.chat_body(body, miss=True)
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


async def _drive(key: str, stream: bool, warmup: int, requests: int) -> None:
    """The child under valgrind: the app in-process, instrumentation on for the counted part."""
    import uvloop  # noqa: F401 - the loop the gateway runs on

    from functions.gateway import build_app

    body = _body(stream)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "root_path": "", "query_string": b"", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
             "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                         (b"authorization", f"Bearer {key}".encode()), (b"content-length", str(len(body)).encode())]}
    app = build_app()
    statuses: list[int] = []

    async def one() -> None:
        done = asyncio.get_running_loop().create_future()
        sent = False

        async def receive() -> dict[str, object]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done  # a streamed response listens for the client leaving
            return {"type": "http.disconnect"}

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(int(message["status"]))  # type: ignore[call-overload]

        await app(dict(scope), receive, send)
        if not done.done():
            done.set_result(None)

    def instrument(on: bool) -> None:
        subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
                       check=True, capture_output=True)

    async with app.router.lifespan_context(app):
        for _ in range(warmup):
            await one()
        instrument(True)
        for _ in range(requests):
            await one()
        instrument(False)
    if set(statuses) != {200}:
        raise SystemExit(f"the gateway answered {sorted(set(statuses))}, not only 200")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--stream", action="store_true", help="a 200-chunk stream per request")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--data-dir", type=Path, default=DATA, help=f"the embedded stores' (default {DATA})")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # the key, in the process under valgrind
    args = parser.parse_args(argv)
    if args.child:
        import uvloop

        uvloop.run(_drive(args.child, args.stream, args.warmup, args.requests))
        return 0
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    port = free_port()
    mock = subprocess.Popen([sys.executable, "-m", "bench.overhead.mock_upstream", "--port", str(port),
                             "--latency-ms", "1"], cwd=ROOT, start_new_session=True)
    try:
        with tempfile.TemporaryDirectory() as work:
            providers = orchesity_target.write_providers_file(Path(work) / "providers.toml", port)
            env = orchesity_target.environment(providers, args.data_dir, {"LOG_LEVEL": "WARNING", "LOG_DRAIN_INTERVAL_SECONDS": "0",
                                                                "RUN_BACKGROUND_WORKER": "false"})
            key, problem = orchesity_target.issue_key(ROOT, env, Path(work))
            if problem:
                print(problem, file=sys.stderr)
                return 1
            out = Path(work) / "callgrind.out"
            command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                       sys.executable, "-m", "bench.overhead.instructions", "--child", key,
                       "--requests", str(args.requests), "--warmup", str(args.warmup)]
            done = subprocess.run(command + (["--stream"] if args.stream else []), cwd=ROOT, env=env,
                                  capture_output=True, text=True)
            found = re.search(r"Collected : (\d+)", done.stderr)
            if done.returncode != 0 or found is None:
                print(done.stdout[-2000:] + done.stderr[-2000:], file=sys.stderr)
                return 1
    finally:
        mock.terminate()
        mock.wait(timeout=10)
        orchesity_target.stop_stores(args.data_dir)
    total = int(found.group(1))
    result = {"path": "stream (200 chunks)" if args.stream else "miss", "requests": args.requests,
              "instructions": total, "instructions_per_request": round(total / args.requests)}
    print(json.dumps(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
