"""The native Gemini adapter against Gemini's HTTP API, faked at the transport by pytest-httpx.

Each adapter is given httpx2's stock transport (the one pytest-httpx answers for) in place
of the providers' pool, exactly as the OpenAI-compatible adapter's tests do.
"""

from __future__ import annotations

import json
import logging
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
    EmbeddingRequest,
    ProviderAuthError,
    ProviderBadResponse,
    ProviderClientError,
    ProviderUnsupported,
    ProviderError,
    ProviderRateLimited,
    ProviderStreamCut,
    ProviderTimeout,
    ProviderUnavailable,
    tokens,
)
from core.providers.gemini import GeminiAdapter
from core.providers.registry import build_adapter

KEY = "AIza-test-7d3f0c2e9b-SECRET-GEMINI-KEY"
BASE = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash"
URL = BASE + ":generateContent"
STREAM_URL = BASE + ":streamGenerateContent?alt=sse"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello to the tests."}]
USAGE = {"promptTokenCount": 9, "candidatesTokenCount": 4, "totalTokenCount": 13}
LOOKUP = {"type": "function", "function": {
    "name": "lookup", "description": "Find a city's weather.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}

Make = Callable[..., GeminiAdapter]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    made: list[GeminiAdapter] = []

    def _make(*, key: str | None = KEY, **fields: Any) -> GeminiAdapter:
        fields.setdefault("name", "gemini")
        spec = DeploymentSpec(provider="gemini", **fields)
        if key is not None:
            spec = spec.model_copy(update={"api_key": SecretStr(key)})
        adapter = build_adapter(spec, transport=httpx.AsyncHTTPTransport())
        assert isinstance(adapter, GeminiAdapter)
        made.append(adapter)
        return adapter

    yield _make
    for adapter in made:
        await adapter.aclose()


def reply(*parts: dict[str, Any], finish: str = "STOP", usage: dict[str, Any] | None = USAGE) -> dict[str, Any]:
    body: dict[str, Any] = {
        "candidates": [{"content": {"role": "model", "parts": list(parts) or [{"text": "Hello, tests!"}]},
                        "finishReason": finish, "index": 0}],
        "modelVersion": "gemini-2.0-flash-001",
        "responseId": "resp-123",
    }
    if usage is not None:
        body["usageMetadata"] = usage
    return body


def request(**fields: Any) -> ChatRequest:
    fields.setdefault("messages", MESSAGES)
    return ChatRequest(**fields)


def sent_body(httpx_mock: HTTPXMock) -> dict[str, Any]:
    sent = httpx_mock.get_request()
    assert sent is not None
    return json.loads(sent.content)


def sse(*events: dict[str, Any]) -> list[bytes]:
    return [f"data: {json.dumps(e)}\r\n\r\n".encode() for e in events]


def piece(text: str | None = None, finish: str | None = None, usage: dict[str, Any] | None = None,
          parts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts if parts is not None else
                                             ([{"text": text}] if text is not None else [])}}
    if finish:
        candidate["finishReason"] = finish
    event: dict[str, Any] = {"candidates": [candidate], "modelVersion": "gemini-2.0-flash-001",
                             "responseId": "resp-s1"}
    if usage:
        event["usageMetadata"] = usage
    return event


def stream_response(httpx_mock: HTTPXMock, parts: Iterator[bytes] | list[bytes]) -> None:
    httpx_mock.add_response(url=STREAM_URL, headers={"content-type": "text/event-stream"},
                            stream=IteratorStream(parts))


def _broken(parts: list[bytes]) -> Iterator[bytes]:
    yield from parts
    raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


async def collect(adapter: GeminiAdapter, req: ChatRequest | None = None) -> list[Chunk]:
    return [chunk async for chunk in adapter.stream(req or request(), timeout=5)]


def error(code: int, status: str, message: str, *details: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        body["details"] = list(details)
    return {"error": body}


# --- configuration ----------------------------------------------------------------------------


def test_a_gemini_deployment_is_native_by_default_and_the_compat_layer_is_still_reachable() -> None:
    native = DeploymentSpec(name="g", provider="gemini")
    assert (native.kind, native.base_url, native.drop_params) == (
        "gemini", "https://generativelanguage.googleapis.com", [])
    assert DeploymentSpec(name="k", kind="gemini").provider == "gemini"
    compat = DeploymentSpec(name="c", provider="gemini", kind="openai_compatible")
    assert compat.base_url == "https://generativelanguage.googleapis.com/v1beta/openai/"
    assert "seed" in compat.drop_params
    embed = DeploymentSpec(name="e", provider="gemini", model="gemini-embedding-001", serves=["embeddings"])
    assert embed.serves == ("embeddings",) and embed.price_input_per_1k > 0
    with pytest.raises(ValueError, match="set kind = 'openai_compatible' to use it"):
        DeploymentSpec(name="old", provider="gemini", base_url="https://generativelanguage.googleapis.com/v1beta/openai/")


# --- plain calls ------------------------------------------------------------------------------


async def test_success_the_body_the_key_header_and_the_usage(httpx_mock: HTTPXMock, make: Make,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    httpx_mock.add_response(url=URL, method="POST", json=reply())
    adapter = make()
    completion = await adapter.complete(request(max_tokens=50, temperature=0.2, top_p=0.9, stop="\n\n", seed=7,
                                                extra={"presence_penalty": 0.1, "user": "u1", "n": 1}),
                                        timeout=5)

    assert completion.text == "Hello, tests!"
    assert (completion.model, completion.id, completion.finish_reason) == ("gemini-2.0-flash-001", "resp-123", "stop")
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.source) == (9, 4, 13, "provider")
    assert adapter.spec.cost(usage) == pytest.approx((9 * 0.0001 + 4 * 0.0004) / 1000)

    sent = httpx_mock.get_request()
    assert sent is not None
    assert sent.headers["x-goog-api-key"] == KEY
    assert KEY not in str(sent.url) and "key=" not in str(sent.url)
    assert "authorization" not in sent.headers
    assert json.loads(sent.content) == {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "Say hello to the tests."}]}],
        "generationConfig": {"maxOutputTokens": 50, "temperature": 0.2, "topP": 0.9, "seed": 7,
                             "presencePenalty": 0.1, "stopSequences": ["\n\n"]},
    }
    assert KEY not in caplog.text


async def test_thinking_tokens_count_as_completion(httpx_mock: HTTPXMock, make: Make) -> None:
    usage = {"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 20, "totalTokenCount": 35}
    httpx_mock.add_response(url=URL.replace("2.0", "2.5"), json=reply(
        {"text": "thinking...", "thought": True}, {"text": "42"}, usage=usage))
    completion = await make(model="gemini-2.5-flash").complete(request(), timeout=5)
    assert completion.text == "42"  # the thought summary is not the answer
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (10, 25)
    assert completion.usage.total_tokens == 35


async def test_usage_missing_is_counted(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, json=reply({"text": "No usage came with this."}, usage=None))
    completion = await make().complete(request(), timeout=5)
    assert completion.usage.counted
    assert completion.usage.prompt_tokens == tokens.count_messages(MESSAGES, "gemini-2.0-flash")


async def test_deployment_params_are_merged_and_the_request_wins(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, json=reply())
    params = {"safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
              "generationConfig": {"temperature": 1.0, "thinkingConfig": {"thinkingBudget": 0}}}
    await make(params=params, drop_params=["seed"]).complete(request(temperature=0.3, seed=4), timeout=5)
    body = sent_body(httpx_mock)
    assert body["safetySettings"] == params["safetySettings"]
    assert body["generationConfig"] == {"temperature": 0.3, "thinkingConfig": {"thinkingBudget": 0}}


async def test_images_become_inline_data_and_urls_are_refused(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, json=reply())
    image = [{"type": "text", "text": "What is this?"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    adapter = make()
    await adapter.complete(request(messages=[{"role": "user", "content": image}]), timeout=5)
    assert sent_body(httpx_mock)["contents"] == [{"role": "user", "parts": [
        {"text": "What is this?"}, {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}]}]

    remote = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(ProviderClientError, match=r"messages\[0\]\.content\[0\]: an image by URL"):
        await adapter.complete(request(messages=[{"role": "user", "content": remote}]), timeout=5)
    assert len(httpx_mock.get_requests()) == 1  # refused before anything was sent


# --- tools --------------------------------------------------------------------------------------


async def test_tools_and_tool_choice_are_translated(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, json=reply(), is_reusable=True)
    adapter = make()
    choices = ["auto", "none", "required", {"type": "function", "function": {"name": "lookup"}}]
    for choice in choices:
        await adapter.complete(request(tools=[LOOKUP], extra={"tool_choice": choice}), timeout=5)
    bodies = [json.loads(r.content) for r in httpx_mock.get_requests()]
    assert bodies[0]["tools"] == [{"functionDeclarations": [{
        "name": "lookup", "description": "Find a city's weather.",
        "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]}}]}]
    assert [b["toolConfig"]["functionCallingConfig"] for b in bodies] == [
        {"mode": "AUTO"}, {"mode": "NONE"}, {"mode": "ANY"}, {"mode": "ANY", "allowedFunctionNames": ["lookup"]}]


async def test_a_function_call_comes_back_as_an_openai_tool_call(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, json=reply({"functionCall": {"name": "lookup", "args": {"city": "Paris"}}}))
    completion = await make().complete(request(tools=[LOOKUP]), timeout=5)
    assert completion.text == "" and completion.finish_reason == "tool_calls"
    (call,) = completion.tool_calls or []
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "lookup" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}


async def test_a_tool_round_trip_is_sent_as_function_call_and_response(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, json=reply({"text": "It is sunny in Paris."}))
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "lookup", "arguments": '{"city": "Paris"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "forecast", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": '{"sky": "sunny"}'},
        {"role": "tool", "tool_call_id": "call_b", "content": "rain"},
    ]
    completion = await make().complete(request(messages=messages, tools=[LOOKUP]), timeout=5)
    assert completion.text == "It is sunny in Paris." and completion.finish_reason == "stop"
    assert sent_body(httpx_mock)["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {"city": "Paris"}}},
                                    {"functionCall": {"name": "forecast", "args": {"city": "Rome"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "lookup", "response": {"sky": "sunny"}}},
                                   {"functionResponse": {"name": "forecast", "response": {"output": "rain"}}}]},
    ]


async def test_a_tool_message_answering_no_call_is_refused(make: Make) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]
    with pytest.raises(ProviderClientError, match="call_x"):
        await make().complete(request(messages=messages), timeout=5)


async def test_schemas_are_inlined_and_stripped_where_safe(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, json=reply())
    parameters = {  # as pydantic writes it
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "title": "Args",
        "$defs": {"Unit": {"type": "string", "enum": ["C", "F"]}},
        "properties": {
            "city": {"type": "string", "examples": ["Paris"]},
            "unit": {"$ref": "#/$defs/Unit", "description": "degrees"},
            "days": {"anyOf": [{"type": "integer", "exclusiveMinimum": 0}, {"type": "null"}], "default": None},
            "tags": {"type": ["array", "null"], "items": {"type": "string"}, "uniqueItems": False},
        },
        "required": ["city"], "additionalProperties": False,
    }
    tool = {"type": "function", "function": {"name": "weather", "parameters": parameters}}
    empty = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}
    await make().complete(request(tools=[tool, empty]), timeout=5)
    declarations = sent_body(httpx_mock)["tools"][0]["functionDeclarations"]
    assert declarations[0]["parameters"] == {
        "type": "OBJECT", "title": "Args", "required": ["city"],
        "properties": {
            "city": {"type": "STRING"},
            "unit": {"type": "STRING", "enum": ["C", "F"], "description": "degrees"},
            "days": {"type": "INTEGER", "minimum": 1, "nullable": True, "default": None},
            "tags": {"type": "ARRAY", "nullable": True, "items": {"type": "STRING"}},
        },
    }
    assert declarations[1] == {"name": "now"}  # no parameters: Gemini refuses an empty object schema


@pytest.mark.parametrize(("schema", "expected"), [
    ({"type": "object", "properties": {"m": {"type": "object", "additionalProperties": {"type": "number"}}}},
     r"properties\.m: 'additionalProperties' has no Gemini equivalent"),
    ({"type": "object", "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
      "properties": {"head": {"$ref": "#/$defs/Node"}}}, r"properties\.head\.properties\.next: \$ref .* is recursive"),
    ({"type": "object", "properties": {"x": {"$ref": "https://example.com/x.json"}}}, "not a reference to"),
    ({"type": "object", "properties": {"n": {"type": "number", "multipleOf": 0.5}}}, "'multipleOf'"),
    ({"type": "object", "properties": {"n": {"not": {"type": "string"}}}}, "'not'"),
    ({"type": "object", "properties": {"v": {"type": ["string", "number"]}}}, "several types"),
    ({"type": "object", "properties": {"level": {"type": "integer", "enum": [1, 2]}}}, "string values only"),
    ({"type": "object", "properties": {"meta": {"type": "object"}}}, "free-form map"),
    ({"type": "object", "properties": {"pair": {"type": "array", "prefixItems": [{"type": "string"}]}}},
     "'prefixItems'"),
])
async def test_schema_keywords_gemini_cannot_hold_are_refused(make: Make, schema: dict[str, Any],
                                                              expected: str) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    with pytest.raises(ProviderClientError, match=expected) as info:
        await make().complete(request(tools=[tool]), timeout=5)
    assert isinstance(info.value, ProviderUnsupported) and info.value.retryable  # another protocol may hold it
    assert str(info.value).startswith("gemini: cannot be sent to Gemini: tools[0] (f).parameters")


# --- structured output --------------------------------------------------------------------------


async def test_structured_output_sends_the_json_schema_as_it_is(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, json=reply({"text": '{"colour": "red"}'}), is_reusable=True)
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"],
              "additionalProperties": False}
    adapter = make()
    completion = await adapter.complete(request(response_format={
        "type": "json_schema", "json_schema": {"name": "c", "schema": schema, "strict": True}}), timeout=5)
    await adapter.complete(request(response_format={"type": "json_object"}), timeout=5)
    assert json.loads(completion.text) == {"colour": "red"}
    first, second = (json.loads(r.content)["generationConfig"] for r in httpx_mock.get_requests())
    assert first == {"responseMimeType": "application/json", "responseJsonSchema": schema}
    assert second == {"responseMimeType": "application/json"}


# --- finish reasons and blocks ------------------------------------------------------------------


@pytest.mark.parametrize(("finish", "expected"), [("MAX_TOKENS", "length"), ("SAFETY", "content_filter"),
                                                  ("RECITATION", "content_filter"), ("STOP", "stop")])
async def test_finish_reasons(httpx_mock: HTTPXMock, make: Make, finish: str, expected: str) -> None:
    httpx_mock.add_response(url=URL, json=reply({"text": "partial"}, finish=finish))
    assert (await make().complete(request(), timeout=5)).finish_reason == expected


async def test_a_blocked_prompt_is_a_client_error_with_the_reason(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, json={"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": USAGE})
    with pytest.raises(ProviderClientError, match=r"blocked the prompt \(SAFETY\)") as info:
        await make().complete(request(), timeout=5)
    assert not info.value.retryable


async def test_a_malformed_function_call_is_a_bad_response(httpx_mock: HTTPXMock, make: Make) -> None:
    body = reply(finish="MALFORMED_FUNCTION_CALL")
    body["candidates"][0].pop("content")
    httpx_mock.add_response(url=URL, json=body)
    with pytest.raises(ProviderBadResponse):
        await make().complete(request(), timeout=5)


@pytest.mark.parametrize("response", [
    {"json": {"modelVersion": "x"}},  # no candidates
    {"json": ["not", "an", "object"]},
    {"content": b"<html>Bad gateway page</html>", "headers": {"content-type": "text/html"}},
])
async def test_unexpected_shapes_are_bad_response(httpx_mock: HTTPXMock, make: Make, response: dict) -> None:
    httpx_mock.add_response(url=URL, **response)
    with pytest.raises(ProviderBadResponse):
        await make().complete(request(), timeout=5)


# --- errors ---------------------------------------------------------------------------------------


async def test_429_with_retry_info_is_rate_limited(httpx_mock: HTTPXMock, make: Make) -> None:
    retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}
    httpx_mock.add_response(url=URL, status_code=429, json=error(
        429, "RESOURCE_EXHAUSTED", "You exceeded your current quota.", retry))
    with pytest.raises(ProviderRateLimited) as info:
        await make().complete(request(), timeout=5)
    assert info.value.retry_after == 37.0 and info.value.status == 429
    assert "You exceeded your current quota." in str(info.value)


async def test_429_retry_after_header_wins(httpx_mock: HTTPXMock, make: Make) -> None:
    retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}
    httpx_mock.add_response(url=URL, status_code=429, headers={"retry-after": "2"},
                            json=error(429, "RESOURCE_EXHAUSTED", "slow down", retry))
    with pytest.raises(ProviderRateLimited) as info:
        await make().complete(request(), timeout=5)
    assert info.value.retry_after == 2.0


@pytest.mark.parametrize(("status", "grpc"), [(500, "INTERNAL"), (503, "UNAVAILABLE")])
async def test_5xx_is_unavailable(httpx_mock: HTTPXMock, make: Make, status: int, grpc: str) -> None:
    httpx_mock.add_response(url=URL, status_code=status, json=error(status, grpc, "The model is overloaded."))
    with pytest.raises(ProviderUnavailable) as info:
        await make().complete(request(), timeout=5)
    assert info.value.retryable and info.value.status == status
    assert len(httpx_mock.get_requests()) == 1  # no retry of our own: failover decides


@pytest.mark.parametrize(("status", "body"), [
    (401, error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")),
    (403, error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers.")),
    (404, error(404, "NOT_FOUND", "models/gemini-9 is not found for API version v1beta.")),
    (400, error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"})),
    (400, error(400, "FAILED_PRECONDITION", "User location is not supported for the API use.")),
])
async def test_key_model_or_region_problems_are_auth_errors(httpx_mock: HTTPXMock, make: Make, status: int,
                                                            body: dict[str, Any]) -> None:
    httpx_mock.add_response(url=URL, status_code=status, json=body)
    with pytest.raises(ProviderAuthError) as info:
        await make().complete(request(), timeout=5)
    assert info.value.retryable and info.value.status == status
    assert info.value.provider_message == body["error"]["message"]


async def test_400_is_a_client_error_with_geminis_message(httpx_mock: HTTPXMock, make: Make) -> None:
    message = "* GenerateContentRequest.contents: contents is not specified"
    httpx_mock.add_response(url=URL, status_code=400, json=error(400, "INVALID_ARGUMENT", message))
    with pytest.raises(ProviderClientError) as info:
        await make().complete(request(), timeout=5)
    assert not info.value.retryable and info.value.status == 400 and info.value.provider_message == message
    assert message in str(info.value)


async def test_the_key_never_appears_in_errors(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=URL, status_code=400, json=error(400, "INVALID_ARGUMENT", f"bad request {KEY}"))
    adapter = make()
    with pytest.raises(ProviderError) as info:
        await adapter.complete(request(), timeout=5)
    for text in (str(info.value), repr(info.value), str(info.value.provider_message), str(info.value.args)):
        assert KEY not in text
    assert "[redacted]" in str(info.value)
    assert KEY not in repr(adapter) and KEY not in repr(adapter.spec) and KEY not in str(adapter.spec.describe())


async def test_read_timeout_and_connection_errors(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_exception(httpx.ReadTimeout("timed out"), url=URL)
    httpx_mock.add_exception(httpx.ConnectError("Connection refused"), url=URL)
    adapter = make()
    with pytest.raises(ProviderTimeout):
        await adapter.complete(request(), timeout=5)
    with pytest.raises(ProviderUnavailable, match="ConnectError"):
        await adapter.complete(request(), timeout=5)
    assert adapter.in_flight == 0


# --- streaming --------------------------------------------------------------------------------


async def test_stream_text_then_a_final_chunk_with_usage(httpx_mock: HTTPXMock, make: Make) -> None:
    stream_response(httpx_mock, sse(
        piece("Hel", usage={"promptTokenCount": 9}),
        piece("lo", usage={"promptTokenCount": 9, "candidatesTokenCount": 2, "totalTokenCount": 11}),
        piece("!", finish="STOP", usage={"promptTokenCount": 9, "candidatesTokenCount": 3, "totalTokenCount": 12}),
    ))
    chunks = await collect(make())
    assert [c.text for c in chunks[:-1]] == ["Hel", "lo", "!"]
    final = chunks[-1]
    assert final.is_final and final.text == "" and final.finish_reason == "stop"
    assert (final.model, final.id) == ("gemini-2.0-flash-001", "resp-s1")
    assert final.usage is not None and (final.usage.prompt_tokens, final.usage.completion_tokens) == (9, 3)
    sent = httpx_mock.get_request()
    assert sent is not None and sent.headers["x-goog-api-key"] == KEY and KEY not in str(sent.url)
    assert sent.url.params["alt"] == "sse"


async def test_stream_function_calls_become_tool_call_deltas(httpx_mock: HTTPXMock, make: Make) -> None:
    stream_response(httpx_mock, sse(
        piece(parts=[{"functionCall": {"name": "lookup", "args": {"city": "Paris"}}}]),
        piece(parts=[{"functionCall": {"name": "lookup", "args": {"city": "Rome"}}}], finish="STOP", usage=USAGE),
    ))
    chunks = await collect(make(), request(tools=[LOOKUP]))
    deltas = [call for chunk in chunks[:-1] for call in chunk.tool_calls or ()]
    assert [d["index"] for d in deltas] == [0, 1]
    assert [json.loads(d["function"]["arguments"]) for d in deltas] == [{"city": "Paris"}, {"city": "Rome"}]
    assert all(d["id"].startswith("call_") and d["function"]["name"] == "lookup" for d in deltas)
    assert chunks[-1].finish_reason == "tool_calls"


async def test_stream_without_usage_is_counted(httpx_mock: HTTPXMock, make: Make) -> None:
    stream_response(httpx_mock, sse(piece("Counted "), piece("reply.", finish="STOP")))
    usage = (await collect(make()))[-1].usage
    assert usage is not None and usage.counted
    assert usage.completion_tokens == tokens.count_text("Counted reply.", "gemini-2.0-flash")


async def test_stream_cut_before_the_first_token(httpx_mock: HTTPXMock, make: Make) -> None:
    stream_response(httpx_mock, _broken(sse(piece(parts=[], usage={"promptTokenCount": 9}))))
    received: list[Chunk] = []
    with pytest.raises(ProviderStreamCut) as info:
        async for chunk in make().stream(request(), timeout=5):
            received.append(chunk)
    assert received == [] and info.value.retryable


async def test_stream_cut_after_the_first_token(httpx_mock: HTTPXMock, make: Make) -> None:
    stream_response(httpx_mock, _broken(sse(piece("Hel"), piece("lo"))))
    received: list[str] = []
    with pytest.raises(ProviderStreamCut) as info:
        async for chunk in make().stream(request(), timeout=5):
            received.append(chunk.text)
    assert received == ["Hel", "lo"] and info.value.error_class == "stream_cut"


async def test_stream_that_ends_without_a_finish_reason_is_cut(httpx_mock: HTTPXMock, make: Make) -> None:
    stream_response(httpx_mock, sse(piece("Half a rep")))
    with pytest.raises(ProviderStreamCut):
        await collect(make())


async def test_stream_broken_after_the_finish_reason_still_finishes(httpx_mock: HTTPXMock, make: Make) -> None:
    stream_response(httpx_mock, _broken(sse(piece("Complete.", finish="STOP", usage=USAGE))))
    chunks = await collect(make())
    assert chunks[0].text == "Complete." and chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 13


async def test_stream_errors(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=STREAM_URL, status_code=429, json=error(
        429, "RESOURCE_EXHAUSTED", "slow down", {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                                 "retryDelay": "1.5s"}))
    stream_response(httpx_mock, sse(piece("Hel"), error(503, "UNAVAILABLE", "Overloaded")))
    stream_response(httpx_mock, [*sse(piece("ok")), b"data: {not json\r\n\r\n"])
    adapter = make()
    with pytest.raises(ProviderRateLimited) as info:
        await adapter.stream(request(), timeout=5).__anext__()
    assert info.value.retry_after == 1.5
    with pytest.raises(ProviderUnavailable, match="Overloaded"):
        await collect(adapter)
    with pytest.raises(ProviderBadResponse):
        await collect(adapter)
    assert adapter.in_flight == 0


async def test_abandoned_stream_releases_its_slot(httpx_mock: HTTPXMock, make: Make) -> None:
    stream_response(httpx_mock, sse(piece("a"), piece("b"), piece(finish="STOP")))
    adapter = make(max_concurrency=1)
    iterator = adapter.stream(request(), timeout=5)
    assert (await iterator.__anext__()).text == "a"
    assert adapter.in_flight == 1
    await iterator.aclose()  # type: ignore[attr-defined]
    assert adapter.in_flight == 0


# --- embeddings ---------------------------------------------------------------------------------


EMBED_URL = "https://generativelanguage.googleapis.com/v1beta/models/gemini-embedding-001:batchEmbedContents"


async def test_embeddings_in_input_order_with_counted_usage(httpx_mock: HTTPXMock, make: Make) -> None:
    texts = [f"text number {i}" for i in range(150)]
    httpx_mock.add_response(url=EMBED_URL, json={"embeddings": [{"values": [i, 0.5]} for i in range(100)]})
    httpx_mock.add_response(url=EMBED_URL, json={"embeddings": [{"values": [i, 0.5]} for i in range(100, 150)]})
    adapter = make(model="gemini-embedding-001", serves=["embeddings"])
    result = await adapter.embed(EmbeddingRequest(input=texts, dimensions=2), timeout=5)

    assert [v[0] for v in result.vectors] == [float(i) for i in range(150)]
    assert result.model == "gemini-embedding-001"
    assert result.usage.counted and result.usage.prompt_tokens == tokens.counted_input(texts).prompt_tokens
    first, second = httpx_mock.get_requests()
    assert first.headers["x-goog-api-key"] == KEY and KEY not in str(first.url)
    body = json.loads(first.content)
    assert len(body["requests"]) == 100 and len(json.loads(second.content)["requests"]) == 50
    assert body["requests"][0] == {"model": "models/gemini-embedding-001", "outputDimensionality": 2,
                                   "content": {"parts": [{"text": "text number 0"}]}}


async def test_embeddings_of_the_wrong_count_are_a_bad_response(httpx_mock: HTTPXMock, make: Make) -> None:
    httpx_mock.add_response(url=EMBED_URL, json={"embeddings": [{"values": [1.0]}]})
    adapter = make(model="gemini-embedding-001", serves=["embeddings"])
    with pytest.raises(ProviderBadResponse, match="1 embeddings for 2 inputs"):
        await adapter.embed(EmbeddingRequest(input=["a", "b"]), timeout=5)
