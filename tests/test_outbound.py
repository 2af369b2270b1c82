"""core/outbound.py against real HTTP servers on 127.0.0.1.

What the guard refuses (and that the server then saw no connection at all), what
`allow_hosts` lets through, redirects, DNS rebinding, the body cap, the overall timeout,
TLS names on a pinned connection, the environment's proxies, and `httpx_transport()`
for an httpx2 client (in this process, where tests/httpx2_alias.py makes `httpx` httpx2,
and in a subprocess without that alias, as the mcp SDK runs in production). The servers are asyncio servers in the test's own loop;
names are answered by an injected resolver or, for localhost, by the system's.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import re
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx  # httpx2 in this process
import pytest

from core.outbound import (
    Outbound,
    OutboundError,
    OutboundRefused,
    OutboundTimeout,
    OutboundUnavailable,
    address_refusal,
    system_resolver,
)

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = "93.184.215.14"  # a public address; nothing answers it from this machine but maybe a gateway
LOCAL_BODY = b"hello from the local server"


# --- a real local server ------------------------------------------------------------------

@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


Handler = Callable[[Seen, asyncio.StreamWriter], Awaitable[None]]


async def reply(writer: asyncio.StreamWriter, status: int = 200, body: bytes = b"",
                headers: tuple[tuple[str, str], ...] = ()) -> None:
    head = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}", *(f"{k}: {v}" for k, v in headers)]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await writer.drain()


async def hello(seen: Seen, writer: asyncio.StreamWriter) -> None:
    await reply(writer, body=LOCAL_BODY)


async def echo(seen: Seen, writer: asyncio.StreamWriter) -> None:
    """Answers with what it received; `/to?url=U&status=S` redirects to U instead."""
    parts = urlsplit(seen.target)
    if parts.path == "/to":
        query = parse_qs(parts.query)
        await reply(writer, int(query.get("status", ["302"])[0]), headers=(("location", query["url"][0]),))
        return
    if parts.path.startswith("/hops/"):  # /hops/N on hN.hops.test redirects to h(N-1) until 0
        n = int(parts.path.removeprefix("/hops/"))
        if n > 0:
            port = seen.headers["host"].rsplit(":", 1)[1]
            await reply(writer, 302, headers=(("location", f"http://h{n - 1}.hops.test:{port}/hops/{n - 1}"),))
            return
    await reply(writer, body=json.dumps({"method": seen.method, "target": seen.target,
                                         "headers": seen.headers, "body": seen.body.decode()}).encode())


class LocalServer:
    """HTTP/1.1 (keep-alive) on 127.0.0.1, optionally TLS; counts connections, records requests."""

    def __init__(self, handler: Handler = hello, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.connections = 0
        self.requests: list[Seen] = []
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> LocalServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    def url(self, host: str = "127.0.0.1", path: str = "/", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, target, _ = head[0].split(" ", 2)
                headers = {}
                for line in head[1:]:
                    if line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                seen = Seen(method, target, headers, body)
                self.requests.append(seen)
                await self.handler(seen, writer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[LocalServer]:
    async with LocalServer(echo) as running:
        yield running


class Answers:
    """An injected resolver: fixed answers per name (a list of answers is given in turn,
    the last one repeating), `default` for any other name, else the system resolver.
    Records every name it is asked for."""

    def __init__(self, answers: dict[str, list[str] | list[list[str]]] | None = None,
                 default: list[str] | None = None) -> None:
        self.answers = answers or {}
        self.default = default
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        given = self.answers.get(host)
        if given is None:
            return list(self.default) if self.default is not None else await system_resolver(host, port)
        if given and isinstance(given[0], list):
            asked = self.calls.count(host)
            return list(given[min(asked, len(given)) - 1])
        return list(given)  # type: ignore[arg-type]


# --- which addresses are public: one function, one table ----------------------------------

ADDRESSES = [
    # public
    ("93.184.215.14", None), ("1.1.1.1", None), ("2606:4700:4700::1111", None), ("2001:4860:4860::8888", None),
    ("::ffff:93.184.215.14", None),  # IPv4-mapped: the IPv4 address itself
    ("64:ff9b::5db8:d70e", None),  # NAT64 (well-known prefix) of 93.184.215.14
    # IPv4
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"), ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this network"), ("10.0.0.5", "RFC 1918"), ("172.16.0.1", "RFC 1918"),
    ("172.31.255.255", "RFC 1918"), ("192.168.1.1", "RFC 1918"), ("169.254.169.254", "link-local"),
    ("169.254.0.1", "link-local"), ("100.64.0.1", "CGNAT"), ("100.127.255.255", "CGNAT"),
    ("192.0.0.8", "IETF protocol"), ("192.0.2.1", "documentation"), ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"), ("198.18.0.1", "benchmarking"), ("198.19.255.1", "benchmarking"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    # IPv6
    ("::1", "loopback"), ("::", "unspecified"), ("fe80::1", "link-local"), ("fe80::1%eth0", "link-local"),
    ("fc00::1", "unique-local"), ("fd12:3456::1", "unique-local"), ("fec0::1", "site-local"),
    ("ff02::1", "multicast"), ("ff0e::1", "multicast"), ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"), ("100::1", "discard-only"), ("2001:2::1", "benchmarking"),
    ("5f00::1", "segment routing"), ("4000::1", "reserved"),
    # IPv4 inside IPv6: the carried address is judged first, and named
    ("::ffff:127.0.0.1", "loopback: IPv4-mapped 127.0.0.1"),
    ("::ffff:10.0.0.5", "RFC 1918): IPv4-mapped 10.0.0.5"),
    ("::ffff:169.254.169.254", "link-local (where cloud metadata services answer): IPv4-mapped"),
    ("::127.0.0.1", "loopback: IPv4-compatible 127.0.0.1"),
    ("::93.184.215.14", "reserved"),  # IPv4-compatible: deprecated, refused whatever it carries
    ("64:ff9b::7f00:1", "loopback: NAT64 127.0.0.1"), ("64:ff9b::a00:5", "RFC 1918): NAT64 10.0.0.5"),
    ("64:ff9b::a9fe:a9fe", "link-local (where cloud metadata services answer): NAT64 169.254.169.254"),
    ("64:ff9b:1::7f00:1", "loopback: NAT64 127.0.0.1"), ("64:ff9b:1::5db8:d70e", "local-use NAT64"),
    ("2002:7f00:1::1", "loopback: 6to4 127.0.0.1"), ("2002:a9fe:a9fe::1", "link-local (where cloud"),
    ("2002:5db8:d70e::1", "6to4"),
    # Teredo: server 65.54.227.120, client (stored inverted) 192.0.2.45 / 10.0.0.5 / 93.184.215.14
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "documentation: Teredo 192.0.2.45"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffa", "RFC 1918): Teredo 10.0.0.5"),
    ("2001:0:4136:e378::a247:28f1", "Teredo"),
]


@pytest.mark.parametrize(("text", "expected"), ADDRESSES, ids=[text for text, _ in ADDRESSES])
def test_address_classification(text: str, expected: str | None) -> None:
    reason = address_refusal(ipaddress.ip_address(text))
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason, reason


# --- refusals: nothing reaches the server ---------------------------------------------------

REFUSED = [
    ("http://127.0.0.1:{port}/", "127.0.0.1 is not a public address (loopback)"),
    ("http://[::ffff:127.0.0.1]:{port}/", "loopback: IPv4-mapped 127.0.0.1"),
    ("http://[::ffff:7f00:1]:{port}/", "loopback: IPv4-mapped 127.0.0.1"),
    ("http://[::1]:{port}/", "loopback"),
    ("http://0:{port}/", "unspecified"),  # 0.0.0.0 reaches this machine on Linux
    ("http://[::]:{port}/", "unspecified"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[64:ff9b::7f00:1]:{port}/", "loopback: NAT64 127.0.0.1"),
    ("http://localhost:{port}/", "which is not a public address (loopback)"),  # 127.0.0.1 or ::1
    ("http://internal.test:{port}/", "internal.test resolves to 10.0.0.5, which is not a public address (private"),
    ("http://mixed.test:{port}/", "mixed.test resolves to 127.0.0.1"),  # every address must be public
    ("ftp://127.0.0.1:{port}/", "scheme 'ftp' is not allowed"),
    ("file:///etc/passwd", "scheme 'file' is not allowed"),
    ("gopher://localhost:{port}/", "scheme 'gopher' is not allowed"),
    ("http://user:secret@localhost:{port}/", "credentials in a URL are not sent"),
]


@pytest.mark.parametrize(("template", "expected"), REFUSED, ids=[t for t, _ in REFUSED])
async def test_refused(server: LocalServer, template: str, expected: str) -> None:
    answers = Answers({"internal.test": ["10.0.0.5"], "mixed.test": [PUBLIC, "127.0.0.1"]})
    outbound = Outbound(resolver=answers)
    try:
        with pytest.raises(OutboundRefused) as refused:
            await outbound.request("GET", template.format(port=server.port), timeout=2.0)
    finally:
        await outbound.aclose()
    assert expected in str(refused.value)
    assert "secret" not in str(refused.value)
    assert server.connections == 0


# inet_aton's forms, which httpx leaves as host names and getaddrinfo reads as addresses.
NUMERIC = ["2130706433", "0x7f.1", "0x7f000001", "017700000001", "127.1", "127.0.1"]


@pytest.mark.parametrize("host", NUMERIC)
async def test_numeric_hosts_are_read_as_addresses(server: LocalServer, host: str) -> None:
    # A resolver that answers "public" for anything: asking it would let the call out.
    answers = Answers(default=[PUBLIC])
    outbound = Outbound(resolver=answers)
    with pytest.raises(OutboundRefused, match=re.escape(f"{host} is not a public address (loopback)")):
        await outbound.request("GET", server.url(host), timeout=2.0)
    assert answers.calls == []
    assert server.connections == 0


async def test_allow_hosts_lets_a_named_local_server_through(server: LocalServer) -> None:
    answers = Answers({"api.intranet.test": ["127.0.0.1"], "intranet.test": ["127.0.0.1"]})
    outbound = Outbound(allow_hosts=["LocalHost", "*.intranet.test"], resolver=answers)
    try:
        response = await outbound.request("GET", server.url("localhost", "/hello?x=1"))
        assert response.status == 200
        assert json.loads(response.body)["target"] == "/hello?x=1"
        assert response.url == server.url("localhost", "/hello?x=1")
        assert response.truncated is False
        assert response.header("Content-Length") == str(len(response.body))

        assert (await outbound.request("GET", server.url("LOCALHOST"))).status == 200  # any case
        assert (await outbound.request("GET", server.url("api.intranet.test"))).status == 200
        with pytest.raises(OutboundRefused, match=re.escape("intranet.test resolves to 127.0.0.1")):
            await outbound.request("GET", server.url("intranet.test"))  # `*.x` is x's subdomains only
        with pytest.raises(OutboundRefused, match="loopback"):
            await outbound.request("GET", server.url("127.0.0.1"))  # the name is allowed, not the address
        with pytest.raises(OutboundRefused, match="scheme 'ftp'"):
            await outbound.request("GET", server.url("localhost", scheme="ftp"))  # still http(s) only
    finally:
        await outbound.aclose()
    assert len(server.requests) == 3


def test_allow_hosts_rejects_what_is_not_a_host_name() -> None:
    for entry in ("", "http://x.test/", "a*.test", "*.*.test", "bücher.test"):
        with pytest.raises(ValueError):
            Outbound(allow_hosts=[entry])
    with pytest.raises(TypeError):
        Outbound(allow_hosts="localhost")


# --- redirects ----------------------------------------------------------------------------

async def test_a_redirect_to_a_private_address_is_refused_before_connecting(server: LocalServer) -> None:
    async with LocalServer() as target:
        outbound = Outbound(allow_hosts=["localhost"],
                            resolver=Answers({"other.test": ["127.0.0.1"]}))
        try:
            for location in (target.url("127.0.0.1"), target.url("other.test"), target.url("[::ffff:127.0.0.1]")):
                start = server.url("localhost", "/to?" + f"url={location}")
                with pytest.raises(OutboundRefused, match="not a public address"):
                    await outbound.request("GET", start)
            with pytest.raises(OutboundRefused, match="redirect from localhost: scheme 'file' is not allowed"):
                await outbound.request("GET", server.url("localhost", "/to?url=file:///etc/passwd"))
        finally:
            await outbound.aclose()
        assert target.connections == 0
        assert len(server.requests) == 4


async def test_redirects_are_followed_up_to_three_hops_each_resolved_once(server: LocalServer) -> None:
    names = [f"h{n}.hops.test" for n in range(5)]
    answers = Answers({name: ["127.0.0.1"] for name in names})
    outbound = Outbound(allow_hosts=["*.hops.test"], resolver=answers)
    try:
        response = await outbound.request("GET", server.url("h3.hops.test", "/hops/3"))
        assert response.status == 200
        assert response.url == server.url("h0.hops.test", "/hops/0")
        assert answers.calls == ["h3.hops.test", "h2.hops.test", "h1.hops.test", "h0.hops.test"]

        answers.calls.clear()
        server.requests.clear()
        with pytest.raises(OutboundRefused, match=re.escape("h1.hops.test: more than 3 redirects")):
            await outbound.request("GET", server.url("h4.hops.test", "/hops/4"))
        assert [seen.target for seen in server.requests] == ["/hops/4", "/hops/3", "/hops/2", "/hops/1"]
        assert "h0.hops.test" not in answers.calls
    finally:
        await outbound.aclose()


@pytest.mark.parametrize(("status", "method", "body"), [
    (301, "GET", ""), (302, "GET", ""), (303, "GET", ""),  # after a POST: a GET without the body
    (307, "POST", "payload"), (308, "POST", "payload"),  # the same request again
])
async def test_redirect_methods(server: LocalServer, status: int, method: str, body: str) -> None:
    outbound = Outbound(allow_hosts=["localhost"])
    try:
        response = await outbound.request(
            "POST", server.url("localhost", f"/to?status={status}&url=/echo"), content=b"payload",
            headers={"Content-Type": "text/plain"})
    finally:
        await outbound.aclose()
    final = json.loads(response.body)
    assert (final["target"], final["method"], final["body"]) == ("/echo", method, body)
    assert ("content-type" in final["headers"]) == (method == "POST")


async def test_other_methods_keep_the_method_on_302_and_303_makes_them_get(server: LocalServer) -> None:
    outbound = Outbound(allow_hosts=["localhost"])
    try:
        kept = await outbound.request("PUT", server.url("localhost", "/to?status=302&url=/echo"), content=b"x")
        got = await outbound.request("DELETE", server.url("localhost", "/to?status=303&url=/echo"))
    finally:
        await outbound.aclose()
    assert (json.loads(kept.body)["method"], json.loads(kept.body)["body"]) == ("PUT", "x")
    assert json.loads(got.body)["method"] == "GET"


async def test_credentials_stay_with_their_origin(server: LocalServer) -> None:
    outbound = Outbound(allow_hosts=["a.test", "b.test"],
                        resolver=Answers({"a.test": ["127.0.0.1"], "b.test": ["127.0.0.1"]}))
    secrets = {"Authorization": "Bearer s3cret", "Cookie": "session=s3cret", "X-Api-Key": "s3cret",
               "Accept": "application/json"}
    try:
        same = await outbound.request("GET", server.url("a.test", "/to?url=/echo"), headers=secrets)
        other = await outbound.request("GET", server.url("a.test", f"/to?url={server.url('b.test', '/echo')}"),
                                       headers=secrets)
        absolute = await outbound.request("GET", server.url("a.test", f"/to?url={server.url('a.test', '/echo')}"),
                                          headers=secrets)
    finally:
        await outbound.aclose()
    kept = json.loads(same.body)["headers"]
    assert (kept["authorization"], kept["cookie"], kept["x-api-key"]) == ("Bearer s3cret", "session=s3cret", "s3cret")
    assert json.loads(absolute.body)["headers"]["authorization"] == "Bearer s3cret"  # same origin, spelled in full
    crossed = json.loads(other.body)["headers"]
    assert crossed["host"] == f"b.test:{server.port}"
    assert {"authorization", "cookie", "x-api-key"}.isdisjoint(crossed)
    assert crossed["accept"] == "application/json"
    assert crossed["accept-encoding"] == "identity" and crossed["user-agent"].startswith("orchesity/")


# --- DNS rebinding --------------------------------------------------------------------------

async def test_dns_rebinding_connects_to_the_address_that_was_checked(server: LocalServer) -> None:
    # Our resolver answers "public" for localhost first and loopback after; the system
    # resolver answers loopback. A guard that checked one answer and then let the
    # connection resolve the name again, either way, would reach the local server.
    answers = Answers({"localhost": [[PUBLIC], ["127.0.0.1"]]})
    outbound = Outbound(resolver=answers)
    try:
        response = await outbound.request("GET", server.url("localhost"), timeout=1.0)
    except (OutboundUnavailable, OutboundTimeout):
        pass  # the public address is unreachable from here (no internet) ...
    else:
        assert response.body != LOCAL_BODY  # ... or something out there answered: not our server
    finally:
        await outbound.aclose()
    assert answers.calls == ["localhost"]
    assert server.connections == 0


# --- the body cap, the timeout, errors -------------------------------------------------------

async def test_the_body_is_cut_at_max_bytes() -> None:
    async def large(seen: Seen, writer: asyncio.StreamWriter) -> None:
        await reply(writer, body=b"x" * int(seen.target.removeprefix("/")))

    async with LocalServer(large) as server:
        outbound = Outbound(allow_hosts=["localhost"])
        try:
            cut = await outbound.request("GET", server.url("localhost", "/10000"), max_bytes=1000)
            whole = await outbound.request("GET", server.url("localhost", "/1000"), max_bytes=1000)
        finally:
            await outbound.aclose()
    assert (len(cut.body), cut.truncated) == (1000, True)
    assert (len(whole.body), whole.truncated) == (1000, False)


async def test_an_endless_body_is_not_read_past_the_cap() -> None:
    async def endless(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"y" * 65536
        while True:
            writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            await writer.drain()

    async with LocalServer(endless) as server:
        outbound = Outbound(allow_hosts=["localhost"])
        try:
            response = await outbound.request("GET", server.url("localhost"), max_bytes=200_000, timeout=5.0)
        finally:
            await outbound.aclose()
    assert (len(response.body), response.truncated) == (200_000, True)
    assert response.elapsed_s < 2.0


async def test_the_timeout_bounds_the_whole_call() -> None:
    async def trickle(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:  # a byte every 50 ms: no single read ever waits long
            writer.write(b"1\r\nz\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)

    async with LocalServer(trickle) as server:
        outbound = Outbound(allow_hosts=["localhost"])
        started = time.monotonic()
        try:
            with pytest.raises(OutboundTimeout, match=rf"localhost:{server.port}: no complete reply within 0.3s"):
                # The outer bound only turns a missing timeout into a failure, not a hang.
                await asyncio.wait_for(outbound.request("GET", server.url("localhost"), timeout=0.3), 3.0)
        finally:
            await outbound.aclose()
    assert 0.3 <= time.monotonic() - started < 1.5


async def test_errors_name_the_host_and_never_the_headers(server: LocalServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # nothing listens once the probe closes
    outbound = Outbound(allow_hosts=["localhost"])
    try:
        with pytest.raises(OutboundUnavailable, match=rf"^localhost:{closed_port}: ConnectError") as unavailable:
            await outbound.request("GET", f"http://localhost:{closed_port}/", headers={"Authorization": "s3cret"})
        with pytest.raises(OutboundError) as invalid:
            await outbound.request("GET", server.url("localhost"), headers={"Authorization": "Bearer s3cret\r\nX: y"})
    finally:
        await outbound.aclose()

    async def unknown(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def nothing(host: str, port: int) -> list[str]:
        return []

    for resolver, expected in ((unknown, "cannot resolve nowhere.test: "),
                               (nothing, "nowhere.test resolves to no address")):
        with pytest.raises(OutboundUnavailable, match=re.escape(f"nowhere.test:80: ConnectError: {expected}")):
            await Outbound(resolver=resolver).request("GET", "http://nowhere.test/")
    assert "s3cret" not in str(unavailable.value) and "s3cret" not in str(invalid.value)
    assert str(invalid.value).startswith(f"localhost:{server.port}: ")
    assert server.requests == []


async def test_proxies_from_the_environment_are_not_used(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    async with LocalServer() as proxy:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(name, proxy.url())
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        outbound = Outbound(allow_hosts=["localhost"])
        try:
            response = await outbound.request("GET", server.url("localhost", "/direct"))
        finally:
            await outbound.aclose()
        assert json.loads(response.body)["target"] == "/direct"
        assert proxy.connections == 0


# --- TLS on a pinned connection --------------------------------------------------------------

def _certificates(directory: Path) -> tuple[Path, Path, str]:
    """A CA, and a certificate it signed for good.test: (cert file, key file, CA as PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orchesity test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "good.test")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("good.test")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file = directory / "good.pem", directory / "good.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file, ca.public_bytes(serialization.Encoding.PEM).decode()


async def test_tls_verifies_the_host_name_on_a_pinned_connection(tmp_path: Path) -> None:
    cert_file, key_file, ca_pem = _certificates(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_file, key_file)
    trusted = ssl.create_default_context(cadata=ca_pem)
    answers = Answers({"good.test": ["127.0.0.1"], "bad.test": ["127.0.0.1"]})
    async with LocalServer(echo, ssl_context=server_context) as server:
        outbound = Outbound(allow_hosts=["good.test", "bad.test"], resolver=answers, verify=trusted)
        try:
            good = await outbound.request("GET", server.url("good.test", "/secure", scheme="https"))
            with pytest.raises(OutboundUnavailable, match="certificate verify failed") as bad:
                await outbound.request("GET", server.url("bad.test", "/secure", scheme="https"))
        finally:
            await outbound.aclose()
        assert json.loads(good.body)["headers"]["host"] == f"good.test:{server.port}"
        assert str(bad.value).startswith(f"bad.test:{server.port}: ")
        assert [seen.headers["host"] for seen in server.requests] == [f"good.test:{server.port}"]


# --- httpx_transport(): for libraries that take an httpx client ------------------------------

async def test_httpx_transport_refuses_and_allows_the_same(server: LocalServer) -> None:
    outbound = Outbound(allow_hosts=["localhost"], resolver=Answers({"internal.test": ["10.0.0.5"]}))
    async with httpx.AsyncClient(transport=outbound.httpx_transport(), trust_env=False,
                                 follow_redirects=True) as client:
        response = await client.get(server.url("localhost", "/via-httpx"))
        assert response.status_code == 200 and json.loads(response.content)["target"] == "/via-httpx"
        for url in (server.url("127.0.0.1"), server.url("[::ffff:127.0.0.1]"), server.url("2130706433"),
                    server.url("internal.test"), "http://169.254.169.254/", server.url("[64:ff9b::7f00:1]")):
            with pytest.raises(OutboundRefused, match="not a public address"):
                await client.get(url)
        with pytest.raises(OutboundRefused, match=re.escape("127.0.0.1 is not a public address")):
            await client.get(server.url("localhost", f"/to?url={server.url('127.0.0.1', '/no')}"))
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get(server.url("localhost", scheme="ftp"))
    assert [urlsplit(seen.target).path for seen in server.requests] == ["/via-httpx", "/to"]  # never /no
    assert server.connections == 1  # the redirect's first hop reused the pooled connection


UNALIASED = textwrap.dedent("""
    import asyncio, sys

    import httpx2  # no alias in this process: httpx2 as the mcp SDK imports it in production

    from core.outbound import Outbound, OutboundRefused

    async def main():
        connections = 0

        async def serve(reader, writer):
            nonlocal connections
            connections += 1
            await reader.readuntil(b"\\r\\n\\r\\n")
            writer.write(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\nconnection: close\\r\\n\\r\\nok")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        outbound = Outbound(allow_hosts=["localhost"])
        transport = outbound.httpx_transport()
        assert isinstance(transport, httpx2.AsyncBaseTransport), transport
        async with httpx2.AsyncClient(transport=transport, trust_env=False) as client:
            assert (await client.get(f"http://localhost:{port}/")).text == "ok"
            for url in (f"http://127.0.0.1:{port}/", f"http://[::ffff:127.0.0.1]:{port}/", f"http://0x7f.1:{port}/"):
                try:
                    await client.get(url)
                except OutboundRefused:
                    pass
                else:
                    sys.exit(f"{url} was not refused")
        assert connections == 1, connections
        assert "httpx" not in sys.modules, "the guard pulled in the other httpx"
        print("httpx2 ok")

    asyncio.run(main())
""")


def test_httpx_transport_without_the_test_alias() -> None:
    done = subprocess.run([sys.executable, "-c", UNALIASED], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "httpx2 ok"


def test_importing_the_module_imports_no_http_client() -> None:
    code = "import sys, core.outbound; print(sorted({'httpx', 'httpx2', 'httpcore', 'httpcore2'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
