"""A lean Redis client: RESP over asyncio, commands packed and replies parsed by hiredis, pipelined.

Why not redis-py's asyncio client: on the gateway's hot path its pipeline machinery
(retry wrapper, per-reply timeout contexts, pure-Python connection reads) cost about
175 µs of CPU per round trip against 45 µs here (bench/overhead; py-spy put Redis at a
fifth of the gateway's CPU per request). URL parsing is still redis-py's.

One connection carries many requests at once: commands are written as they come and
replies, which Redis sends in order, are matched to waiters in FIFO order. A caller that
times out or is cancelled keeps its place in that order and its reply is dropped when it
arrives, so the others on the connection are not disturbed; only a connection that looks
stuck (see `RespClient.execute`) or is lost gets closed, and the next call opens a new one.

Each call's deadline is kept by its connection: one timer per connection, armed for the
earliest deadline outstanding, fails the callers whose deadline has passed with
TimeoutError. An `asyncio.timeout` per call (a timer armed and cancelled each round trip)
cost about 21,000 instructions per round trip, 3.5% of a gateway request
(`bench.overhead.instructions`); opening a connection still runs under one.
"""

from __future__ import annotations

import asyncio
import collections
import math
import ssl
from collections.abc import Sequence
from typing import Any

import hiredis


class ReplyError(Exception):
    """Redis answered this command with an error reply."""


class ConnectionLost(ConnectionError):
    """The connection failed or was closed with replies outstanding."""


def pack(commands: Sequence[Sequence[Any]]) -> bytes:
    """`commands` as RESP, in one buffer (hiredis's C encoder: str, bytes, int and float only)."""
    return b"".join([hiredis.pack_command(tuple(command)) for command in commands])


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self._reader = hiredis.Reader(encoding="utf-8", errors="replace", notEnoughData=False)
        # (future, replies expected, replies so far, loop time the commands were sent, deadline)
        self._waiters: collections.deque[tuple[asyncio.Future[list[Any]], int, list[Any], float, float]] = \
            collections.deque()
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None  # for the earliest deadline outstanding
        self._timer_at = math.inf
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiters = self._waiters
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError:
                self._fail(ConnectionLost("Redis sent something that is not RESP"))
                return
            if reply is False:
                return
            if not waiters:  # a reply nobody asked for: the stream is out of step
                self._fail(ConnectionLost("unexpected reply from Redis"))
                return
            future, count, replies, _, _ = waiters[0]
            replies.append(ReplyError(str(reply)) if isinstance(reply, hiredis.ReplyError) else reply)
            if len(replies) == count:
                waiters.popleft()
                if not future.done():  # the caller may have been cancelled
                    future.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionLost(f"connection to Redis lost ({type(exc).__name__ if exc else 'closed'})"))

    def _fail(self, error: Exception) -> None:
        self.closed = True
        self._disarm()
        while self._waiters:
            future = self._waiters.popleft()[0]
            if not future.done():
                future.set_exception(error)
        if self._transport is not None:
            self._transport.close()

    def send(self, payload: bytes, count: int, deadline: float = math.inf) -> asyncio.Future[list[Any]]:
        """The replies to `payload`'s `count` commands; TimeoutError once the loop's clock
        passes `deadline` without them."""
        loop = self._loop
        future: asyncio.Future[list[Any]] = loop.create_future()
        if self.closed or self._transport is None:
            future.set_exception(ConnectionLost("connection to Redis is closed"))
            return future
        self._waiters.append((future, count, [], loop.time(), deadline))
        if deadline < self._timer_at:
            self._arm(deadline)
        self._transport.write(payload)
        return future

    def _arm(self, at: float) -> None:
        self._disarm()
        self._timer = self._loop.call_at(at, self._expire)
        self._timer_at = at

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = math.inf

    def _expire(self) -> None:
        """Fail the callers whose deadline passed; arm for the next one."""
        self._timer, self._timer_at = None, math.inf
        now = self._loop.time()
        upcoming = math.inf
        for future, _, _, _, deadline in self._waiters:
            if future.done():  # answered in time, cancelled, or already timed out
                continue
            if deadline <= now:
                future.set_exception(TimeoutError())
            elif deadline < upcoming:
                upcoming = deadline
        if upcoming < math.inf:
            self._arm(upcoming)

    def oldest_owed(self) -> float:
        """Seconds the oldest reply still owed on this connection has been outstanding."""
        return self._loop.time() - self._waiters[0][3] if self._waiters else 0.0

    def close(self) -> None:
        self._fail(ConnectionLost("connection closed by the client"))


class RespClient:
    """A few pipelined connections to one Redis, opened on first use."""

    def __init__(self, url: str, *, db: int = 0, timeout: float = 2.0, connections: int = 4) -> None:
        from redis.asyncio.connection import parse_url

        options = parse_url(url)
        self._path: str | None = options.get("path")
        self._host = options.get("host", "localhost")
        self._port = int(options.get("port", 6379))
        self._ssl = ssl.create_default_context() if url.startswith("rediss://") else None
        self._username = options.get("username")
        self._password = options.get("password")
        self._db = int(options.get("db", db) or db)
        self._timeout = timeout
        self._stuck_after = 2 * timeout
        self._slots: list[_Protocol | None] = [None] * max(1, connections)
        self._next = 0
        self._opening: list[asyncio.Lock] = [asyncio.Lock() for _ in self._slots]

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self._path:
            _, protocol = await loop.create_unix_connection(_Protocol, self._path)
        else:
            _, protocol = await loop.create_connection(_Protocol, self._host, self._port, ssl=self._ssl)
        setup: list[list[Any]] = []
        if self._password:
            setup.append(["AUTH", *([self._username] if self._username else []), self._password])
        if self._db:
            setup.append(["SELECT", self._db])
        if setup:
            try:
                for reply in await protocol.send(pack(setup), len(setup)):
                    if isinstance(reply, ReplyError):
                        raise ConnectionLost(f"Redis refused the connection setup: {str(reply).split(' ')[0]}")
            except BaseException:
                # A refusal, or the caller's timeout while AUTH/SELECT is unanswered: no
                # slot holds this connection yet, so close it here or nobody will.
                protocol.close()
                raise
        return protocol

    async def _connection(self, index: int) -> _Protocol:
        async with self._opening[index]:
            protocol = self._slots[index]
            if protocol is None or protocol.closed:
                protocol = self._slots[index] = await self._open()
        return protocol

    async def execute(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send `commands` in one write and return their replies (ReplyError for errors).

        Raises ConnectionLost or OSError when Redis cannot be reached, TimeoutError when
        it does not answer in time (the commands may still run).
        """
        deadline = asyncio.get_running_loop().time() + self._timeout
        index = self._next = (self._next + 1) % len(self._slots)
        protocol = self._slots[index]
        try:
            if protocol is None or protocol.closed:
                async with asyncio.timeout_at(deadline):
                    protocol = await self._connection(index)
            return await protocol.send(pack(commands), len(commands), deadline)
        except TimeoutError:
            # This caller leaves like a cancelled one: its place in the FIFO stays and its
            # reply is dropped when it comes, so the others on the connection keep their
            # own deadlines. The connection goes only when it looks stuck: its oldest owed
            # reply is outstanding for more than twice the timeout. Redis answers in order,
            # so that reply holds up every one behind it; the second timeout's worth of
            # slack lets one slow command (a long script, a huge reply) finish without
            # failing the callers queued behind it that still have time, while a dead link
            # (half-open TCP, a frozen server) is dropped by the first timeout after that.
            if protocol is not None and protocol.oldest_owed() > self._stuck_after:
                protocol.close()
            raise

    async def close(self) -> None:
        for index, protocol in enumerate(self._slots):
            if protocol is not None:
                protocol.close()
            self._slots[index] = None
        # The sockets close on the loop's next turn; an embedded server counting its
        # clients right after this (to decide whether to shut down) must not see ours.
        await asyncio.sleep(0)
