"""Outbound HTTP to URLs that users supply: http tools, MCP servers, run callbacks.

Such a URL may point inside our own network (a cloud metadata service, Redis, Postgres,
an admin port on loopback), so every call to one passes a single guard, applied where
the socket is opened rather than to the URL's text:

- only `http` and `https`;
- the host is resolved once, by us, and every address it resolves to must be public
  (`address_refusal` names what is not). The connection then goes to exactly an address
  that was checked, so a DNS answer that changes between check and connect (DNS
  rebinding) cannot move it. TLS still sends SNI for, and verifies the certificate
  against, the URL's host name. An address written in the URL, however spelled
  (`[::ffff:127.0.0.1]`, `2130706433`, `0x7f.1`), is read as the system resolver would
  read it and checked the same way;
- a host listed in `allow_hosts` may resolve to private addresses: that is how a tool is
  explicitly pointed at a local or intranet server. The scheme rule still holds;
- proxies from the environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY) are never used: a
  proxy inside our network would fetch the URL for us, from where the guard can't see.

Two ways in. `Outbound.request` makes one call: it follows redirects itself, checking
each hop, caps the body and bounds the whole call by one timeout. `Outbound.httpx_transport`
gives the same connect-time guard to a library that takes an `httpx2.AsyncClient` (the
mcp SDK), which then follows redirects and reads bodies its own way.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from core import __version__

if TYPE_CHECKING:
    import ssl

    import httpx2

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""`(host, port) -> addresses`, each an IP address as text, in the order to try them."""


class OutboundError(Exception):
    """A call to a user-supplied URL did not complete. The message names the host and
    what failed, never the request's headers or body (they may hold credentials)."""


class OutboundRefused(OutboundError):
    """The URL, or an address it resolves to, is not allowed; the message says which and why."""


class OutboundUnavailable(OutboundError):
    """The host could not be resolved or reached, TLS failed, or the connection broke."""


class OutboundTimeout(OutboundError):
    """The call did not complete within its timeout."""


# --- which addresses are public -------------------------------------------------------

_N = ipaddress.ip_network
# Checked in order, the first match names the reason. The standard library knows most
# of these, but what it calls `is_private` or `is_global` varies between Python releases
# (3.11 calls site-local, local-use NAT64, 3fff::/20 and IPv4 multicast addresses
# global), so the ranges are written out and its verdict only has the last word.
_NOT_PUBLIC: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = (
    (_N("0.0.0.0/32"), "unspecified"),
    (_N("0.0.0.0/8"), "'this network' (0.0.0.0/8)"),
    (_N("10.0.0.0/8"), "private (RFC 1918)"),
    (_N("100.64.0.0/10"), "shared address space (CGNAT, RFC 6598)"),
    (_N("127.0.0.0/8"), "loopback"),
    (_N("169.254.0.0/16"), "link-local (where cloud metadata services answer)"),
    (_N("172.16.0.0/12"), "private (RFC 1918)"),
    (_N("192.0.0.0/24"), "IETF protocol assignments"),
    (_N("192.0.2.0/24"), "documentation"),
    (_N("192.168.0.0/16"), "private (RFC 1918)"),
    (_N("198.18.0.0/15"), "benchmarking"),
    (_N("198.51.100.0/24"), "documentation"),
    (_N("203.0.113.0/24"), "documentation"),
    (_N("224.0.0.0/4"), "multicast"),
    (_N("255.255.255.255/32"), "broadcast"),
    (_N("240.0.0.0/4"), "reserved"),
    (_N("::/128"), "unspecified"),
    (_N("::1/128"), "loopback"),
    (_N("64:ff9b:1::/48"), "local-use NAT64 (RFC 8215)"),
    (_N("100::/64"), "discard-only"),
    (_N("2001::/32"), "Teredo"),
    (_N("2001:2::/48"), "benchmarking"),
    (_N("2001:db8::/32"), "documentation"),
    (_N("2002::/16"), "6to4 (deprecated)"),
    (_N("3fff::/20"), "documentation"),
    (_N("5f00::/16"), "segment routing (SRv6) SIDs"),
    (_N("fc00::/7"), "unique-local"),
    (_N("fe80::/10"), "link-local"),
    (_N("fec0::/10"), "site-local"),
    (_N("ff00::/8"), "multicast"),
)
_NAT64 = _N("64:ff9b::/96")
_NAT64_LOCAL = _N("64:ff9b:1::/48")
_IPV4_COMPATIBLE = _N("::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, list[ipaddress.IPv4Address]] | None:
    """The IPv4 addresses an IPv6 address carries, and how, if it carries any."""
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", [address.ipv4_mapped]
    if address in _NAT64 or address in _NAT64_LOCAL:  # as a /96 prefix, as DNS64 synthesises
        return "NAT64", [ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)]
    if address.sixtofour is not None:
        return "6to4", [address.sixtofour]
    if address.teredo is not None:
        return "Teredo", list(address.teredo)  # (server, client), the client de-obfuscated
    if address in _IPV4_COMPATIBLE and int(address) > 1:  # `::` and `::1` are themselves
        return "IPv4-compatible", [ipaddress.IPv4Address(int(address))]
    return None


def _own_refusal(address: IPAddress) -> str | None:
    """Why `address`, taken as itself (not what it may carry), is not public."""
    for network, reason in _NOT_PUBLIC:
        if address.version == network.version and address in network:
            return reason
    if address.is_reserved:
        return "reserved"
    if address.is_private or not address.is_global:
        return "not globally routable"
    return None


def address_refusal(address: IPAddress) -> str | None:
    """Why `address` is not a public address we may connect to, or None if it is.

    An IPv6 address that carries IPv4 addresses is judged by them first, so that a
    private one is named. An IPv4-mapped (`::ffff:a.b.c.d`) or NAT64 (`64:ff9b::/96`)
    address reaches its IPv4 address and is judged as that alone. 6to4, Teredo,
    local-use NAT64 and IPv4-compatible addresses are refused even when what they carry
    is public: where their traffic ends up depends on relays and prefixes we know
    nothing about, and the ranges are deprecated, reserved or (local-use NAT64, RFC 8215)
    not global.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            kind, carried = embedded
            for ipv4 in carried:
                reason = _own_refusal(ipv4)
                if reason is not None:
                    return f"{reason}: {kind} {ipv4}"
            if kind == "IPv4-mapped" or (kind == "NAT64" and address in _NAT64):
                return None
    return _own_refusal(address)


def _literal_address(host: str) -> IPAddress | None:
    """The address `host` spells, if it is one, read as the system resolver reads it.

    Besides dotted quads and IPv6, getaddrinfo takes inet_aton's legacy IPv4 forms
    (`2130706433`, `0x7f.1`, `017700000001`, `127.1`) as addresses, and httpx leaves
    those in a URL as host names; read here, they never reach a resolver that might
    answer differently.
    """
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host[:1].isdigit() and set(host.lower()) <= set("0123456789abcdefx."):
        with contextlib.suppress(OSError):
            return ipaddress.IPv4Address(socket.inet_aton(host))
    return None


def literal_refusal(host: str) -> str | None:
    """Why a URL whose host is written as an address may not be called (checking a URL
    when it is given, before anything is stored); None for a public address or a name,
    which the guard checks when it resolves it."""
    address = _literal_address(host.strip("[]"))
    return address_refusal(address) if address is not None else None


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the system resolver (getaddrinfo) gives for `host`, in its order, once each."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _host_key(host: str) -> str:
    return host.lower().removesuffix(".")


class _Guard:
    """Resolves a host and checks its addresses; shared by every transport of an `Outbound`."""

    def __init__(self, allow_hosts: Collection[str], resolver: Resolver) -> None:
        exact: set[str] = set()
        suffixes: list[str] = []
        for entry in allow_hosts:
            name = _host_key(entry)
            if not name or not name.isascii() or "*" in name.removeprefix("*.") or "/" in name:
                raise ValueError(f"allow_hosts: {entry!r} is not a host name, `*.suffix` or address "
                                 "(write international names in their xn-- form)")
            if name.startswith("*."):
                suffixes.append(name[1:])  # ".example.com": subdomains, not the name itself
            else:
                exact.add(name)
        self._exact = frozenset(exact)
        self._suffixes = tuple(suffixes)
        self._resolver = resolver

    def allows(self, host: str) -> bool:
        name = _host_key(host)
        return name in self._exact or name.endswith(self._suffixes)

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for `host`, every one of them allowed.

        Raises OutboundRefused if any is not; a resolver's OSError goes through.
        """
        literal = _literal_address(host)
        if literal is not None:
            found = [literal]
        else:
            answers = await self._resolver(host, port)
            try:
                found = [ipaddress.ip_address(answer) for answer in answers]
            except ValueError:
                raise OutboundRefused(f"{host}: the resolver answered something that is not an address") from None
        if not self.allows(host):
            for address in found:
                reason = address_refusal(address)
                if reason is not None:
                    what = f"{host} is" if literal is not None else f"{host} resolves to {address}, which is"
                    raise OutboundRefused(f"{what} not a public address ({reason}); "
                                          "only public addresses may be called")
        # An IPv4-mapped address is connected to as the IPv4 address it is (no IPv6 needed).
        return [str(getattr(address, "ipv4_mapped", None) or address) for address in found]


class _PinnedBackend:
    """An httpcore network backend (for httpcore or httpcore2, whichever `core` module is
    given) whose `connect_tcp(host, ...)` resolves and checks `host` through the guard,
    then connects to a checked address, never the name. httpcore starts TLS on the stream
    returned with `server_hostname` = the URL's host, so certificates are still verified
    for the name. Connection errors are the library's own, as from its default backend.
    """

    def __init__(self, guard: _Guard, core: ModuleType) -> None:
        self._guard = guard
        self._core = core
        self._inner = core.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Iterable[Any] | None = None) -> Any:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                addresses = await self._guard.addresses(host, port)
        except TimeoutError:
            raise self._core.ConnectTimeout(f"resolving {host} took over {timeout:g}s") from None
        except OSError as exc:
            raise self._core.ConnectError(f"cannot resolve {host}: {exc}") from None
        if not addresses:
            raise self._core.ConnectError(f"{host} resolves to no address")
        error: Exception | None = None
        for address in addresses:  # in the resolver's order; each was checked above
            remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
            try:
                return await self._inner.connect_tcp(address, port, timeout=remaining, local_address=local_address,
                                                     socket_options=socket_options)
            except self._core.ConnectError as exc:
                error = exc
        assert error is not None
        raise error

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# httpx's default limits; the short keep-alive also bounds how long a pooled connection
# outlives the DNS answer it was pinned to.
_MAX_CONNECTIONS = 100
_MAX_KEEPALIVE = 20
_KEEPALIVE_EXPIRY = 5.0


def _guarded_transport(httpx_module: ModuleType, core: ModuleType, guard: _Guard, ssl_context: ssl.SSLContext) -> Any:
    """An `AsyncHTTPTransport` of `httpx_module` (httpx or httpx2) that connects through the guard.

    Neither httpx nor httpx2 lets its transport take a network backend (encode/httpx#3749
    would), so the transport's connection pool is replaced by one that has ours. The
    attribute is private, the same in httpx 0.28 and httpx2 2.16; tests run both. With
    no `proxy` argument the transport connects directly (proxy variables are read by a
    client, never by a transport).
    """
    transport = httpx_module.AsyncHTTPTransport(verify=ssl_context)
    transport._pool = core.AsyncConnectionPool(
        ssl_context=ssl_context, max_connections=_MAX_CONNECTIONS, max_keepalive_connections=_MAX_KEEPALIVE,
        keepalive_expiry=_KEEPALIVE_EXPIRY, network_backend=_PinnedBackend(guard, core))
    return transport


# --- one call, with redirects ----------------------------------------------------------

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Headers that go on to another origin after a redirect. Everything else a caller set may
# be a credential (Authorization, Cookie, X-Api-Key and whatever a tool invents), and the
# new origin is whoever the old one said.
_KEPT_ACROSS_ORIGINS = frozenset({"accept", "accept-encoding", "accept-language", "user-agent", "cache-control"})
_BODY_HEADERS = frozenset({"content-type", "content-length", "content-encoding", "transfer-encoding"})
# The body is handed back as sent; asking for it unencoded keeps the size cap about the
# real content (a compressed body would be decompressed past any cap).
_DEFAULT_HEADERS = (("user-agent", f"orchesity/{__version__}"), ("accept-encoding", "identity"))


@dataclass(frozen=True, slots=True)
class OutboundResponse:
    """The reply to `Outbound.request`, after any redirects."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes  # as sent (no content decoding), at most `max_bytes`
    truncated: bool  # the body was longer than `max_bytes` and was cut there
    url: str  # the final URL, after redirects
    elapsed_s: float

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case), or None."""
        name = name.lower()
        return next((value for key, value in self.headers if key.lower() == name), None)


def _checked_url(httpx2: ModuleType, text: str, base: httpx2.URL | None) -> httpx2.URL:
    """`text` as a URL (relative to `base`, a redirect's origin, if given), or OutboundRefused."""
    where = "" if base is None else f"redirect from {base.host}: "
    try:
        url = httpx2.URL(text) if base is None else base.join(text)
    except httpx2.InvalidURL:
        raise OutboundRefused(f"{where}not a valid URL") from None  # the URL may hold a secret
    if url.scheme not in ("http", "https"):
        raise OutboundRefused(f"{where}scheme {url.scheme!r} is not allowed, only http and https")
    if not url.host:
        raise OutboundRefused(f"{where}the URL has no host")
    if url.userinfo:
        raise OutboundRefused(f"{where}{url.host}: credentials in a URL are not sent; use an Authorization header")
    return url


def _origin(url: httpx2.URL) -> tuple[str, str, int]:
    return url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80)


def _redirect_method(status: int, method: str) -> str:
    """The method of the request a redirect asks for, as httpx and browsers do it."""
    if status == 303 and method != "HEAD":
        return "GET"
    if status in (301, 302) and method == "POST":
        return "GET"
    return method


@contextlib.contextmanager
def _translated_errors(httpx2: ModuleType, url: httpx2.URL, timeout: float) -> Iterator[None]:
    """httpx2's exceptions, and the overall timeout, as OutboundErrors naming `url`'s host."""
    where = f"{url.host}:{_origin(url)[2]}"
    try:
        yield
    except TimeoutError:
        raise OutboundTimeout(f"{where}: no complete reply within {timeout:g}s") from None
    except httpx2.TimeoutException as exc:
        raise OutboundTimeout(f"{where}: {exc}") from None
    except httpx2.LocalProtocolError:
        # h11 quotes the offending header value, which may be a secret.
        raise OutboundError(f"{where}: the request cannot be sent (a header name or value is not allowed)") from None
    except httpx2.TransportError as exc:  # connect, TLS, read and protocol errors
        raise OutboundUnavailable(f"{where}: {type(exc).__name__}: {exc}") from None


async def _read_capped(response: httpx2.Response, max_bytes: int) -> tuple[bytes, bool]:
    """Up to `max_bytes` of the body, and whether there was more (not read beyond one chunk)."""
    chunks: list[bytes] = []
    size = 0
    async with contextlib.aclosing(response.aiter_raw()) as stream:
        async for chunk in stream:
            if size + len(chunk) > max_bytes:
                chunks.append(chunk[: max_bytes - size])
                return b"".join(chunks), True
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks), False


class Outbound:
    """Calls to URLs that users supply, through the guard this module describes.

    `allow_hosts`: host names (any case, exact, or `*.example.com` for its subdomains)
    whose addresses may be private. `resolver` replaces getaddrinfo (tests inject answers
    with it). `verify` is the TLS context servers are verified with; by default httpx2's
    (the system's CAs, or SSL_CERT_FILE / SSL_CERT_DIR; host names checked). One
    `Outbound` keeps a connection pool: share it, and `aclose()` it at shutdown.
    """

    def __init__(self, *, allow_hosts: Collection[str] = (), max_redirects: int = 3,
                 resolver: Resolver | None = None, verify: ssl.SSLContext | None = None) -> None:
        if isinstance(allow_hosts, str):
            raise TypeError("allow_hosts is a collection of host names, not one string")
        self._guard = _Guard(allow_hosts, resolver or system_resolver)
        self._max_redirects = max_redirects
        self._verify = verify
        self._transport: httpx2.AsyncBaseTransport | None = None  # made on first use: httpx2 imports then

    def _ssl_context(self) -> ssl.SSLContext:
        if self._verify is None:
            import httpx2

            self._verify = httpx2.create_ssl_context()
        return self._verify

    async def request(self, method: str, url: str, *,
                      headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
                      content: bytes | None = None, timeout: float = 10.0,
                      max_bytes: int = 1_000_000) -> OutboundResponse:
        """Send one request to `url` and read the reply, following up to `max_redirects` redirects.

        Every hop is checked before its connection opens (scheme here, addresses at
        connect). 307/308 repeat the method and body; 303, and 301/302 after a POST,
        continue as a body-less GET. When a redirect changes origin (scheme, host or
        port), only Accept, Accept-Encoding, Accept-Language, Cache-Control and User-Agent
        go on: Authorization, cookies, API keys and any other header stay with the origin
        they were meant for. Asks for `Accept-Encoding: identity` unless told otherwise.
        The body is read up to `max_bytes`; the rest is not read. `timeout` bounds the
        whole call: resolution, connects, every hop and the body.

        Raises OutboundRefused (URL, address or too many redirects), OutboundTimeout,
        OutboundUnavailable (resolution, connection, TLS or protocol failure), or
        OutboundError itself for a request that cannot be sent (an invalid header).
        """
        import httpx2

        if self._transport is None:
            import httpcore2

            self._transport = _guarded_transport(httpx2, httpcore2, self._guard, self._ssl_context())
        started = time.monotonic()
        deadline = asyncio.get_running_loop().time() + timeout
        target = _checked_url(httpx2, url, None)
        items = list(headers.items() if isinstance(headers, Mapping) else headers or ())
        given = {name.lower() for name, _ in items}
        items += [(name, value) for name, value in _DEFAULT_HEADERS if name not in given]
        method = method.upper()
        redirects = 0
        while True:
            remaining = max(deadline - asyncio.get_running_loop().time(), 0.0)
            phases = dict.fromkeys(("connect", "read", "write", "pool"), remaining)
            request = httpx2.Request(method, target, headers=items, content=content, extensions={"timeout": phases})
            body, truncated, location = b"", False, None
            with _translated_errors(httpx2, target, timeout):
                async with asyncio.timeout_at(deadline):
                    response = await self._transport.handle_async_request(request)
                    try:
                        if response.status_code in _REDIRECTS:
                            location = response.headers.get("location")
                        if location is None:
                            body, truncated = await _read_capped(response, max_bytes)
                    finally:
                        await response.aclose()
            if location is None:
                return OutboundResponse(status=response.status_code, headers=response.headers.multi_items(),
                                        body=body, truncated=truncated, url=str(target),
                                        elapsed_s=time.monotonic() - started)
            if redirects == self._max_redirects:
                raise OutboundRefused(f"{target.host}: more than {self._max_redirects} redirects")
            redirects += 1
            following = _checked_url(httpx2, location, target)
            redirected = _redirect_method(response.status_code, method)
            if redirected != method:
                content = None
                items = [(name, value) for name, value in items if name.lower() not in _BODY_HEADERS]
            if _origin(following) != _origin(target):
                items = [(name, value) for name, value in items if name.lower() in _KEPT_ACROSS_ORIGINS]
            method, target = redirected, following

    def httpx_transport(self) -> httpx2.AsyncBaseTransport:
        """A transport for `httpx2.AsyncClient(transport=...)` whose connections pass the guard.

        For libraries that take a client of httpx2 (the project's HTTP client), such as
        the mcp SDK (`streamable_http_client(url, http_client=...)`). Each call makes a
        new transport (and pool), owned and closed by the client it goes to.

        Create the client with `trust_env=False`: otherwise it routes URLs the
        environment proxies through its own transports, past this one. The client, not
        this transport, then follows redirects (each new origin's connection is still
        checked) and decides what to read; a URL with a scheme other than http(s) is
        refused by the client itself (UnsupportedProtocol).
        """
        import httpcore2
        import httpx2

        return _guarded_transport(httpx2, httpcore2, self._guard, self._ssl_context())

    async def aclose(self) -> None:
        """Close the pooled connections of `request` (not those of transports handed out)."""
        if self._transport is not None:
            transport, self._transport = self._transport, None
            await transport.aclose()


__all__ = ["Outbound", "OutboundError", "OutboundRefused", "OutboundResponse", "OutboundTimeout",
           "OutboundUnavailable", "Resolver", "address_refusal", "system_resolver"]
