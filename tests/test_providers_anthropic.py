"""The native Anthropic adapter against Anthropic's Messages API, faked at its HTTP boundary.

pytest-httpx answers for httpx2's stock transport, which each adapter here is given in
place of the providers' own pool (tests/httpx2_alias.py explains the alias).
"""

from __future__ import annotations

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
    ProviderUnsupported,
    ProviderError,
    ProviderRateLimited,
    ProviderStreamCut,
    ProviderTimeout,
    ProviderUnavailable,
)
from core.providers.anthropic import AnthropicAdapter

KEY = "sk-ant-test-0a1b2c3d-SECRET-KEY-VALUE"
URL = "https://api.anthropic.com/v1/messages"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a word up",
                                           "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]

Make = Callable[..., AnthropicAdapter]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    made: list[AnthropicAdapter] = []

    def _make(**fields: Any) -> AnthropicAdapter:
        fields.setdefault("name", "claude")
        spec = DeploymentSpec(provider="anthropic", **fields).model_copy(update={"api_key": SecretStr(KEY)})
        adapter = AnthropicAdapter(spec, transport=httpx.AsyncHTTPTransport())
        made.append(adapter)
        return adapter

    yield _make
    for adapter in made:
        await adapter.aclose()


def reply(*content: dict[str, Any], stop: str = "end_turn", **usage: int) -> dict[str, Any]:
    return {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022",
            "content": list(content) or [{"type": "text", "text": "Hello!"}], "stop_reason": stop,
            "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 3, **usage}}


def request(**fields: Any) -> ChatRequest:
    return ChatRequest(messages=fields.pop("messages", MESSAGES), **fields)


def sse(*events: dict[str, Any]) -> list[bytes]:
    return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]


START = {"type": "message_start", "message": {"id": "msg_s", "type": "message", "role": "assistant", "content": [],
                                              "model": "claude-3-5-haiku-20241022", "stop_reason": None,
                                              "stop_sequence": None, "usage": {"input_tokens": 20, "output_tokens": 1,
                                                                               "cache_read_input_tokens": 5}}}


def text_events(*pieces: str) -> list[dict[str, Any]]:
    return [{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "ping"},
            *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}} for p in pieces)]


END = [{"type": "content_block_stop", "index": 0},
       {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 7}},
       {"type": "message_stop"}]


def stream_response(httpx_mock: HTTPXMock, parts: Iterator[bytes] | list[bytes]) -> None:
    httpx_mock.add_response(url=URL, headers={"content-type": "text/event-stream"}, stream=IteratorStream(parts))


def broken(parts: list[bytes]) -> Iterator[bytes]:
    yield from parts
    raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


async def collect(adapter: AnthropicAdapter, req: ChatRequest | None = None) -> list[Chunk]:
    return [chunk async for chunk in adapter.stream(req or request(), timeout=5)]


# --- plain calls ---------------------------------------------------------------------------------


async def test_a_reply_with_its_headers_usage_and_cost(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, method="POST",
                            json=reply(cache_read_input_tokens=100, cache_creation_input_tokens=8))
    adapter = make()
    completion = await adapter.complete(request(max_tokens=50, temperature=0.2), timeout=5)
    assert (completion.text, completion.finish_reason, completion.id) == ("Hello!", "stop", "msg_01")
    assert completion.model == "claude-3-5-haiku-20241022"
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (120, 3, 123)
    assert usage.source == "provider"
    assert adapter.spec.cost(usage) == pytest.approx((120 * 0.0008 + 3 * 0.004) / 1000)

    sent = httpx_mock.get_request()
    assert sent is not None and sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01" and "authorization" not in sent.headers
    assert json.loads(sent.content) == {"model": "claude-3-5-haiku-latest", "max_tokens": 50, "temperature": 0.2,
                                        "system": "Be brief.", "messages": [{"role": "user", "content": "Say hello."}]}


async def test_the_request_is_translated_field_by_field(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, json=reply())
    messages = [
        {"role": "system", "content": "Rule one."},
        {"role": "developer", "content": [{"type": "text", "text": "Rule two."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}]},
        {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "cat"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "lookup", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "a small feline"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "nothing"}]},
        {"role": "user", "content": "Thanks."},
    ]
    await make(params={"top_k": 3}).complete(request(
        messages=messages, stop="\n\n", tools=TOOLS, user="user-7", seed=1, top_p=0.9,
        extra={"tool_choice": {"type": "function", "function": {"name": "lookup"}}, "parallel_tool_calls": False}),
        timeout=5)
    body = json.loads(httpx_mock.get_request().content)  # type: ignore[union-attr]
    assert body["system"] == [{"type": "text", "text": "Rule one."}, {"type": "text", "text": "Rule two."}]
    assert body["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"q": "cat"}},
            {"type": "tool_use", "id": "call_2", "name": "lookup", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "a small feline"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "nothing"}]},
            {"type": "text", "text": "Thanks."}]},
    ]
    assert body["tools"] == [{"name": "lookup", "description": "Look a word up",
                              "input_schema": TOOLS[0]["function"]["parameters"]}]
    assert body["tool_choice"] == {"type": "tool", "name": "lookup", "disable_parallel_tool_use": True}
    assert body["stop_sequences"] == ["\n\n"] and body["metadata"] == {"user_id": "user-7"}
    assert body["top_p"] == 0.9 and body["top_k"] == 3 and body["max_tokens"] == 4096
    assert "seed" not in body  # the family's drop_params: Anthropic has none


@pytest.mark.parametrize(("req", "field"), [
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///x.png"}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "name": "ann", "content": "hi"}]}, "messages[0].name"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"extra": {"logit_bias": {"1": 2}}}, "logit_bias"),
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
])
async def test_what_cannot_be_translated_is_refused_naming_it(make: Make, req: dict[str, Any], field: str) -> None:
    with pytest.raises(ProviderClientError) as info:
        await make().complete(request(**req), timeout=5)
    assert field in str(info.value) and isinstance(info.value, ProviderUnsupported)
    assert info.value.retryable and info.value.status == 400  # another protocol may express it; nothing was sent


async def test_tool_use_comes_back_as_openai_tool_calls(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, json=reply(
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "dog"}}, stop="tool_use"))
    completion = await make().complete(request(tools=TOOLS), timeout=5)
    assert completion.text == "Let me look." and completion.finish_reason == "tool_calls"
    assert completion.tool_calls == [{"id": "toolu_1", "type": "function",
                                      "function": {"name": "lookup", "arguments": '{"q": "dog"}'}}]


async def test_a_stop_sequence_is_named(httpx_mock: HTTPXMock, make: Make) -> None:
    body = reply(stop="stop_sequence")
    body["stop_sequence"] = "END"
    httpx_mock.add_response(url=URL, json=body)
    completion = await make().complete(request(stop=["END"]), timeout=5)
    assert completion.finish_reason == "stop" and completion.stop_sequence == "END"


@pytest.mark.parametrize(("status", "headers", "error", "retry_after"), [
    (429, {"retry-after": "7"}, ProviderRateLimited, 7.0),
    (529, {}, ProviderUnavailable, None),
    (500, {}, ProviderUnavailable, None),
    (401, {}, ProviderAuthError, None),
    (403, {}, ProviderAuthError, None),
    (400, {}, ProviderClientError, None),
])
async def test_each_status_maps_to_its_error(httpx_mock: HTTPXMock, make: Make, status: int,
                                             headers: dict[str, str], error: type[ProviderError],
                                             retry_after: float | None) -> None:
    httpx_mock.add_response(url=URL, status_code=status, headers=headers, json={
        "type": "error", "error": {"type": "some_error", "message": f"Anthropic says {status} (key {KEY})"}})
    with pytest.raises(error) as info:
        await make().complete(request(), timeout=5)
    assert info.value.status == status and info.value.retry_after == retry_after
    assert info.value.provider_message == f"Anthropic says {status} (key [redacted])"
    for text in (str(info.value), repr(info.value), str(info.value.args)):
        assert KEY not in text
    assert len(httpx_mock.get_requests()) == 1  # no retry here: failover decides


async def test_timeouts_connection_errors_and_bad_replies(httpx_mock: HTTPXMock, make: Make) -> None:
    adapter = make()
    httpx_mock.add_exception(httpx.ReadTimeout("timed out"), url=URL)
    with pytest.raises(ProviderTimeout):
        await adapter.complete(request(), timeout=5)
    httpx_mock.add_exception(httpx.ConnectError("Connection refused"), url=URL)
    with pytest.raises(ProviderUnavailable, match="ConnectError"):
        await adapter.complete(request(), timeout=5)
    httpx_mock.add_response(url=URL, json={"id": "msg", "type": "message"})
    with pytest.raises(ProviderBadResponse):
        await adapter.complete(request(), timeout=5)
    httpx_mock.add_response(url=URL, content=b"{not json", headers={"content-type": "application/json"})
    with pytest.raises(ProviderBadResponse):
        await adapter.complete(request(), timeout=5)
    assert KEY not in repr(adapter) and adapter.in_flight == 0


# --- streaming ---------------------------------------------------------------------------------------


async def test_stream_text_then_usage(httpx_mock: HTTPXMock, make: Make) -> None:
    stream_response(httpx_mock, sse(START, *text_events("Hel", "lo", "!"), *END))
    chunks = await collect(make())
    assert [c.text for c in chunks[:-1]] == ["Hel", "lo", "!"]
    final = chunks[-1]
    assert final.finish_reason == "stop" and final.id == "msg_s" and final.model == "claude-3-5-haiku-20241022"
    assert final.usage is not None and (final.usage.prompt_tokens, final.usage.completion_tokens) == (25, 7)
    assert json.loads(httpx_mock.get_request().content)["stream"] is True  # type: ignore[union-attr]


async def test_a_stream_whose_headers_say_no_request_is_left_carries_when_they_reset(
        httpx_mock: HTTPXMock, make: Make) -> None:
    from datetime import UTC, datetime, timedelta

    reset = (datetime.now(UTC) + timedelta(seconds=42)).isoformat()
    httpx_mock.add_response(url=URL, stream=IteratorStream(sse(START, *text_events("Hi"), *END)), headers={
        "content-type": "text/event-stream", "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": reset})
    chunks = await collect(make())
    assert all(c.limit_reset_s is None for c in chunks[:-1])
    assert chunks[-1].is_final and chunks[-1].limit_reset_s == pytest.approx(42, abs=2)


async def test_stream_tool_use_becomes_tool_call_deltas(httpx_mock: HTTPXMock, make: Make) -> None:
    stream_response(httpx_mock, sse(START, *text_events("Looking."), {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1,
         "content_block": {"type": "tool_use", "id": "toolu_9", "name": "lookup", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"q": '}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '"x"}'}},
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
         "usage": {"output_tokens": 30}},
        {"type": "message_stop"}))
    chunks = await collect(make(), request(tools=TOOLS))
    assert chunks[0].text == "Looking."
    assert [c.tool_calls for c in chunks[1:-1]] == [
        [{"index": 0, "id": "toolu_9", "type": "function", "function": {"name": "lookup", "arguments": ""}}],
        [{"index": 0, "function": {"arguments": '{"q": '}}],
        [{"index": 0, "function": {"arguments": '"x"}'}}]]
    assert chunks[-1].finish_reason == "tool_calls"


async def test_stream_cut_before_the_first_token(httpx_mock: HTTPXMock, make: Make) -> None:
    stream_response(httpx_mock, broken(sse(START, {"type": "ping"})))
    received: list[Chunk] = []
    with pytest.raises(ProviderStreamCut) as info:
        async for chunk in make().stream(request(), timeout=5):
            received.append(chunk)
    assert received == [] and info.value.retryable  # nothing reached the caller: it may fail over


async def test_stream_cut_after_the_first_token(httpx_mock: HTTPXMock, make: Make) -> None:
    stream_response(httpx_mock, broken(sse(START, *text_events("Hel", "lo"))))
    received: list[str] = []
    with pytest.raises(ProviderStreamCut):
        async for chunk in make().stream(request(), timeout=5):
            received.append(chunk.text)
    assert received == ["Hel", "lo"]


async def test_stream_ending_without_a_stop_is_cut_and_losing_only_message_stop_is_not(
        httpx_mock: HTTPXMock, make: Make) -> None:
    stream_response(httpx_mock, sse(START, *text_events("Half")))
    with pytest.raises(ProviderStreamCut):
        await collect(make())
    stream_response(httpx_mock, broken(sse(START, *text_events("Whole."), *END[:2])))
    chunks = await collect(make())
    assert chunks[0].text == "Whole." and chunks[-1].finish_reason == "stop"


@pytest.mark.parametrize(("kind", "error"), [("overloaded_error", ProviderUnavailable),
                                             ("rate_limit_error", ProviderRateLimited),
                                             ("invalid_request_error", ProviderClientError)])
async def test_stream_error_events_are_mapped(httpx_mock: HTTPXMock, make: Make, kind: str,
                                              error: type[ProviderError]) -> None:
    stream_response(httpx_mock, sse(START, *text_events("Hel"), {"type": "error", "error": {
        "type": kind, "message": "Overloaded"}}))
    with pytest.raises(error, match="Overloaded"):
        await collect(make())


async def test_stream_http_errors_raise_from_the_first_step(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, status_code=529, json={"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}})
    adapter = make(max_concurrency=1)
    with pytest.raises(ProviderUnavailable) as info:
        await adapter.stream(request(), timeout=5).__anext__()
    assert info.value.status == 529 and adapter.in_flight == 0
