"""The providers' HTTP/1.1 transport: asyncio sockets and httptools' C parser.

Every provider call goes through httpx2 (the openai SDK's HTTP client). Under load,
httpcore2's pool below httpx2's default transport was the largest single cost of a
gateway request (py-spy, bench/overhead): h11's pure-Python state machine, anyio locks,
events and cancel scopes per request, and a `select()` on every idle connection it
reused. This pool does the same job with one asyncio Protocol per connection and llhttp
(through httptools, which uvicorn already uses for the server side) parsing the replies.

`ProviderTransport` implements httpx2's public transport interface,
`AsyncBaseTransport.handle_async_request(httpx2.Request) -> httpx2.Response`, and raises
httpx2's own exceptions (`ConnectTimeout`, `ReadTimeout`, `RemoteProtocolError`, ...), so
httpx2's client and the openai SDK use it as any transport. Beside that interface,
`prepare` and `post_prepared` send one request head, checked and encoded once, with many
bodies and return the reply as bytes: the adapters' direct path (direct.py). It
is not httpx2's `AsyncHTTPTransport`, so pytest-httpx (which patches that class) does not
answer for it: tests that mock provider HTTP hand the adapter httpx2's stock transport.
httpx2 is pinned in pyproject.toml because this module reimplements the contract that
transport keeps (what a Request carries, the `timeout` extension, which exception means
what, how a reply streams), which a new httpx2 release may change without breaking any
caller of its client.

What it does, as httpcore2 does for HTTP/1.1:
- keep-alive, reusing the most recently used idle connection of the same origin, and
  dropping idle connections the server closed or that passed `keepalive_expiry`;
- `max_connections` connections in use at once (a request beyond that waits, within the
  request's pool timeout), at most `max_keepalive_connections` kept idle;
- the connect, write, read and pool timeouts of the request's `timeout` extension;
- TLS with the transport's verified context (and ALPN http/1.1);
- Content-Length, chunked and read-until-close replies, streamed as they arrive, with
  reading paused while a consumer lags by more than `_HIGH_WATER` bytes;
- a reply head (status line and headers) of at most 16 KiB, h11's default; request
  header names must be RFC 9110 tokens, and no line break or NUL may hide in the head;
- a connection whose exchange was cancelled, cut or not read to the end is closed, never
  reused; a request is never retried (a POST may already have been acted on).

Proxies are not this pool's business: `transport_for` gives a provider URL that the
environment proxies (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, less NO_PROXY) httpx2's own
`AsyncHTTPTransport` through that proxy, and any other URL this pool. Not supported
here: HTTP/2, Unix sockets and upgrades.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import urllib.request
from collections.abc import AsyncIterator

import httptools
import httpx2

_DEFAULT_PORTS = {b"http": 80, b"https": 443}
_HIGH_WATER = 256 * 1024  # buffered reply bytes at which reading pauses
_MAX_HEAD = 16 * 1024  # a reply's status line and headers, in bytes: h11's default limit
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # RFC 9110 `token`: a method, a header name
_TOKEN_RE = re.compile(_TOKEN)
# The whole request head in one pass: line ends only as CRLF, no NUL, names are tokens
# (and, counted apart, no more line ends than were written).
_VALID_HEAD = re.compile(_TOKEN + rb" [^\r\n\0 ]+ HTTP/1\.1\r\n(?:" + _TOKEN + rb": [^\r\n\0]*\r\n)*\r\n")
_BAD_VALUE_CHARS = (b"\r", b"\n", b"\0")


def _refusal(headers: list[tuple[bytes, bytes]]) -> str:
    """What makes a request head that failed `_VALID_HEAD` unsendable, naming the header."""
    for name, value in headers:
        shown = name.decode("ascii", "replace")
        if not _TOKEN_RE.fullmatch(name):
            return f"header name {shown!r} is not an RFC 9110 token"
        if any(c in value for c in _BAD_VALUE_CHARS):
            return f"header {shown!r} contains a line break or NUL"
    return "the request line has a method that is not a token, or a space, line break or NUL"


def _head_size(reason: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """A reply head's size as sent: `HTTP/1.1 200 reason`, `name: value` each, line ends."""
    return 15 + len(reason) + sum(len(name) + len(value) + 4 for name, value in headers) + 2


def _head_too_large() -> httpx2.RemoteProtocolError:
    return httpx2.RemoteProtocolError(f"the reply's status line and headers exceed {_MAX_HEAD} bytes")


def _expire(waiter: asyncio.Future[None], error: Exception) -> None:
    if not waiter.done():
        waiter.set_exception(error)


async def _wait(waiter: asyncio.Future[None], timeout: float | None, error: type[Exception], what: str) -> None:
    """Await `waiter`; after `timeout` seconds it fails with `error("{what} within …s")`.

    A timer on the future, not an asyncio.timeout(): no cancellation to undo, and the
    error says which phase ran out.
    """
    timer = None
    if timeout is not None:
        timer = asyncio.get_running_loop().call_later(timeout, _expire, waiter, error(f"{what} within {timeout:g}s"))
    try:
        await waiter
    finally:
        if timer is not None:
            timer.cancel()


class ReplyTooLarge(Exception):
    """A reply `post_prepared` read past the limit it was given (its connection is closed)."""


class _Exchange:
    """One request's reply, filled by the parser's callbacks as bytes arrive."""

    __slots__ = ("status", "reason", "headers", "chunks", "buffered", "received", "headers_done", "complete",
                 "keep_alive", "error", "waiter", "framed", "head_only", "parser", "_informational")

    def __init__(self, head_only: bool) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.received = 0  # bytes received before the head was complete
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.framed = False  # the reply says where it ends (Content-Length or chunked)
        self.head_only = head_only
        self.parser = httptools.HttpResponseParser(self)
        self._informational = False

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float | None, what: str) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await _wait(self.waiter, timeout, httpx2.ReadTimeout, f"no {what}")
        finally:
            self.waiter = None

    def fail(self, error: Exception) -> None:
        if self.error is None and not self.complete:
            self.error = error
        self._wake()

    # --- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second reply to one request: the framing can't be trusted
            self.keep_alive = False

    # Once the reply is complete, anything after it is ignored (and the connection dropped).

    def on_status(self, reason: bytes) -> None:
        if not self.complete:
            self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete:
            return
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (lowered == b"transfer-encoding" and b"chunked" in value.lower()):
            self.framed = True

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue and friends: the real reply follows
            self._informational = True
            self.headers = []
            self.reason = b""
            self.framed = False
            return
        # Only a head that came in more bytes than the limit can exceed it: counted then.
        if self.received > _MAX_HEAD and _head_size(self.reason, self.headers) > _MAX_HEAD:
            error = _head_too_large()
            self.fail(error)
            raise error  # stops the parser; the connection is closed
        self.status = status
        self.headers_done = True
        if self.head_only:  # no body follows a HEAD reply, whatever its headers say
            self.complete = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self.complete:
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to one origin, carrying one exchange at a time."""

    def __init__(self, origin: tuple[bytes, bytes, int]) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.exchange: _Exchange | None = None
        self.closed = False
        self.idle_since = 0.0
        self._paused_reading = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None or exchange.complete:
            # Bytes nobody asked for: the connection's framing can't be trusted any more.
            self.close()
            return
        if not exchange.headers_done:
            exchange.received += len(data)
        try:
            exchange.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            exchange.fail(httpx2.RemoteProtocolError(f"malformed HTTP reply: {exc}"))
            self.close()
            return
        if not exchange.headers_done and exchange.received > _MAX_HEAD:
            # Stop before buffering more: httptools keeps a header whole until it ends.
            exchange.fail(_head_too_large())
            self.close()
            return
        if exchange.buffered > _HIGH_WATER and not self._paused_reading and self.transport is not None:
            self._paused_reading = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._ended(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(httpx2.WriteError("the connection closed while sending"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _ended(self, exc: Exception | None) -> None:
        self.closed = True
        exchange = self.exchange
        if exchange is None or exchange.complete:
            return
        if not exchange.headers_done:
            detail = f": {exc}" if exc else ""
            exchange.fail(httpx2.RemoteProtocolError(f"server disconnected without sending a response{detail}"))
        elif not exchange.framed:  # a read-until-close body: the close is its end
            exchange.complete = True
            exchange._wake()
        else:
            exchange.fail(httpx2.RemoteProtocolError("server disconnected before the reply was complete"))

    def consumed(self) -> None:
        """The consumer took the buffered bytes: resume reading if it was paused."""
        if self._paused_reading and self.transport is not None and not self.closed:
            self._paused_reading = False
            self.transport.resume_reading()

    def usable(self, now: float, expiry: float | None) -> bool:
        return (not self.closed and self.transport is not None and not self.transport.is_closing()
                and (expiry is None or now - self.idle_since < expiry))

    async def send(self, data: bytes, timeout: float | None) -> None:
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise httpx2.WriteError("the connection is closed")
        transport.write(data)
        if self._write_paused:
            self._drain = asyncio.get_running_loop().create_future()
            try:
                await _wait(self._drain, timeout, httpx2.WriteTimeout, "not sent")
            finally:
                self._drain = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _ReplyBody(httpx2.AsyncByteStream):
    """The reply's body as it arrives; read to the end, or closed, it frees the connection."""

    def __init__(self, pool: ProviderTransport, connection: _Connection, exchange: _Exchange,
                 read_timeout: float | None) -> None:
        self._pool = pool
        self._connection = connection
        self._exchange = exchange
        self._read_timeout = read_timeout
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        exchange = self._exchange
        connection = self._connection
        try:
            while True:
                if exchange.chunks:
                    data = b"".join(exchange.chunks) if len(exchange.chunks) > 1 else exchange.chunks[0]
                    exchange.chunks.clear()
                    exchange.buffered = 0
                    connection.consumed()
                    yield data
                elif exchange.complete:
                    break
                elif exchange.error is not None:
                    raise exchange.error
                else:
                    await exchange.wait(self._read_timeout, "reply bytes")
        finally:
            # Read to the end, abandoned or failed: the connection goes back or is closed.
            self._finish()

    async def aclose(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._pool._release(self._connection, self._exchange)


def _origin(url: httpx2.URL) -> tuple[bytes, bytes, int]:
    default_port = _DEFAULT_PORTS.get(url.raw_scheme)
    if default_port is None:
        raise httpx2.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
    return url.raw_scheme, url.raw_host, url.port or default_port


class Prepared:
    """A request line and headers (`ProviderTransport.prepare`) to send with many bodies."""

    __slots__ = ("origin", "head")

    def __init__(self, origin: tuple[bytes, bytes, int], head: bytes) -> None:
        self.origin = origin
        self.head = head  # the request line and headers, less Content-Length and the blank line


class ProviderTransport(httpx2.AsyncBaseTransport):
    """HTTP/1.1 connections by origin, behind httpx2's public transport interface."""

    def __init__(self, *, verify: ssl.SSLContext | str | bool = True, trust_env: bool = True,
                 limits: httpx2.Limits | None = None) -> None:
        limits = limits or httpx2.Limits(max_connections=256, max_keepalive_connections=64)
        ssl_context = httpx2.create_ssl_context(verify=verify, trust_env=trust_env)
        ssl_context.set_alpn_protocols(["http/1.1"])  # as httpcore2 does for an HTTP/1.1-only pool
        self._ssl_context = ssl_context
        self._in_use = asyncio.Semaphore(limits.max_connections) if limits.max_connections else None
        self._max_idle = limits.max_keepalive_connections
        self._expiry = limits.keepalive_expiry
        self._idle: dict[tuple[bytes, bytes, int], list[_Connection]] = {}
        self._idle_count = 0
        self._busy: set[_Connection] = set()
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        self._idle_count = 0
        for connection in list(self._busy):
            connection.close()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        origin = _origin(request.url)
        headers = request.headers.raw
        head = self._head(request.method.encode("ascii"), request.url.raw_path, headers)
        body = [part async for part in request.stream]  # type: ignore[union-attr]
        if any(name.lower() == b"transfer-encoding" for name, _ in headers):
            body = [b"%x\r\n%b\r\n" % (len(part), part) for part in body if part] + [b"0\r\n\r\n"]
        connection, exchange, read_timeout = await self._exchange(
            origin, b"".join([head, *body]), request.method == "HEAD", request.extensions.get("timeout", {}))
        return httpx2.Response(
            exchange.status,
            headers=exchange.headers,
            stream=_ReplyBody(self, connection, exchange, read_timeout),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": exchange.reason},
        )

    def prepare(self, url: httpx2.URL, headers: httpx2.Headers) -> Prepared:
        """A POST to `url` with `headers` (and the Host httpx2 adds), checked and encoded
        once, to send with many bodies (`post_prepared`)."""
        fixed = [(name, value) for name, value in httpx2.Request("POST", url, headers=headers).headers.raw
                 if name.lower() not in (b"content-length", b"transfer-encoding")]
        return Prepared(_origin(url), self._head(b"POST", url.raw_path, fixed)[:-2])

    async def post_prepared(self, prepared: Prepared, body: bytes, timeouts: dict[str, float | None],
                            limit: int) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """`prepared` with `body`, as `handle_async_request` would send it, and the reply
        read to its end: its status, headers and (still encoded) body, of at most `limit`
        bytes (ReplyTooLarge past it). The same connections, limits, timeouts and errors,
        without httpx2's models around them."""
        if self._closed:
            raise RuntimeError("the transport is closed")
        payload = b"%bContent-Length: %d\r\n\r\n%b" % (prepared.head, len(body), body)
        connection, exchange, read_timeout = await self._exchange(prepared.origin, payload, False, timeouts)
        reply = _ReplyBody(self, connection, exchange, read_timeout)
        parts: list[bytes] = []
        size = 0
        try:
            async for part in reply:
                size += len(part)
                if size > limit:
                    raise ReplyTooLarge
                parts.append(part)
        finally:
            await reply.aclose()  # cut short: the connection is closed, not reused
        return exchange.status, exchange.headers, b"".join(parts)

    async def _exchange(self, origin: tuple[bytes, bytes, int], payload: bytes, head_only: bool,
                        timeouts: dict[str, float | None]) -> tuple[_Connection, _Exchange, float | None]:
        """Send `payload` on a connection to `origin` and wait for the reply's head."""
        semaphore = self._in_use
        if semaphore is not None:
            if semaphore.locked():
                pool_timeout = timeouts.get("pool")
                try:
                    async with asyncio.timeout(pool_timeout):
                        await semaphore.acquire()
                except TimeoutError:
                    raise httpx2.PoolTimeout(f"no free connection within {pool_timeout:g}s") from None
            else:
                await semaphore.acquire()
        connection: _Connection | None = None
        try:
            connection = self._take_idle(origin) or await self._connect(origin, timeouts.get("connect"))
            self._busy.add(connection)
            exchange = connection.exchange = _Exchange(head_only=head_only)
            await connection.send(payload, timeouts.get("write"))
            read_timeout = timeouts.get("read")
            while not exchange.headers_done:
                if exchange.error is not None:
                    raise exchange.error
                await exchange.wait(read_timeout, "reply")
        except BaseException:
            if connection is not None:
                connection.close()
                self._busy.discard(connection)
            if semaphore is not None:
                semaphore.release()
            raise
        return connection, exchange, read_timeout

    @staticmethod
    def _head(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        lines = [method, b" ", target, b" HTTP/1.1\r\n"]
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        # Anything else would let a header smuggle in another header, or another request.
        if _VALID_HEAD.fullmatch(head) is None or head.count(b"\n") != len(headers) + 2:
            raise httpx2.LocalProtocolError(f"refused to send: {_refusal(headers)}")
        return head

    def _take_idle(self, origin: tuple[bytes, bytes, int]) -> _Connection | None:
        connections = self._idle.get(origin)
        if not connections:
            return None
        now = asyncio.get_running_loop().time()
        while connections:
            connection = connections.pop()  # the most recently used: least likely timed out
            self._idle_count -= 1
            if connection.usable(now, self._expiry):
                return connection
            connection.close()
        return None

    async def _connect(self, origin: tuple[bytes, bytes, int], timeout: float | None) -> _Connection:
        scheme, host, port = origin
        hostname = host.decode("ascii")
        tls = scheme == b"https"
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(origin), hostname, port,
                    ssl=self._ssl_context if tls else None, server_hostname=hostname if tls else None)
        except TimeoutError:
            raise httpx2.ConnectTimeout(f"connecting to {hostname}:{port} took over {timeout:g}s") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx2.ConnectError(f"cannot connect to {hostname}:{port}: {exc}") from None
        return connection

    def _release(self, connection: _Connection, exchange: _Exchange) -> None:
        self._busy.discard(connection)
        connection.exchange = None
        exchange.parser = None  # it refers back to the exchange: no cycle left for the GC
        reusable = (exchange.complete and exchange.keep_alive and not exchange.head_only
                    and not self._closed and not connection.closed
                    and (self._max_idle is None or self._idle_count < self._max_idle))
        if reusable:
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.setdefault(connection.origin, []).append(connection)
            self._idle_count += 1
        else:
            connection.close()
        if self._in_use is not None:
            self._in_use.release()


def transport_for(url: httpx2.URL, *, limits: httpx2.Limits) -> httpx2.AsyncBaseTransport:
    """The transport for calls to `url`: through the proxy the environment names for it,
    on httpx2's own transport (which speaks to proxies), else on `ProviderTransport`.

    The variables are read by the standard library (`urllib.request.getproxies` and
    `proxy_bypass`), with httpx2's precedence: the URL's scheme's (HTTPS_PROXY or
    HTTP_PROXY), else ALL_PROXY, lowercase first; none for a host that NO_PROXY names
    (itself and its subdomains; no address ranges), nor for any with NO_PROXY=*.
    """
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(url.host):
        return httpx2.AsyncHTTPTransport(proxy=proxy if "://" in proxy else f"http://{proxy}", limits=limits)
    return ProviderTransport(limits=limits)
