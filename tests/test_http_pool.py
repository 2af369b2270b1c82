"""The providers' HTTP/1.1 pool (core/providers/http_pool.py) over real sockets.

Through httpx2's client and directly, as the provider adapter uses it: TLS with
certificate checks, keep-alive, every way a reply can be framed or cut, timeouts, the
connection limit, a cancelled caller, and what the request and reply heads may hold. The servers are real: http.server over TLS, and small asyncio
servers that script exactly what goes over the wire.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib.metadata
import re
import ssl
import threading
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pytest_httpx import HTTPXMock

from core.providers.http_pool import ProviderTransport


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    peers: list[int] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.peers.append(self.client_address[1])
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        if self.path == "/close":
            self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://localhost:{server.server_address[1]}", cert_file
    server.shutdown()


async def test_tls_keep_alive_and_a_closed_idle_connection(tls_server: tuple[str, Path]) -> None:
    url, cert = tls_server
    _Handler.peers.clear()
    trusted = ssl.create_default_context(cafile=str(cert))
    async with httpx2.AsyncClient(transport=ProviderTransport(verify=trusted)) as client:
        replies = [await client.post(f"{url}/keep", json={"n": i}) for i in range(3)]
        closing = await client.post(f"{url}/close", json={})
        after = await client.post(f"{url}/keep", json={})  # a new connection, transparently
    assert all(r.status_code == 200 and r.json() == {"ok": True} for r in [*replies, closing, after])
    assert len(set(_Handler.peers[:4])) == 1  # one kept-alive connection for the first four
    assert _Handler.peers[4] != _Handler.peers[3]


async def test_an_untrusted_certificate_is_refused(tls_server: tuple[str, Path]) -> None:
    url, _ = tls_server
    async with httpx2.AsyncClient(transport=ProviderTransport()) as client:
        with pytest.raises(httpx2.ConnectError):
            await client.post(f"{url}/keep", json={})


# --- scripted asyncio servers ---------------------------------------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Seen"], Awaitable[None]]


class Seen:
    """What a scripted server saw: connections, concurrent ones, request bodies."""

    def __init__(self) -> None:
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.bodies: list[bytes] = []


async def read_request(reader: asyncio.StreamReader, seen: Seen) -> bool:
    """Read one request (head and body, Content-Length or chunked); False at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if line)
    headers = {k.lower(): v for k, v in headers.items()}
    if headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
    else:
        body = await reader.readexactly(int(headers.get(b"content-length", 0)))
    seen.bodies.append(body)
    return True


def reply(body: bytes, *extra: bytes, status: bytes = b"200 OK") -> bytes:
    head = [b"HTTP/1.1 " + status, b"content-type: application/json", b"content-length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen) -> None:
    while await read_request(reader, seen):
        writer.write(reply(b'{"ok": true}'))


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[tuple[str, Seen]]:
    seen = Seen()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.connections += 1
        seen.open += 1
        seen.most_open = max(seen.most_open, seen.open)
        try:
            await script(reader, writer, seen)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            seen.open -= 1
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.close()


def client(**limits: int) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=ProviderTransport(limits=httpx2.Limits(**limits) if limits else None))


async def test_keep_alive_reuses_one_connection_and_sends_the_body() -> None:
    async with scripted(keep_alive) as (url, seen), client() as http:
        replies = [await http.post(url + "/v1/chat/completions", json={"n": i}) for i in range(5)]
    assert [r.json() for r in replies] == [{"ok": True}] * 5
    assert seen.connections == 1
    assert seen.bodies == [b'{"n":%d}' % i for i in range(5)]


async def test_a_chunked_request_body_arrives_whole() -> None:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b'{"messages": ', b"[]", b"}"):
            yield part

    async with scripted(keep_alive) as (url, seen), client() as http:
        response = await http.post(url, content=parts())
    assert response.status_code == 200
    assert seen.bodies == [b'{"messages": []}']


async def test_a_chunked_reply_streams_each_event_as_it_arrives_then_the_connection_is_reused() -> None:
    first_seen = asyncio.Event()

    async def sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen) -> None:
        await read_request(reader, seen)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"%x\r\n%b\r\n" % (len(b"data: one\n\n"), b"data: one\n\n"))
        await writer.drain()
        await first_seen.wait()  # the second event goes only once the client has the first
        writer.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(b"data: two\n\n"), b"data: two\n\n"))
        await keep_alive(reader, writer, seen)

    async with scripted(sse) as (url, seen), client() as http:
        received = []
        async with http.stream("POST", url, json={"stream": True}) as response:
            async for part in response.aiter_raw():
                received.append(part)
                first_seen.set()
        after = await http.post(url, json={})
    assert b"".join(received) == b"data: one\n\ndata: two\n\n"
    assert received[0] == b"data: one\n\n"
    assert after.json() == {"ok": True}
    assert seen.connections == 1


async def test_a_reply_that_ends_with_the_connection_is_read_whole() -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen) -> None:
        await read_request(reader, seen)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"whole\": ")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"true}")

    async with scripted(until_close) as (url, seen), client() as http:
        first = await http.post(url, json={})
        second = await http.post(url, json={})
    assert first.json() == second.json() == {"whole": True}
    assert seen.connections == 2  # a read-until-close reply leaves nothing to reuse


async def test_an_interim_100_continue_is_skipped() -> None:
    async def continue_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen) -> None:
        await read_request(reader, seen)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + reply(b'{"ok": true}'))
        await keep_alive(reader, writer, seen)

    async with scripted(continue_first) as (url, seen), client() as http:
        replies = [await http.post(url, json={}) for _ in range(2)]
    assert [(r.status_code, r.json()) for r in replies] == [(200, {"ok": True})] * 2
    assert seen.connections == 1


@pytest.mark.parametrize("wire", [
    pytest.param(b"", id="closed-before-replying"),
    pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"cut", id="cut-mid-body"),
    pytest.param(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"cut\r\n", id="cut-mid-chunks"),
    pytest.param(b"SMTP ready\r\n\r\n", id="not-http"),
])
async def test_a_broken_reply_is_a_protocol_error_and_the_pool_carries_on(wire: bytes) -> None:
    async def broken_then_fine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen) -> None:
        if seen.connections == 1:
            await read_request(reader, seen)
            writer.write(wire)
            return  # and close
        await keep_alive(reader, writer, seen)

    # one connection at most: a slot leaked by the failure would block the next request
    async with scripted(broken_then_fine) as (url, seen), client(max_connections=1) as http:
        with pytest.raises(httpx2.RemoteProtocolError):
            await http.post(url, json={}, timeout=2)
        after = await http.post(url, json={}, timeout=2)
    assert after.json() == {"ok": True}
    assert seen.connections == 2


async def silent_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen) -> None:
    """The first connection reads its request and never answers; later ones do."""
    if seen.connections == 1:
        await read_request(reader, seen)
        await asyncio.sleep(5)
        return
    await keep_alive(reader, writer, seen)


async def test_a_silent_server_is_a_read_timeout_and_its_connection_is_not_reused() -> None:
    async with scripted(silent_first) as (url, seen), client(max_connections=1) as http:
        with pytest.raises(httpx2.ReadTimeout):
            await http.post(url, json={}, timeout=0.2)
        after = await http.post(url, json={}, timeout=2)
    assert after.json() == {"ok": True}
    assert seen.connections == 2


async def test_a_cancelled_caller_frees_its_connection_slot() -> None:
    async with scripted(silent_first) as (url, seen), client(max_connections=1) as http:
        call = asyncio.create_task(http.post(url, json={}))
        while not seen.bodies:
            await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        after = await http.post(url, json={}, timeout=2)
    assert after.json() == {"ok": True}


async def test_connections_in_use_stay_within_the_limit_and_the_pool_timeout_applies() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen) -> None:
        while await read_request(reader, seen):
            await asyncio.sleep(0.05)
            writer.write(reply(b'{"ok": true}'))

    async with scripted(slow) as (url, seen), client(max_connections=2) as http:
        replies = await asyncio.gather(*(http.post(url, json={"n": i}) for i in range(6)))
        assert [r.json() for r in replies] == [{"ok": True}] * 6
        assert seen.most_open == 2
        waiting = [http.post(url, json={}, timeout=httpx2.Timeout(5, pool=0.01)) for _ in range(3)]
        results = await asyncio.gather(*waiting, return_exceptions=True)
    assert sum(isinstance(r, httpx2.PoolTimeout) for r in results) == 1


async def test_a_refused_connection_is_a_connect_error() -> None:
    async with scripted(keep_alive) as (url, _):
        pass  # closed again: nothing listens on its port now
    async with client() as http:
        with pytest.raises(httpx2.ConnectError):
            await http.post(url, json={})


async def test_a_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    async with scripted(keep_alive) as (url, seen), client() as http:
        with pytest.raises(httpx2.LocalProtocolError, match="x-injected"):
            await http.post(url, json={}, headers={"x-injected": "a\r\nx-evil: 1"})
    assert seen.bodies == []


# --- httpx2's public transport interface ----------------------------------------------------


async def test_used_directly_it_answers_an_httpx2_request_with_a_streamed_reply() -> None:
    # As the adapter's hot path calls it: no client, httpx2's Request and Response.
    async with scripted(keep_alive) as (url, seen), ProviderTransport() as transport:
        response = await transport.handle_async_request(httpx2.Request("POST", url, json={"n": 1}))
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        assert response.status_code == 200 and await response.aread() == b'{"ok": true}'
        await response.aclose()
        with pytest.raises(httpx2.UnsupportedProtocol):
            await transport.handle_async_request(httpx2.Request("GET", "ftp://127.0.0.1/"))
    assert seen.bodies == [b'{"n":1}']


async def test_pytest_httpx_answers_for_httpx2s_own_transport_not_this_one(httpx_mock: HTTPXMock) -> None:
    # pytest-httpx patches AsyncHTTPTransport.handle_async_request: a transport built by
    # subclassing that class (and swapping its private pool) would be answered by the
    # mock, which has no response here, instead of reaching the server.
    async with scripted(keep_alive) as (url, seen), client() as http:
        response = await http.post(url, json={})
    assert response.json() == {"ok": True}
    assert seen.bodies == [b"{}"]
    assert httpx_mock.get_requests() == []


# --- the reply head's size, the request head's names ----------------------------------------

LIMIT = 16 * 1024  # h11's default max_incomplete_event_size


def reply_with_head_of(size: int, headers: int = 1) -> bytes:
    """A 200 reply whose status line and headers take exactly `size` bytes, filled by
    `headers` headers of (nearly) equal length, then a 2-byte body."""
    start = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"
    fill = size - len(start) - 2  # the blank line ends the head
    lines = []
    for number in range(headers):
        prefix = b"x-fill-%d: " % number
        share = fill // headers + (1 if number < fill % headers else 0)
        lines.append(prefix + b"a" * (share - len(prefix) - 2) + b"\r\n")
    head = start + b"".join(lines) + b"\r\n"
    assert len(head) == size
    return head + b"{}"


@pytest.mark.parametrize("wire", [
    # Never ends: refused once 16 KiB have come, not buffered on until the read timeout.
    pytest.param(b"HTTP/1.1 200 OK\r\nx-endless: " + b"a" * (2 * 1024 * 1024), id="endless-2-MiB-header"),
    pytest.param(reply_with_head_of(LIMIT + 1024, headers=64), id="many-headers"),
    pytest.param(reply_with_head_of(LIMIT + 1), id="one-byte-over"),
])
async def test_a_reply_head_over_16_kib_is_a_protocol_error_and_its_connection_is_closed(wire: bytes) -> None:
    async def big_head_then_fine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen) -> None:
        if seen.connections == 1:
            await read_request(reader, seen)
            writer.write(wire)
            await writer.drain()
            await reader.read()  # until the client hangs up
            return
        await keep_alive(reader, writer, seen)

    async with scripted(big_head_then_fine) as (url, seen), client(max_connections=1) as http:
        with pytest.raises(httpx2.RemoteProtocolError, match="status line and headers exceed 16384 bytes"):
            await http.post(url, json={}, timeout=2)
        after = await http.post(url, json={}, timeout=2)
    assert after.json() == {"ok": True}
    assert seen.connections == 2


async def test_a_reply_head_of_exactly_16_kib_is_read() -> None:
    async def exact(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen) -> None:
        while await read_request(reader, seen):
            writer.write(reply_with_head_of(LIMIT, headers=8))

    async with scripted(exact) as (url, seen), client() as http:
        replies = [await http.post(url, json={}) for _ in range(2)]
    assert [r.json() for r in replies] == [{}, {}]
    assert seen.connections == 1


@pytest.mark.parametrize("name", ["x bad", "x-a:b", "x\tname", "x(y)", "x\x7f", ""])
async def test_a_header_name_that_is_not_a_token_is_refused_before_anything_is_sent(name: str) -> None:
    async with scripted(keep_alive) as (url, seen), client() as http:
        with pytest.raises(httpx2.LocalProtocolError, match=re.escape(f"header name {name!r} is not")):
            await http.post(url, json={}, headers={name: "1"})
    assert seen.bodies == []


def test_httpx2_is_declared_and_pinned_to_the_release_line_installed() -> None:
    # This transport reimplements httpx2's transport contract, so another httpx2 release
    # is an upgrade someone makes on purpose, not one a resolver picks via the openai SDK.
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    pins = [found.groups() for dependency in pyproject["project"]["dependencies"]
            if (found := re.fullmatch(r"httpx2\s*(==|~=)\s*(\d+)\.(\d+)\.(\d+)", dependency))]
    assert len(pins) == 1, "pyproject.toml declares httpx2 as ==X.Y.Z or ~=X.Y.Z"
    operator, *pinned = pins[0]
    installed = tuple(int(part) for part in importlib.metadata.version("httpx2").split(".")[:3])
    if operator == "==":
        assert installed == tuple(map(int, pinned))
    else:
        assert installed[:2] == tuple(map(int, pinned[:2])) and installed >= tuple(map(int, pinned))
