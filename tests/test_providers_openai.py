"""The OpenAI-compatible adapter against provider HTTP, through the real openai SDK.

pytest-httpx answers at the transport (tests/httpx2_alias.py makes it catch httpx2, which
openai 3.x sends through), so everything above it is the SDK's real code path. It answers
for httpx2's stock `AsyncHTTPTransport`, which each adapter here is given in place of the
providers' own pool (that one is tested over real sockets: test_http_pool.py,
test_providers_fake_server.py).
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from pytest_httpx import HTTPXMock, IteratorStream

from core.providers import (
    ChatRequest,
    Chunk,
    DeploymentSpec,
    ProviderAuthError,
    ProviderBadResponse,
    ProviderClientError,
    ProviderError,
    ProviderRateLimited,
    ProviderStreamCut,
    ProviderTimeout,
    ProviderUnavailable,
    tokens,
)
from core.providers.openai_compat import OpenAICompatAdapter, parse_retry_after

KEY = "sk-test-4f1c9e0b7a2d-SECRET-KEY-VALUE"
URL = "https://api.openai.com/v1/chat/completions"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello to the tests."}]

Make = Callable[..., OpenAICompatAdapter]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    made: list[OpenAICompatAdapter] = []

    def _make(provider: str = "openai", *, key: str | None = KEY, **fields: Any) -> OpenAICompatAdapter:
        fields.setdefault("name", provider)
        spec = DeploymentSpec(provider=provider, **fields)
        if key is not None:
            spec = spec.model_copy(update={"api_key": SecretStr(key)})
        adapter = OpenAICompatAdapter(spec, transport=httpx.AsyncHTTPTransport())
        made.append(adapter)
        return adapter

    yield _make
    for adapter in made:
        await adapter.aclose()


def reply(content: str | None = "Hello, tests!", *, usage: bool = True, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        **extra,
    }
    if usage:
        body["usage"] = {"prompt_tokens": 21, "completion_tokens": 4, "total_tokens": 25}
    return body


def request(**fields: Any) -> ChatRequest:
    return ChatRequest(messages=MESSAGES, **fields)


def sse(*events: object) -> list[bytes]:
    return [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events]


def delta(content: str | None = None, finish: str | None = None, **fields: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"content": content} if content is not None else {}
    d.update(fields)
    return {
        "id": "chatcmpl-s1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "delta": d, "finish_reason": finish}],
    }


USAGE_CHUNK = {
    "id": "chatcmpl-s1",
    "object": "chat.completion.chunk",
    "created": 1700000000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [],
    "usage": {"prompt_tokens": 21, "completion_tokens": 3, "total_tokens": 24},
}


def stream_response(httpx_mock: HTTPXMock, parts: Iterator[bytes] | list[bytes], url: str = URL) -> None:
    httpx_mock.add_response(
        url=url, headers={"content-type": "text/event-stream"}, stream=IteratorStream(parts)
    )


async def collect(adapter: OpenAICompatAdapter, req: ChatRequest | None = None) -> list[Chunk]:
    return [chunk async for chunk in adapter.stream(req or request(), timeout=5)]


# --- plain calls ---------------------------------------------------------------------------------


async def test_success_with_provider_usage(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, method="POST", json=reply())
    adapter = make()
    completion = await adapter.complete(request(max_tokens=50, temperature=0.2), timeout=5)

    assert completion.text == "Hello, tests!"
    assert completion.model == "gpt-4o-mini-2024-07-18"
    assert completion.finish_reason == "stop"
    assert completion.id == "chatcmpl-123"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        21,
        4,
        25,
    )
    assert completion.usage.source == "provider" and not completion.usage.counted
    assert adapter.spec.cost(completion.usage) == pytest.approx((21 * 0.00015 + 4 * 0.0006) / 1000)

    sent = httpx_mock.get_request()
    assert sent is not None
    body = json.loads(sent.content)
    assert body == {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 50, "temperature": 0.2}
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["user-agent"].startswith("AsyncOpenAI/Python")


async def test_every_request_field_and_extras_reach_the_body(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, json=reply())
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    adapter = make(params={"service_tier": "auto"})
    await adapter.complete(
        request(
            max_tokens=10,
            temperature=0.0,
            top_p=0.9,
            stop=["\n\n"],
            tools=tools,
            response_format={"type": "json_object"},
            seed=7,
            user="user-1",
            extra={"tool_choice": "auto", "presence_penalty": 0.5, "model": "not-this-one"},
        ),
        timeout=5,
    )
    body = json.loads(httpx_mock.get_request().content)  # type: ignore[union-attr]
    assert body["model"] == "gpt-4o-mini"  # extras cannot redirect the call
    assert body["temperature"] == 0.0 and body["top_p"] == 0.9 and body["stop"] == ["\n\n"]
    assert body["tools"] == tools and body["response_format"] == {"type": "json_object"}
    assert body["seed"] == 7 and body["user"] == "user-1"
    assert body["tool_choice"] == "auto" and body["presence_penalty"] == 0.5
    assert body["service_tier"] == "auto"
    assert "stream" not in body


async def test_extras_orjson_cannot_encode_still_reach_the_body(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, json=reply())
    huge = 2**70  # beyond 64 bits: the body falls back to the standard library's encoder
    completion = await make().complete(request(extra={"metadata": {"trace": huge, "note": "naïve"}}), timeout=5)
    assert completion.text == "Hello, tests!"
    body = json.loads(httpx_mock.get_request().content)  # type: ignore[union-attr]
    assert body["metadata"] == {"trace": huge, "note": "naïve"}


async def test_tool_calls_come_back_as_sent(httpx_mock: HTTPXMock, make: Make) -> None:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]
    body = reply(None)
    body["choices"][0]["message"]["tool_calls"] = calls
    body["choices"][0]["finish_reason"] = "tool_calls"
    httpx_mock.add_response(url=URL, json=body)
    completion = await make().complete(request(), timeout=5)
    assert completion.text == "" and completion.tool_calls == calls
    assert completion.finish_reason == "tool_calls"


async def test_usage_missing_is_counted(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, json=reply("Hello there, this reply has no usage.", usage=False))
    completion = await make().complete(request(), timeout=5)

    assert completion.usage.counted
    assert completion.usage.source in ("tiktoken", "estimate")
    assert completion.usage.prompt_tokens == tokens.count_messages(MESSAGES, "gpt-4o-mini") > 0
    assert completion.usage.completion_tokens == tokens.count_text(completion.text, "gpt-4o-mini") > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


async def test_429_with_retry_after_is_rate_limited(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(
        url=URL,
        status_code=429,
        headers={"retry-after": "7"},
        json={"error": {"message": "Rate limit reached for gpt-4o-mini", "type": "requests", "code": "rate_limit_exceeded"}},
    )
    with pytest.raises(ProviderRateLimited) as info:
        await make().complete(request(), timeout=5)
    error = info.value
    assert error.retryable and error.error_class == "rate_limited"
    assert error.retry_after == 7.0 and error.status == 429
    assert "Rate limit reached" in str(error)


async def test_429_prefers_retry_after_ms(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, status_code=429, headers={"retry-after-ms": "1500", "retry-after": "2"}, json={})
    with pytest.raises(ProviderRateLimited) as info:
        await make().complete(request(), timeout=5)
    assert info.value.retry_after == 1.5


def test_retry_after_parsing() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
    # what would keep a deployment out for good, or for days: an hour at most
    assert parse_retry_after({"retry-after": "inf"}) == parse_retry_after({"retry-after": "60000"}) == 3600.0
    assert parse_retry_after({"retry-after-ms": "1e300"}) == 3600.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2099 07:28:00 GMT"}) == 3600.0
    assert parse_retry_after({"retry-after": "nan"}) is None


async def test_500_is_unavailable(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, status_code=500, json={"error": {"message": "The server had an error"}})
    with pytest.raises(ProviderUnavailable) as info:
        await make().complete(request(), timeout=5)
    assert info.value.retryable and info.value.error_class == "unavailable" and info.value.status == 500
    assert len(httpx_mock.get_requests()) == 1  # no retry of our own or the SDK's: failover decides


@pytest.mark.parametrize("status", [502, 503, 529])
async def test_other_5xx_are_unavailable(httpx_mock: HTTPXMock, make: Make, status: int) -> None:
    httpx_mock.add_response(url=URL, status_code=status, text="upstream trouble")
    with pytest.raises(ProviderUnavailable):
        await make().complete(request(), timeout=5)


async def test_read_timeout_is_provider_timeout(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_exception(httpx.ReadTimeout("timed out"), url=URL)
    with pytest.raises(ProviderTimeout) as info:
        await make().complete(request(), timeout=5)
    assert info.value.retryable and info.value.error_class == "timeout"


async def test_the_whole_call_is_bounded_by_the_timeout(httpx_mock: HTTPXMock, make: Make) -> None:
    async def slow(_: httpx.Request) -> httpx.Response:
        await asyncio.sleep(2)
        return httpx.Response(200, json=reply())

    httpx_mock.add_callback(slow, url=URL)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ProviderTimeout):
        await make().complete(request(), timeout=0.2)
    assert loop.time() - started < 1.5


async def test_spec_timeout_caps_the_callers(httpx_mock: HTTPXMock, make: Make) -> None:
    async def slow(_: httpx.Request) -> httpx.Response:
        await asyncio.sleep(2)
        return httpx.Response(200, json=reply())

    httpx_mock.add_callback(slow, url=URL)
    with pytest.raises(ProviderTimeout):
        await make(timeout_seconds=0.2).complete(request(), timeout=60)


async def test_connection_error_is_unavailable(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_exception(httpx.ConnectError("Connection refused"), url=URL)
    with pytest.raises(ProviderUnavailable) as info:
        await make().complete(request(), timeout=5)
    assert "ConnectError" in str(info.value)


async def test_malformed_json_is_bad_response(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, content=b'{"id": "x", "choices": [', headers={"content-type": "application/json"})
    with pytest.raises(ProviderBadResponse) as info:
        await make().complete(request(), timeout=5)
    assert info.value.retryable and info.value.error_class == "bad_response"


@pytest.mark.parametrize(
    "response",
    [
        {"content": b"<html>Bad gateway page</html>", "headers": {"content-type": "text/html"}},
        {"json": {"id": "x", "object": "chat.completion"}},  # no choices
        {"json": {"choices": [{"index": 0}]}},  # no message
        {"json": ["not", "an", "object"]},
    ],
)
async def test_unexpected_shapes_are_bad_response(httpx_mock: HTTPXMock, make: Make, response: dict) -> None:
    httpx_mock.add_response(url=URL, **response)
    with pytest.raises(ProviderBadResponse):
        await make().complete(request(), timeout=5)


async def test_400_is_a_client_error_with_the_providers_message(httpx_mock: HTTPXMock, make: Make) -> None:
    message = "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens."
    httpx_mock.add_response(
        url=URL,
        status_code=400,
        json={"error": {"message": message, "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}},
    )
    with pytest.raises(ProviderClientError) as info:
        await make().complete(request(), timeout=5)
    error = info.value
    assert not error.retryable and error.error_class == "client_error"
    assert error.status == 400 and error.provider_message == message
    assert message in str(error)
    assert error.__cause__ is None and error.__suppress_context__  # the SDK's exception is not chained


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_key_model_or_url_problems_are_auth_errors(httpx_mock: HTTPXMock, make: Make, status: int) -> None:
    httpx_mock.add_response(url=URL, status_code=status, json={"error": {"message": "nope"}})
    with pytest.raises(ProviderAuthError) as info:
        await make().complete(request(), timeout=5)
    assert info.value.retryable and info.value.status == status


async def test_gemini_bad_key_400_is_an_auth_error(httpx_mock: HTTPXMock, make: Make) -> None:
    url = "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions"
    body = [
        {
            "error": {
                "code": 400,
                "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT",
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}],
            }
        }
    ]
    httpx_mock.add_response(url=url, status_code=400, json=body)
    with pytest.raises(ProviderAuthError) as info:
        await make("gemini", kind="openai_compatible").complete(request(), timeout=5)
    assert info.value.provider_message == "API key not valid. Please pass a valid API key."


async def test_the_key_never_appears_in_errors(httpx_mock: HTTPXMock, make: Make) -> None:
    leaky = f"Incorrect API key provided: {KEY}. You can find your API key at https://platform.openai.com."
    httpx_mock.add_response(url=URL, status_code=400, json={"error": {"message": leaky, "type": "invalid_request_error"}})
    adapter = make()
    with pytest.raises(ProviderError) as info:
        await adapter.complete(request(), timeout=5)
    error = info.value
    for text in (str(error), repr(error), str(error.provider_message), str(error.args)):
        assert KEY not in text
    assert "[redacted]" in str(error)
    assert KEY not in repr(adapter) and KEY not in repr(adapter.spec) and KEY not in str(adapter.spec.describe())


# --- each provider family: URL, auth, model --------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "url", "model"),
    [
        ("openai", "https://api.openai.com/v1/chat/completions", "gpt-4o-mini"),
        ("anthropic", "https://api.anthropic.com/v1/chat/completions", "claude-3-5-haiku-latest"),
        ("gemini", "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions", "gemini-2.0-flash"),
        ("grok", "https://api.x.ai/v1/chat/completions", "grok-3-mini"),
    ],
)
async def test_each_family_calls_its_endpoint_with_its_key_and_model(
    httpx_mock: HTTPXMock, make: Make, monkeypatch: pytest.MonkeyPatch, provider: str, url: str, model: str
) -> None:
    monkeypatch.setenv("OPENAI_ORG_ID", "org-should-stay-with-openai")
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-admin-never-sent")
    httpx_mock.add_response(url=url, method="POST", json=reply(model=model))
    key = f"key-for-{provider}"
    # Anthropic and Gemini are native by default; their compatibility layers are kept.
    kind = {"kind": "openai_compatible"} if provider in ("anthropic", "gemini") else {}
    completion = await make(provider, key=key, **kind).complete(request(), timeout=5)
    assert completion.text == "Hello, tests!"

    sent = httpx_mock.get_request()
    assert sent is not None and str(sent.url) == url
    assert sent.headers["authorization"] == f"Bearer {key}"
    assert "sk-admin-never-sent" not in str(sent.headers)
    body = json.loads(sent.content)
    assert body["model"] == model
    if provider == "anthropic":
        assert body["max_tokens"] == 4096  # Anthropic needs one; the deployment supplies it
    if provider == "openai":
        assert sent.headers["openai-organization"] == "org-should-stay-with-openai"
    else:
        assert "openai-organization" not in sent.headers


async def test_gemini_is_not_sent_params_it_refuses(httpx_mock: HTTPXMock, make: Make) -> None:
    url = "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions"
    httpx_mock.add_response(url=url, json=reply())
    await make("gemini", kind="openai_compatible").complete(request(seed=3, temperature=0.1, extra={"frequency_penalty": 0.2}), timeout=5)
    body = json.loads(httpx_mock.get_request().content)  # type: ignore[union-attr]
    assert "seed" not in body and "frequency_penalty" not in body and body["temperature"] == 0.1


async def test_custom_base_url_without_a_key_sends_no_authorization(httpx_mock: HTTPXMock, make: Make) -> None:
    url = "http://localhost:11434/v1/chat/completions"
    httpx_mock.add_response(url=url, json=reply(model="llama3.2"))
    adapter = make("custom", name="ollama", key=None, base_url="http://localhost:11434/v1", model="llama3.2")
    completion = await adapter.complete(request(), timeout=5)
    assert completion.model == "llama3.2"
    sent = httpx_mock.get_request()
    assert sent is not None and "authorization" not in sent.headers
    assert json.loads(sent.content)["model"] == "llama3.2"


async def test_one_client_per_deployment_reused(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, json=reply(), is_reusable=True)
    adapter = make()
    await adapter.complete(request(), timeout=5)
    client = adapter._client
    await asyncio.gather(*(adapter.complete(request(), timeout=5) for _ in range(5)))
    assert adapter._client is client and adapter.in_flight == 0


# --- streaming ---------------------------------------------------------------------------------------


async def test_stream_success_with_final_usage(httpx_mock: HTTPXMock, make: Make) -> None:
    stream_response(
        httpx_mock,
        sse(
            delta(role="assistant", content=""),
            delta("Hel"),
            delta("lo"),
            delta("!"),
            delta(finish="stop"),
            USAGE_CHUNK,
            "[DONE]",
        ),
    )
    chunks = await collect(make())
    assert [c.text for c in chunks[:-1]] == ["Hel", "lo", "!"]
    final = chunks[-1]
    assert final.is_final and final.text == ""
    assert final.finish_reason == "stop" and final.model == "gpt-4o-mini-2024-07-18" and final.id == "chatcmpl-s1"
    assert final.usage is not None and final.usage.source == "provider"
    assert (final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.total_tokens) == (21, 3, 24)

    body = json.loads(httpx_mock.get_request().content)  # type: ignore[union-attr]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_stream_split_across_network_reads(httpx_mock: HTTPXMock, make: Make) -> None:
    raw = b"".join(sse(delta("Hello"), delta(" world"), delta(finish="stop"), USAGE_CHUNK, "[DONE]"))
    stream_response(httpx_mock, [raw[i : i + 7] for i in range(0, len(raw), 7)])
    chunks = await collect(make())
    assert "".join(c.text for c in chunks) == "Hello world"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 24


@pytest.mark.parametrize("end", [b"\r\n", b"\r"])
async def test_stream_lines_ending_in_crlf_or_cr_split_anywhere(httpx_mock: HTTPXMock, make: Make,
                                                                end: bytes) -> None:
    """SSE lines may end in CRLF or CR; a CRLF split between two reads ends one line."""
    raw = b"".join(sse(delta("Hello"), delta(" world"), delta(finish="stop"), USAGE_CHUNK, "[DONE]"))
    raw = raw.replace(b"\n", end)
    stream_response(httpx_mock, [raw[i : i + 3] for i in range(0, len(raw), 3)])
    chunks = await collect(make())
    assert "".join(c.text for c in chunks) == "Hello world"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 24


async def test_stream_without_usage_is_counted(httpx_mock: HTTPXMock, make: Make) -> None:
    stream_response(httpx_mock, sse(delta("Counted "), delta("reply."), delta(finish="stop"), "[DONE]"))
    chunks = await collect(make(stream_usage=False))
    usage = chunks[-1].usage
    assert usage is not None and usage.counted
    assert usage.completion_tokens == tokens.count_text("Counted reply.", "gpt-4o-mini")
    assert "stream_options" not in json.loads(httpx_mock.get_request().content)  # type: ignore[union-attr]


async def test_stream_tool_call_deltas_pass_through(httpx_mock: HTTPXMock, make: Make) -> None:
    call = [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": ""}}]
    args = [{"index": 0, "function": {"arguments": '{"q":1}'}}]
    stream_response(
        httpx_mock, sse(delta(tool_calls=call), delta(tool_calls=args), delta(finish="tool_calls"), "[DONE]")
    )
    chunks = await collect(make(stream_usage=False))
    assert [c.tool_calls for c in chunks[:-1]] == [call, args]
    assert chunks[-1].finish_reason == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def _broken(parts: list[bytes]) -> Iterator[bytes]:
    yield from parts
    raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


async def test_stream_cut_before_the_first_token(httpx_mock: HTTPXMock, make: Make) -> None:
    stream_response(httpx_mock, _broken(sse(delta(role="assistant", content=""))))
    received: list[Chunk] = []
    with pytest.raises(ProviderStreamCut) as info:
        async for chunk in make().stream(request(), timeout=5):
            received.append(chunk)
    assert received == []  # nothing reached the caller: it may fail over
    assert info.value.retryable and isinstance(info.value, ProviderUnavailable)


async def test_stream_cut_after_the_first_token(httpx_mock: HTTPXMock, make: Make) -> None:
    stream_response(httpx_mock, _broken(sse(delta("Hel"), delta("lo"))))
    received: list[str] = []
    with pytest.raises(ProviderStreamCut) as info:
        async for chunk in make().stream(request(), timeout=5):
            received.append(chunk.text)
    assert received == ["Hel", "lo"]
    assert info.value.retryable and info.value.error_class == "stream_cut"


async def test_stream_that_ends_without_finishing_is_cut(httpx_mock: HTTPXMock, make: Make) -> None:
    stream_response(httpx_mock, sse(delta("Half a rep")))
    with pytest.raises(ProviderStreamCut):
        await collect(make())


async def test_stream_losing_only_the_usage_tail_still_finishes(httpx_mock: HTTPXMock, make: Make) -> None:
    stream_response(httpx_mock, _broken(sse(delta("Complete."), delta(finish="stop"))))
    chunks = await collect(make())
    assert chunks[0].text == "Complete."
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage is not None and chunks[-1].usage.counted


async def test_stream_read_timeout(httpx_mock: HTTPXMock, make: Make) -> None:
    def stalled() -> Iterator[bytes]:
        yield from sse(delta("Hel"))
        raise httpx.ReadTimeout("timed out")

    stream_response(httpx_mock, stalled())
    with pytest.raises(ProviderTimeout):
        await collect(make())


async def test_stream_malformed_event_is_bad_response(httpx_mock: HTTPXMock, make: Make) -> None:
    stream_response(httpx_mock, [*sse(delta("ok")), b"data: {not json\n\n"])
    with pytest.raises(ProviderBadResponse):
        await collect(make())


async def test_stream_error_event_is_mapped(httpx_mock: HTTPXMock, make: Make) -> None:
    error = {"error": {"message": "Overloaded", "type": "overloaded_error"}}
    stream_response(httpx_mock, sse(delta("Hel"), error))
    with pytest.raises(ProviderUnavailable, match="Overloaded"):
        await collect(make())


async def test_stream_http_errors_raise_from_the_first_step(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, status_code=429, headers={"retry-after": "3"}, json={"error": {"message": "slow down"}})
    iterator = make().stream(request(), timeout=5)
    with pytest.raises(ProviderRateLimited) as info:
        await iterator.__anext__()
    assert info.value.retry_after == 3.0


async def test_stream_answered_in_one_json_piece(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, json=reply("All at once."))
    chunks = await collect(make())
    assert [c.text for c in chunks] == ["All at once.", ""]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 25


async def test_abandoned_stream_releases_its_slot(httpx_mock: HTTPXMock, make: Make) -> None:
    stream_response(httpx_mock, sse(delta("a"), delta("b"), delta(finish="stop"), "[DONE]"))
    adapter = make(max_concurrency=1)
    iterator = adapter.stream(request(), timeout=5)
    assert (await iterator.__anext__()).text == "a"
    assert adapter.in_flight == 1
    await iterator.aclose()  # type: ignore[attr-defined]
    assert adapter.in_flight == 0


async def test_once_a_client_is_built_the_sdk_is_out_of_the_collectors_full_scans(
    make: Make, httpx_mock: HTTPXMock
) -> None:
    # A full collection that re-scans the SDK's ~47,000 objects stalled every request in
    # flight for ~100 ms under load; after the first call they sit in the frozen set.
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    httpx_mock.add_response(url=URL, json=reply())
    completion = await make().complete(request())
    assert completion.text == "Hello, tests!"
    assert gc.get_freeze_count() > 40_000


@pytest.mark.parametrize(("headers", "wait"), [
    ({"x-ratelimit-remaining-requests": "12", "x-ratelimit-remaining-tokens": "4000"}, None),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s"}, 1.0),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}, 360.0),
    ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20ms"}, 0.02),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s",
      "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1m30s"}, 90.0),  # the later one
    ({"x-ratelimit-remaining-requests": "0"}, 1.0),  # no reset given: a second's rest
    ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "99999h"}, 3600.0),  # an hour at most
    ({}, None),
])
def test_limit_headers_say_how_long_until_a_used_up_limit_resets(headers: dict[str, str],
                                                                 wait: float | None) -> None:
    from core.providers.openai_compat import limit_reset

    assert limit_reset(headers) == (pytest.approx(wait) if wait is not None else None)


def test_anthropics_limit_headers_say_when_a_used_up_limit_resets() -> None:
    from datetime import UTC, datetime, timedelta

    from core.providers.openai_compat import limit_reset

    soon = (datetime.now(UTC) + timedelta(seconds=42)).isoformat().replace("+00:00", "Z")
    assert limit_reset({"anthropic-ratelimit-requests-remaining": "0",
                        "anthropic-ratelimit-requests-reset": soon}) == pytest.approx(42, abs=2)
    assert limit_reset({"anthropic-ratelimit-output-tokens-remaining": "0",
                        "anthropic-ratelimit-output-tokens-reset": "not a time"}) == 1.0
    assert limit_reset({"anthropic-ratelimit-requests-remaining": "49"}) is None
