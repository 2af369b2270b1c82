"""The OpenAI-compatible adapter over a real socket (tests/fake_openai.py): streams and cuts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from pydantic import SecretStr

from core.providers import (
    ChatRequest,
    DeploymentSpec,
    ProviderAuthError,
    ProviderStreamCut,
    ProviderTimeout,
    ProviderUnavailable,
)
from core.providers.http_pool import ProviderTransport
from core.providers.openai_compat import OpenAICompatAdapter
from tests.fake_openai import REPLY_WORDS, FakeOpenAI, call_and_stream

REQUEST = ChatRequest(messages=[{"role": "user", "content": "hello"}], max_tokens=20)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


class Adapters(dict[str, OpenAICompatAdapter]):
    """adapters[model]: an adapter for that fake behaviour, built on first use."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url

    def __missing__(self, model: str) -> OpenAICompatAdapter:
        spec = DeploymentSpec(name=f"fake-{model}".replace(":", "-"), base_url=self.base_url, model=model)
        adapter = self[model] = OpenAICompatAdapter(spec.model_copy(update={"api_key": SecretStr("fake-key")}))
        return adapter


@pytest.fixture
async def adapters(server: FakeOpenAI) -> AsyncIterator[Adapters]:
    made = Adapters(server.base_url)
    yield made
    for adapter in made.values():
        await adapter.aclose()


async def test_plain_call(adapters: Adapters, server: FakeOpenAI) -> None:
    completion = await adapters["ok"].complete(REQUEST, timeout=5)
    assert completion.text == "".join(REPLY_WORDS) and completion.usage.total_tokens == 15
    headers, body = server.requests[-1]
    assert headers["authorization"] == "Bearer fake-key" and body["model"] == "ok"


async def test_stream_success(adapters: Adapters) -> None:
    chunks = [chunk async for chunk in adapters["ok"].stream(REQUEST, timeout=5)]
    assert [c.text for c in chunks[:-1]] == REPLY_WORDS
    assert chunks[-1].usage is not None and chunks[-1].usage.source == "provider"
    assert chunks[-1].finish_reason == "stop"


async def test_stream_without_usage_counts(adapters: Adapters) -> None:
    chunks = [chunk async for chunk in adapters["no-usage"].stream(REQUEST, timeout=5)]
    assert chunks[-1].usage is not None and chunks[-1].usage.counted


async def test_connection_dropped_before_first_token(adapters: Adapters) -> None:
    received = []
    with pytest.raises(ProviderStreamCut):
        async for chunk in adapters["cut-before-first-token"].stream(REQUEST, timeout=5):
            received.append(chunk)
    assert received == []


async def test_connection_dropped_after_first_token(adapters: Adapters) -> None:
    received = []
    with pytest.raises(ProviderStreamCut):
        async for chunk in adapters["cut-after-first-token"].stream(REQUEST, timeout=5):
            received.append(chunk.text)
    assert received == REPLY_WORDS[:2]


async def test_body_ended_without_finishing(adapters: Adapters) -> None:
    with pytest.raises(ProviderStreamCut):
        _ = [chunk async for chunk in adapters["end-without-done"].stream(REQUEST, timeout=5)]


async def test_slow_first_byte_times_out(adapters: Adapters) -> None:
    with pytest.raises(ProviderTimeout):
        _ = [chunk async for chunk in adapters["slow:2"].stream(REQUEST, timeout=0.3)]
    with pytest.raises(ProviderTimeout):
        await adapters["slow:2"].complete(REQUEST, timeout=0.3)


async def test_status_errors(adapters: Adapters) -> None:
    with pytest.raises(ProviderUnavailable, match="fake error 503"):
        await adapters["status:503"].complete(REQUEST, timeout=5)
    with pytest.raises(ProviderAuthError):
        _ = [chunk async for chunk in adapters["status:401"].stream(REQUEST, timeout=5)]


async def test_nothing_listening() -> None:
    spec = DeploymentSpec(name="gone", base_url="http://127.0.0.1:9/v1", model="m")
    adapter = OpenAICompatAdapter(spec)
    try:
        with pytest.raises(ProviderUnavailable, match="ConnectError"):
            await adapter.complete(REQUEST, timeout=5)
    finally:
        await adapter.aclose()


async def test_a_transport_passed_in_carries_the_calls_and_is_left_open(server: FakeOpenAI) -> None:
    async with ProviderTransport() as transport:
        for _ in range(2):  # the first adapter's aclose leaves the transport to its owner
            await call_and_stream(server, transport)
