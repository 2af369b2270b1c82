"""POST /v1/messages as real clients see it: the anthropic SDK (sync, async, streaming, a
tool round trip) and LangChain's ChatAnthropic against the gateway over loopback, served
by every family — the simulated deployment offline, an OpenAI-style one and the native
Anthropic one faked at their HTTP boundary — and the reverse: the openai SDK's chat
requests served by the native Anthropic deployment. Every Messages answer and event is
parsed by the anthropic SDK's own types, strictly."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter
from pytest_httpx import HTTPXMock, IteratorStream

from core.auth import create_key
from core.settings import Settings
from functions.gateway import build_app
from tests.conftest import providers_file
from tests.fake_openai import FakeOpenAI
from tests.servers import serve

ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"
OPENAI_URL = "https://api.openai.com/v1/chat/completions"
SIM = {"latency_ms": 1, "ms_per_token": 0, "jitter": 0, "seed": 3, "reply_tokens": 12}
HELLO = [{"role": "user", "content": "Name three colours."}]
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
LOOPBACK = pytest.mark.httpx_mock(should_mock=lambda request: request.url.host != "127.0.0.1")


def sim(name: str, priority: int = 100) -> dict[str, Any]:
    return {"name": name, "kind": "simulated", "priority": priority, "simulation": SIM}


NATIVE = {"name": "claude", "provider": "anthropic", "priority": 1}
OPENAI = {"name": "gpt", "provider": "openai", "priority": 2}


# --- the SDK's own types, strictly -----------------------------------------------------------------


def check_message(payload: dict[str, Any]) -> Any:
    from anthropic.types import Message

    message = Message.model_validate(payload, strict=True)
    assert set(payload) <= set(Message.model_fields) and set(payload["usage"]) <= set(type(message.usage).model_fields)
    for block, parsed in zip(payload["content"], message.content, strict=True):
        assert set(block) <= set(type(parsed).model_fields)
    return message


def check_events(text: str) -> list[Any]:
    """Every event of an Anthropic stream, parsed by the SDK's event types (error events
    by its ErrorResponse), the `event:` line agreeing with the data's type."""
    from anthropic.types import ErrorResponse, RawMessageStreamEvent

    adapter: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        if data["type"] == "ping":  # no SDK type: the SDK skips pings
            assert data == {"type": "ping"}
            events.append(SimpleNamespace(type="ping"))
        elif data["type"] == "error":
            events.append(ErrorResponse.model_validate(data, strict=True))
        else:
            event = adapter.validate_python(data, strict=True)
            assert set(data) <= set(type(event).model_fields)
            events.append(event)
    return events


def kinds(events: list[Any]) -> list[str]:
    return [e.type for e in events]


# --- servers --------------------------------------------------------------------------------------


@pytest.fixture
def base_url(gateway_settings: Settings) -> Iterator[str]:
    """The gateway over loopback, its default simulated deployment answering."""
    with serve(build_app(settings=gateway_settings)) as url:
        yield url


@pytest.fixture
def mocked_gateway(gateway_settings: Settings, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> Callable[..., AbstractContextManager[str]]:
    """`with mocked_gateway(deployments) as url:` the gateway over loopback, its provider
    calls on httpx2's stock transport (which pytest-httpx answers) instead of the pool."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")
    monkeypatch.setattr("core.providers.http_pool.transport_for", lambda url, *, limits: httpx.AsyncHTTPTransport())

    @contextmanager
    def _serve(deployments: list[dict[str, Any]], **settings: Any) -> Iterator[str]:
        path = providers_file(tmp_path, deployments)
        own = gateway_settings.model_copy(update={"ORCHESITY_PROVIDERS_FILE": path,
                                                  "DWA_ROUTING_STRATEGY": "priority", **settings})
        with serve(build_app(settings=own)) as url:
            yield url

    return _serve


def anthropic_reply(*content: dict[str, Any], stop: str = "end_turn") -> dict[str, Any]:
    return {"id": "msg_native", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022",
            "content": list(content), "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": 30, "output_tokens": 9}}


def openai_reply(content: str | None, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}],
            "usage": {"prompt_tokens": 21, "completion_tokens": 6, "total_tokens": 27}}


def sse(*events: dict[str, Any]) -> list[bytes]:
    return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]


NATIVE_START = {"type": "message_start", "message": {
    "id": "msg_s", "type": "message", "role": "assistant", "content": [], "model": "claude-3-5-haiku-20241022",
    "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 20, "output_tokens": 1}}}


def native_text(*pieces: str) -> list[dict[str, Any]]:
    return [{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}} for p in pieces)]


NATIVE_END = [{"type": "content_block_stop", "index": 0},
              {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
               "usage": {"output_tokens": 5}},
              {"type": "message_stop"}]


def broken(parts: list[bytes]) -> Iterator[bytes]:
    yield from parts
    raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


# --- offline: the simulated deployment ------------------------------------------------------------


async def test_simulated_answers_messages_plain_streamed_and_with_tools(open_gateway: Any) -> None:
    async with open_gateway() as gw:
        plain = await gw.client.post("/v1/messages", json={"model": "auto", "max_tokens": 100, "messages": HELLO,
                                                           "system": "Be brief."})
        streamed = await gw.client.post("/v1/messages", json={"model": "simulated", "max_tokens": 100,
                                                              "messages": HELLO, "stream": True})
        tools = {"model": "auto", "max_tokens": 100, "tools": [WEATHER],
                 "messages": [{"role": "user", "content": "Weather in Paris?"}]}
        called = await gw.client.post("/v1/messages", json=tools)
        called_streamed = await gw.client.post("/v1/messages", json={**tools, "stream": True})
    assert plain.status_code == 200, plain.text
    message = check_message(plain.json())
    assert message.id.startswith("msg_") and message.content[0].text and message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert plain.headers["x-orchesity-provider"] == "simulated" and plain.headers["request-id"].startswith("req_")

    events = check_events(streamed.text)
    assert kinds(events)[:3] == ["message_start", "ping", "content_block_start"]
    assert kinds(events)[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert events[-2].delta.stop_reason == "end_turn" and events[-2].usage.output_tokens > 0

    tool_message = check_message(called.json())
    assert tool_message.stop_reason == "tool_use"
    (use,) = [b for b in tool_message.content if b.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input["city"], str)
    events = check_events(called_streamed.text)
    starts = [e.content_block for e in events if e.type == "content_block_start"]
    assert starts[-1].type == "tool_use" and starts[-1].name == "get_weather"
    partial = "".join(e.delta.partial_json for e in events
                      if e.type == "content_block_delta" and e.delta.type == "input_json_delta")
    assert isinstance(json.loads(partial)["city"], str) and events[-2].delta.stop_reason == "tool_use"


def test_anthropic_sdk_sync_stream_and_a_tool_round_trip(base_url: str) -> None:
    import anthropic

    client = anthropic.Anthropic(base_url=base_url, api_key="unused", max_retries=0)
    message = client.messages.create(model="auto", max_tokens=64, messages=HELLO)
    assert message.content[0].type == "text" and message.content[0].text
    check_message(message.model_dump(mode="json", exclude_unset=True))

    with client.messages.stream(model="simulated", max_tokens=64, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text and final.usage.output_tokens > 0

    asked = client.messages.create(model="auto", max_tokens=64, tools=[WEATHER],  # type: ignore[list-item]
                                   messages=[{"role": "user", "content": "Weather in Oslo?"}])
    use = next(b for b in asked.content if b.type == "tool_use")
    answer = client.messages.create(model="auto", max_tokens=64, tools=[WEATHER],  # type: ignore[list-item]
                                    messages=[{"role": "user", "content": "Weather in Oslo?"},
                                              {"role": "assistant", "content": asked.content},  # type: ignore[typeddict-item]
                                              {"role": "user", "content": [{"type": "tool_result",
                                                                            "tool_use_id": use.id,
                                                                            "content": "Sunny, 21 C"}]}])
    assert answer.stop_reason == "end_turn" and "get_weather" in answer.content[0].text  # type: ignore[union-attr]

    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="no-such-model", max_tokens=8, messages=HELLO)
    assert "no-such-model" in str(info.value)
    assert client.messages.count_tokens(model="auto", messages=HELLO).input_tokens > 0


async def test_anthropic_sdk_async(base_url: str) -> None:
    import anthropic

    client = anthropic.AsyncAnthropic(base_url=base_url, api_key="unused", max_retries=0)
    message = await client.messages.create(model="auto", max_tokens=64, messages=HELLO)
    assert message.content[0].text  # type: ignore[union-attr]
    async with client.messages.stream(model="auto", max_tokens=64, messages=HELLO) as stream:
        pieces = [text async for text in stream.text_stream]
    assert "".join(pieces)
    await client.close()


def test_langchain_chat_anthropic(base_url: str) -> None:
    from langchain_anthropic import ChatAnthropic

    llm = ChatAnthropic(base_url=base_url, api_key="unused", model="auto", max_retries=0,  # type: ignore[arg-type]
                        max_tokens=64)
    reply = llm.invoke("Say something about routing.")
    assert reply.text and reply.usage_metadata and reply.usage_metadata["total_tokens"] > 0
    streamed = "".join(chunk.text for chunk in llm.stream("Stream it."))
    assert streamed


# --- across families -----------------------------------------------------------------------------------


@LOOPBACK
def test_anthropic_sdk_served_by_an_openai_deployment_with_a_tool_call(
        mocked_gateway: Any, httpx_mock: HTTPXMock) -> None:
    import anthropic

    call = {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}
    httpx_mock.add_response(url=OPENAI_URL, json=openai_reply(None, [call]))
    httpx_mock.add_response(url=OPENAI_URL, json=openai_reply("Rome is sunny."))
    with mocked_gateway([OPENAI]) as url:
        client = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)
        asked = client.messages.create(model="gpt", max_tokens=50, tools=[WEATHER],  # type: ignore[list-item]
                                       tool_choice={"type": "tool", "name": "get_weather"},
                                       messages=[{"role": "user", "content": "Weather in Rome?"}])
        answer = client.messages.create(model="gpt", max_tokens=50, tools=[WEATHER],  # type: ignore[list-item]
                                        messages=[{"role": "user", "content": "Weather in Rome?"},
                                                  {"role": "assistant", "content": asked.content},  # type: ignore[typeddict-item]
                                                  {"role": "user", "content": [{"type": "tool_result",
                                                                                "tool_use_id": "call_7",
                                                                                "content": "sunny"}]}])
    assert asked.stop_reason == "tool_use" and asked.content[0].type == "tool_use"
    assert (asked.content[0].id, asked.content[0].input) == ("call_7", {"city": "Rome"})
    assert answer.content[0].text == "Rome is sunny." and answer.usage.input_tokens == 21  # type: ignore[union-attr]
    first, second = (json.loads(r.content) for r in httpx_mock.get_requests())
    assert first["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER["input_schema"], "description": WEATHER["description"]}}]
    assert first["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert first["max_tokens"] == 50
    assert second["messages"][1]["tool_calls"][0]["id"] == "call_7"
    assert second["messages"][2] == {"role": "tool", "tool_call_id": "call_7", "content": "sunny"}


@LOOPBACK
def test_openai_sdk_served_by_the_native_anthropic_deployment_with_a_tool_call(
        mocked_gateway: Any, httpx_mock: HTTPXMock) -> None:
    import openai

    httpx_mock.add_response(url=ANTHROPIC_URL, json=anthropic_reply(
        {"type": "tool_use", "id": "toolu_3", "name": "get_weather", "input": {"city": "Lima"}}, stop="tool_use"))
    httpx_mock.add_response(url=ANTHROPIC_URL, json=anthropic_reply({"type": "text", "text": "Lima: foggy."}))
    stream_parts = sse(NATIVE_START, *native_text("Fog", "gy."), *NATIVE_END)
    httpx_mock.add_response(url=ANTHROPIC_URL, stream=IteratorStream(stream_parts),
                            headers={"content-type": "text/event-stream"})
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]}}]
    question = {"role": "user", "content": "Weather in Lima?"}
    with mocked_gateway([NATIVE]) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        asked = client.chat.completions.create(model="claude", messages=[question], tools=tools)  # type: ignore[list-item]
        call = asked.choices[0].message.tool_calls[0]  # type: ignore[index]
        answer = client.chat.completions.create(model="claude", tools=tools, messages=[  # type: ignore[list-item]
            question, asked.choices[0].message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "foggy"}])
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="anthropic", messages=[question], stream=True) if c.choices)
    assert asked.choices[0].finish_reason == "tool_calls" and call.id == "toolu_3"
    assert json.loads(call.function.arguments) == {"city": "Lima"}  # type: ignore[union-attr]
    assert answer.choices[0].message.content == "Lima: foggy." and answer.usage.prompt_tokens == 30  # type: ignore[union-attr]
    assert streamed == "Foggy."
    first, second, third = (r for r in httpx_mock.get_requests())
    assert first.headers["x-api-key"] == "sk-ant-test" and first.headers["anthropic-version"] == "2023-06-01"
    assert json.loads(first.content)["tools"] == [{"name": "get_weather", "input_schema": WEATHER["input_schema"]}]
    assert json.loads(second.content)["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_3", "name": "get_weather",
                                           "input": {"city": "Lima"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_3", "content": "foggy"}]}]
    assert json.loads(third.content)["stream"] is True


@LOOPBACK
def test_anthropic_sdk_streams_from_the_native_deployment(mocked_gateway: Any, httpx_mock: HTTPXMock) -> None:
    import anthropic

    tool_stream = [NATIVE_START,
                   {"type": "content_block_start", "index": 0, "content_block": {
                       "type": "tool_use", "id": "toolu_5", "name": "get_weather", "input": {}}},
                   {"type": "content_block_delta", "index": 0, "delta": {
                       "type": "input_json_delta", "partial_json": '{"city": "Oslo"}'}},
                   {"type": "content_block_stop", "index": 0},
                   {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                    "usage": {"output_tokens": 12}},
                   {"type": "message_stop"}]
    httpx_mock.add_response(url=ANTHROPIC_URL, stream=IteratorStream(sse(*tool_stream)),
                            headers={"content-type": "text/event-stream"})
    with mocked_gateway([NATIVE]) as url:
        client = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)
        with client.messages.stream(model="claude", max_tokens=50, tools=[WEATHER],  # type: ignore[list-item]
                                    messages=[{"role": "user", "content": "Oslo?"}]) as stream:
            final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.usage.output_tokens == 12
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "Oslo"}


async def test_chat_completions_fail_over_from_anthropic_to_openai(
        open_gateway: Any, tmp_path: Path, httpx_mock: HTTPXMock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")
    httpx_mock.add_response(url=ANTHROPIC_URL, status_code=529, json={
        "type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    httpx_mock.add_response(url=OPENAI_URL, json=openai_reply("From OpenAI."))
    path = providers_file(tmp_path, [NATIVE, OPENAI])
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, DWA_ROUTING_STRATEGY="priority") as gw:
        response = await gw.client.post("/v1/chat/completions", json={"model": "auto", "messages": HELLO})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "From OpenAI."
    assert response.headers["x-orchesity-provider"] == "gpt"
    assert [r.url.host for r in httpx_mock.get_requests()] == ["api.anthropic.com", "api.openai.com"]


# --- streams cut before and after the first token -------------------------------------------------------


async def test_messages_stream_cut_before_the_first_token_fails_over(open_gateway: Any, tmp_path: Path) -> None:
    with FakeOpenAI() as server:
        path = providers_file(tmp_path, [{"name": "fake", "base_url": server.base_url,
                                          "model": "cut-before-first-token", "priority": 1}, sim("backup", 2)])
        async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, DWA_ROUTING_STRATEGY="priority") as gw:
            response = await gw.client.post("/v1/messages", json={"model": "auto", "max_tokens": 50,
                                                                  "messages": HELLO, "stream": True})
    assert response.status_code == 200 and response.headers["x-orchesity-provider"] == "backup"
    assert kinds(check_events(response.text))[-1] == "message_stop"


async def test_messages_stream_cut_after_the_first_token_ends_with_an_error_event(open_gateway: Any,
                                                                                  tmp_path: Path) -> None:
    with FakeOpenAI() as server:
        path = providers_file(tmp_path, [{"name": "fake", "base_url": server.base_url,
                                          "model": "cut-after-first-token", "priority": 1}, sim("backup", 2)])
        async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, DWA_ROUTING_STRATEGY="priority") as gw:
            response = await gw.client.post("/v1/messages", json={"model": "auto", "max_tokens": 50,
                                                                  "messages": HELLO, "stream": True})
    events = check_events(response.text)
    assert "content_block_delta" in kinds(events) and "message_stop" not in kinds(events)
    assert events[-1].type == "error" and "stream_cut" in events[-1].error.message


@pytest.mark.parametrize("cut", ["before", "after"])
async def test_native_stream_cuts_on_chat_completions(open_gateway: Any, tmp_path: Path, httpx_mock: HTTPXMock,
                                                      monkeypatch: pytest.MonkeyPatch, cut: str) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    events = [NATIVE_START] if cut == "before" else [NATIVE_START, *native_text("Half")]
    httpx_mock.add_response(url=ANTHROPIC_URL, stream=IteratorStream(broken(sse(*events))),
                            headers={"content-type": "text/event-stream"})
    path = providers_file(tmp_path, [NATIVE, sim("backup", 2)])
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, DWA_ROUTING_STRATEGY="priority") as gw:
        response = await gw.client.post("/v1/chat/completions", json={"model": "auto", "stream": True,
                                                                      "messages": HELLO})
    data = [json.loads(line[6:]) for line in response.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]
    if cut == "before":
        assert response.headers["x-orchesity-provider"] == "backup" and response.text.endswith("data: [DONE]\n\n")
    else:
        assert data[0]["choices"][0]["delta"]["content"] == "Half" and data[-1]["error"]["code"] == "stream_cut"


# --- refusals, keys, counting ---------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "headers", "field"), [
    ({"model": "auto", "messages": HELLO}, {}, "max_tokens: Field required"),
    ({"model": "auto", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, {}, "messages.0.role"),
    ({"model": "auto", "max_tokens": 5, "messages": HELLO, "temperature": 1.5}, {}, "temperature"),
    ({"model": "auto", "max_tokens": 5, "messages": HELLO, "service_tier": "auto"}, {}, "service_tier"),
    ({"model": "auto", "max_tokens": 5, "messages": HELLO, "thinking": {"type": "enabled", "budget_tokens": 1024}},
     {}, "thinking"),
    ({"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}]}, {},
     "messages[0].content[0].cache_control"),
    ({"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {}}]}]}, {}, "messages[0].content[0].type"),
    ({"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": "x", "is_error": True}]}]}, {},
     "messages[0].content[0].is_error"),
    ({"model": "auto", "max_tokens": 5, "messages": HELLO, "tools": [{"type": "web_search_20250305",
                                                                      "name": "web_search"}]}, {}, "tools[0].type"),
    ({"model": "auto", "max_tokens": 5, "messages": HELLO}, {"anthropic-version": "2099-01-01"}, "anthropic-version"),
    ({"model": "auto", "max_tokens": 5, "messages": HELLO}, {"anthropic-beta": "x-2025"}, "anthropic-beta"),
])
async def test_bad_inputs_get_anthropic_shaped_400s_naming_the_field(open_gateway: Any, body: dict[str, Any],
                                                                     headers: dict[str, str], field: str) -> None:
    async with open_gateway() as gw:
        response = await gw.client.post("/v1/messages", json=body, headers=headers)
    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["type"] == "error" and payload["error"]["type"] == "invalid_request_error"
    assert field in payload["error"]["message"]


async def test_keys_are_required_and_x_api_key_is_one(open_gateway: Any) -> None:
    body = {"model": "auto", "max_tokens": 20, "messages": HELLO}
    async with open_gateway(OPEN_ACCESS=False) as gw:
        key, _ = await create_key(gw.services.db, name="claude-client", scopes=["llm"], created_by="test")
        missing = await gw.client.post("/v1/messages", json=body)
        counted_missing = await gw.client.post("/v1/messages/count_tokens", json={"model": "auto", "messages": HELLO})
        allowed = await gw.client.post("/v1/messages", json=body, headers={"x-api-key": key})
    assert missing.status_code == 401 and counted_missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error" and missing.json()["type"] == "error"
    assert allowed.status_code == 200 and check_message(allowed.json()).content


async def test_count_tokens(open_gateway: Any) -> None:
    async with open_gateway() as gw:
        short = await gw.client.post("/v1/messages/count_tokens", json={"model": "auto", "messages": HELLO})
        longer = await gw.client.post("/v1/messages/count_tokens", json={
            "model": "simulated", "messages": HELLO, "system": "A much longer system prompt than none at all.",
            "tools": [WEATHER]})
        unknown = await gw.client.post("/v1/messages/count_tokens", json={"model": "nope", "messages": HELLO})
    assert short.status_code == 200 and set(short.json()) == {"input_tokens"}
    assert longer.json()["input_tokens"] > short.json()["input_tokens"] > 0
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"


async def test_chat_completions_served_natively_match_openais_schemas(
        open_gateway: Any, tmp_path: Path, httpx_mock: HTTPXMock, monkeypatch: pytest.MonkeyPatch,
        schema_validator: Any) -> None:  # noqa: F811
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    httpx_mock.add_response(url=ANTHROPIC_URL, json=anthropic_reply(
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Bern"}}, stop="tool_use"))
    tool_stream = [NATIVE_START, *native_text("Checking."), {"type": "content_block_stop", "index": 0},
                   {"type": "content_block_start", "index": 1, "content_block": {
                       "type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}}},
                   {"type": "content_block_delta", "index": 1, "delta": {
                       "type": "input_json_delta", "partial_json": '{"city": "Bern"}'}},
                   {"type": "content_block_stop", "index": 1},
                   {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                    "usage": {"output_tokens": 12}},
                   {"type": "message_stop"}]
    httpx_mock.add_response(url=ANTHROPIC_URL, stream=IteratorStream(sse(*tool_stream)),
                            headers={"content-type": "text/event-stream"})
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]}}]
    body = {"model": "claude", "messages": HELLO, "tools": tools}
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=providers_file(tmp_path, [NATIVE])) as gw:
        plain = await gw.client.post("/v1/chat/completions", json=body)
        streamed = await gw.client.post("/v1/chat/completions", json={**body, "stream": True})
    assert plain.status_code == 200, plain.text
    schema_validator(plain.json(), "CreateChatCompletionResponse")
    choice = plain.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Checking."
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Bern"}'}
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    for chunk in chunks:
        schema_validator(chunk, "CreateChatCompletionStreamResponse")
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert [d["tool_calls"][0]["id"] for d in deltas if d.get("tool_calls") and "id" in d["tool_calls"][0]] \
        == ["toolu_2"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls" and chunks[-1]["usage"]["completion_tokens"] == 12
