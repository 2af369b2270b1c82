"""core.resp on its own: timeouts on a shared connection, and connection setup.

Against real Redis: the session's server, or a redis-server process of the test's own
that it can freeze (SIGSTOP). The one fake is a TCP server that accepts and never
answers, standing in for a Redis that hangs during AUTH.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator

import pytest

from core.resp import ConnectionLost, RespClient
from tests.servers import RedisProcess

# Busy-waits inside Redis for ARGV[1] microseconds: a slow command that blocks the server.
SLOW = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start >= tonumber(ARGV[1])
return 'slow'
"""


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    server = RedisProcess()
    server.start()
    yield server
    server.signal(signal.SIGCONT)
    server.kill()


async def test_a_callers_timeout_leaves_the_others_on_the_connection(redis_url: str) -> None:
    client = RespClient(redis_url, timeout=0.5, connections=1)
    key = f"orchesity:test:{uuid.uuid4().hex[:12]}"
    try:
        await client.execute([["SET", key, "value"]])
        connection = client._slots[0]
        slow = asyncio.ensure_future(client.execute([["EVAL", SLOW, 0, 750_000]]))
        behind = asyncio.ensure_future(client.execute([["GET", key]]))  # due at 0.5 s
        await asyncio.sleep(0.4)
        later = asyncio.ensure_future(client.execute([["GET", key]]))  # due at 0.9 s
        # The script ends at 0.75 s. The first two callers time out for their own reason
        # (Redis is busy past their deadline); the third is answered in time.
        with pytest.raises(TimeoutError):
            await slow
        with pytest.raises(TimeoutError):
            await behind
        assert await later == ["value"]
        # Same connection, and still in step: the two dropped replies went nowhere.
        assert client._slots[0] is connection and not connection.closed
        assert await client.execute([["GET", key], ["ECHO", "x"]]) == ["value", "x"]
    finally:
        await client.close()


async def test_a_stuck_connection_is_closed_and_the_next_call_reconnects(
        redis_process: RedisProcess) -> None:
    client = RespClient(redis_process.url, timeout=0.3, connections=1)
    try:
        assert await client.execute([["PING"]]) == ["PONG"]
        connection = client._slots[0]
        assert connection is not None
        redis_process.signal(signal.SIGSTOP)  # the socket stays open, nothing answers
        with pytest.raises(TimeoutError):
            await client.execute([["PING"]])
        assert not connection.closed  # one timeout could be one slow command
        await asyncio.sleep(0.35)
        with pytest.raises(TimeoutError):
            await client.execute([["PING"]])
        assert connection.closed  # the oldest reply is owed for more than 2 x 0.3 s
        redis_process.signal(signal.SIGCONT)
        assert await client.execute([["PING"]]) == ["PONG"]
        assert client._slots[0] is not connection
    finally:
        await client.close()


async def test_each_caller_times_out_at_its_own_deadline(redis_process: RedisProcess) -> None:
    client = RespClient(redis_process.url, timeout=0.3, connections=1)
    loop = asyncio.get_running_loop()
    ended: dict[str, float] = {}
    try:
        assert await client.execute([["PING"]]) == ["PONG"]
        redis_process.signal(signal.SIGSTOP)  # nothing is answered from here on
        started = loop.time()
        first = asyncio.ensure_future(client.execute([["PING"]]))
        await asyncio.sleep(0.15)
        second = asyncio.ensure_future(client.execute([["PING"]]))  # due 0.15 s after the first
        for name, call in (("first", first), ("second", second)):
            call.add_done_callback(lambda _, name=name: ended.setdefault(name, loop.time() - started))
        done, _ = await asyncio.wait([first, second], timeout=3.0)
        assert done == {first, second}  # neither waits on past its deadline
        assert all(isinstance(call.exception(), TimeoutError) for call in done)
        assert 0.3 <= ended["first"] < ended["second"] and ended["second"] >= 0.45
    finally:
        redis_process.signal(signal.SIGCONT)
        await client.close()


@pytest.mark.parametrize("url, reply", [
    ("redis://:secret@127.0.0.1:{port}", None),  # AUTH never answered
    ("redis://127.0.0.1:{port}/3", None),  # SELECT never answered
    ("redis://:secret@127.0.0.1:{port}", b"-WRONGPASS invalid username-password pair\r\n"),
])
async def test_a_connection_whose_setup_fails_is_closed(url: str, reply: bytes | None) -> None:
    received = bytearray()
    closed = asyncio.Event()

    async def silent_redis(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):  # until the client closes its socket
            received.extend(data)
            if reply is not None:
                writer.write(reply)
        closed.set()
        writer.close()

    server = await asyncio.start_server(silent_redis, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RespClient(url.format(port=port), timeout=0.3)
    try:
        with pytest.raises(TimeoutError if reply is None else ConnectionLost):
            await client.execute([["PING"]])
        await asyncio.wait_for(closed.wait(), timeout=2.0)  # the server saw EOF
        assert received.startswith(b"*2\r\n$4\r\nAUTH\r\n" if "secret" in url else b"*2\r\n$6\r\nSELECT\r\n")
        assert b"PING" not in received
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
