"""Provider calls and the proxy the environment names, over real sockets.

A small forward proxy, started here, stands between the adapter and tests/fake_openai.py:
it takes absolute-URI requests for http:// upstreams (what a client configured with
HTTP_PROXY sends), forwards each on a fresh upstream connection and relays the reply as
it arrives. It records what it forwarded, so a test sees which calls went through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest

from core.providers.http_pool import ProviderTransport
from tests.fake_openai import FakeOpenAI, call_and_stream

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


class ForwardProxy:
    """An HTTP/1.1 forward proxy for http:// URLs, one request per client connection."""

    def __init__(self) -> None:
        self.forwarded: list[str] = []  # "METHOD absolute-URI" of each request relayed
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head[:-4].split(b"\r\n")
            method, target, _ = request_line.split(b" ")
            url = urlsplit(target.decode())  # absolute-form: http://host:port/path
            self.forwarded.append(f"{method.decode()} {target.decode()}")
            hop_by_hop = (b"connection:", b"proxy-connection:", b"keep-alive:")
            kept = [line for line in lines if not line.lower().startswith(hop_by_hop)]
            length = next((int(line.split(b":", 1)[1]) for line in lines
                           if line.lower().startswith(b"content-length:")), 0)
            body = await reader.readexactly(length)
            upstream_reader, upstream_writer = await asyncio.open_connection(url.hostname, url.port)
            path = url.path + (f"?{url.query}" if url.query else "")
            upstream_writer.write(b"%s %s HTTP/1.1\r\n" % (method, path.encode())
                                  + b"".join(line + b"\r\n" for line in kept)
                                  + b"connection: close\r\n\r\n" + body)
            while data := await upstream_reader.read(65536):  # relayed as it arrives: streams stay streams
                writer.write(data)
                await writer.drain()
            upstream_writer.close()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()  # the upstream closed its reply, so the client's connection ends too


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    forward = ForwardProxy()
    listening = await asyncio.start_server(forward.handle, "127.0.0.1", 0)
    forward.port = listening.sockets[0].getsockname()[1]
    try:
        yield forward
    finally:
        listening.close()


@pytest.fixture(autouse=True)
def without_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever this machine's environment says about proxies, each test sets its own."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def set_variables(monkeypatch: pytest.MonkeyPatch, proxy: ForwardProxy, variables: dict[str, str]) -> None:
    """Set `variables`, with `{proxy}` the proxy's URL and `{bare}` its host:port."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value.format(proxy=f"http://127.0.0.1:{proxy.port}", bare=f"127.0.0.1:{proxy.port}"))


@pytest.mark.parametrize("variables", [
    pytest.param({"HTTP_PROXY": "{proxy}"}, id="HTTP_PROXY"),
    pytest.param({"http_proxy": "{proxy}"}, id="http_proxy"),
    pytest.param({"ALL_PROXY": "{proxy}"}, id="ALL_PROXY"),
    pytest.param({"HTTP_PROXY": "{bare}"}, id="HTTP_PROXY-without-scheme"),
    pytest.param({"HTTP_PROXY": "{proxy}", "NO_PROXY": "example.com,10.0.0.1"}, id="NO_PROXY-other-hosts"),
])
async def test_a_proxy_the_environment_names_carries_every_call(
        server: FakeOpenAI, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]) -> None:
    set_variables(monkeypatch, proxy, variables)
    await call_and_stream(server)
    assert proxy.forwarded == [f"POST {server.base_url}/chat/completions"] * 2


@pytest.mark.parametrize("variables", [
    pytest.param({"HTTP_PROXY": "{proxy}", "NO_PROXY": "127.0.0.1"}, id="NO_PROXY-this-host"),
    pytest.param({"ALL_PROXY": "{proxy}", "no_proxy": "localhost, 127.0.0.1"}, id="no_proxy-a-list"),
    pytest.param({"HTTP_PROXY": "{proxy}", "NO_PROXY": "*"}, id="NO_PROXY-everything"),
    pytest.param({"HTTPS_PROXY": "{proxy}"}, id="only-an-https-proxy"),
])
async def test_calls_the_environment_does_not_proxy_go_direct(
        server: FakeOpenAI, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]) -> None:
    set_variables(monkeypatch, proxy, variables)
    await call_and_stream(server)
    assert proxy.forwarded == []


async def test_a_transport_passed_in_is_used_whatever_the_environment_names(
        server: FakeOpenAI, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    set_variables(monkeypatch, proxy, {"HTTP_PROXY": "{proxy}"})
    async with ProviderTransport() as transport:
        await call_and_stream(server, transport)
    assert proxy.forwarded == []  # the caller chose the transport, as with httpx2's client
