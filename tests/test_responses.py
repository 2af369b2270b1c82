"""POST /v1/responses (OpenAI's Responses API) and its stored responses: the openai SDK
against the gateway over loopback, the app in process, a provider faked at its HTTP
boundary (pytest-httpx), with Redis and without; every Response and stream event checked
against OpenAI's schemas (the committed subset, tests/openai_schemas.json)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pytest_httpx import IteratorStream
from sqlmodel import select

from core import response_store
from core.models import RequestLog, StoredResponse
from core.settings import Settings
from functions.gateway import build_app
from tests.conftest import providers_file
from tests.servers import serve

OPENAI_CHAT = "https://api.openai.com/v1/chat/completions"
SIM = {"latency_ms": 1, "ms_per_token": 0, "jitter": 0, "seed": 3}
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
           "strict": True}
COLOURS = {"type": "json_schema", "name": "colours", "strict": True, "schema": {
    "type": "object", "properties": {"colours": {"type": "array", "items": {"type": "string"}}},
    "required": ["colours"], "additionalProperties": False}}


@pytest.fixture
def validate(schema_validator: Any) -> Any:
    """Each answer and event against the committed subset of OpenAI's spec (conftest)."""
    return schema_validator


@pytest.fixture
def base_url(gateway_settings: Settings) -> Iterator[str]:
    with serve(build_app(settings=gateway_settings)) as url:
        yield url + "/v1"


def events_of(text: str) -> list[dict[str, Any]]:
    """The events of an SSE body, each checked to name its type in `event:` too."""
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        event = json.loads(lines["data"])
        assert lines["event"] == event["type"]
        events.append(event)
    return events


def sim(name: str, priority: int = 100, **simulation: Any) -> dict[str, Any]:
    return {"name": name, "kind": "simulated", "priority": priority, "simulation": {**SIM, **simulation}}


# --- the openai SDK over loopback ----------------------------------------------------------------


def test_sdk_create_retrieve_and_stream(base_url: str, validate: Any) -> None:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    response = client.responses.create(model="auto", input="Name three colours.", instructions="Be brief.",
                                       metadata={"ticket": "42"}, temperature=0.2)
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    assert response.output_text and response.instructions == "Be brief." and response.metadata == {"ticket": "42"}
    assert response.usage is not None and response.usage.total_tokens > 0 and response.usage.input_tokens > 0
    (message,) = response.output
    assert message.type == "message" and message.content[0].type == "output_text"
    validate(response.to_dict(), "Response")
    assert client.responses.retrieve(response.id).to_dict() == response.to_dict()

    events = list(client.responses.create(model="simulated", input="Stream three colours.", stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    for event in events:
        validate(event.to_dict(), "ResponseStreamEvent")
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert deltas and final.output_text == deltas and final.id == events[0].response.id
    assert client.responses.retrieve(final.id).output_text == deltas

    with client.responses.stream(model="auto", input="Stream with the helper.") as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        helper = stream.get_final_response()
    assert helper.status == "completed" and helper.output_text == "".join(texts)


def test_sdk_tool_round_trip_through_previous_response_id(base_url: str, validate: Any) -> None:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    first = client.responses.create(model="auto", input="What is the weather in Paris?", tools=[WEATHER])
    validate(first.to_dict(), "Response")
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.id.startswith("fc_")
    assert json.loads(call.arguments).keys() == {"city"} and first.tools[0].name == "get_weather"
    second = client.responses.create(
        model="auto", previous_response_id=first.id, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 21}'}])
    validate(second.to_dict(), "Response")
    assert second.previous_response_id == first.id and second.status == "completed"
    assert "get_weather returned" in second.output_text and "21" in second.output_text

    # the same loop streamed: the call's arguments come as deltas
    events = list(client.responses.create(model="auto", input="Weather in Oslo?", tools=[WEATHER],
                                          tool_choice={"type": "function", "name": "get_weather"}, stream=True))
    for event in events:
        validate(event.to_dict(), "ResponseStreamEvent")
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done.arguments == arguments and done.name == "get_weather" and json.loads(arguments)["city"]
    (item,) = events[-1].response.output
    assert item.type == "function_call" and item.arguments == arguments


def test_sdk_store_false_cannot_be_continued(base_url: str) -> None:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    unstored = client.responses.create(model="auto", input="Forget this.", store=False)
    assert unstored.status == "completed"
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="auto", input="And then?", previous_response_id=unstored.id)
    assert info.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert info.value.body["code"] == "previous_response_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)

    kept = client.responses.create(model="auto", input="Keep this.")
    assert client.responses.delete(kept.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(kept.id)


# --- in process ------------------------------------------------------------------------------------


async def test_items_instructions_and_structured_output(open_gateway: Any, validate: Any) -> None:
    items = [
        {"type": "message", "role": "developer", "content": "Answer in JSON."},
        {"role": "user", "content": [{"type": "input_text", "text": "Name"},
                                     {"type": "input_text", "text": " colours."}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Which ones?", "annotations": []}]},
        {"role": "user", "content": "Three of them, please."},
    ]
    async with open_gateway() as gw:
        reply = await gw.client.post("/v1/responses", json={"model": "auto", "input": items,
                                                            "text": {"format": COLOURS}, "max_output_tokens": 200})
        streamed = await gw.client.post("/v1/responses", json={"model": "auto", "input": "Colours?",
                                                               "text": {"format": COLOURS}, "stream": True})
        json_object = await gw.client.post("/v1/responses", json={
            "model": "auto", "input": "Colours as JSON.", "text": {"format": {"type": "json_object"}}})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    validate(body, "Response")
    assert body["text"] == {"format": COLOURS} and body["max_output_tokens"] == 200
    answer = json.loads(body["output"][0]["content"][0]["text"])
    jsonschema.validate(answer, COLOURS["schema"])
    assert reply.headers["x-orchesity-provider"] == "simulated"
    events = events_of(streamed.text)
    for event in events:
        validate(event, "ResponseStreamEvent")
    jsonschema.validate(json.loads(events[-1]["response"]["output"][0]["content"][0]["text"]), COLOURS["schema"])
    assert json_object.status_code == 200 and json.loads(json_object.json()["output"][0]["content"][0]["text"])


async def test_cut_by_max_output_tokens_is_incomplete(open_gateway: Any, validate: Any) -> None:
    body = {"model": "auto", "input": "Write a long essay about routing.", "max_output_tokens": 5}
    async with open_gateway() as gw:
        plain = (await gw.client.post("/v1/responses", json=body)).json()
        streamed = events_of((await gw.client.post("/v1/responses", json={**body, "stream": True})).text)
    validate(plain, "Response")
    assert plain["status"] == "incomplete" and plain["incomplete_details"] == {"reason": "max_output_tokens"}
    assert plain["output"][0]["status"] == "incomplete" and plain["usage"]["output_tokens"] <= 5
    assert streamed[-1]["type"] == "response.incomplete"
    assert streamed[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_a_stream_fails_over_before_its_first_token_and_fails_after(open_gateway: Any, tmp_path: Path,
                                                                          validate: Any) -> None:
    path = providers_file(tmp_path, [sim("down", 1, failure_rate=1.0, failure_mode="unavailable"),
                                     sim("up", 2), sim("cut", 3, failure_rate=1.0, failure_mode="stream_cut")])
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, DWA_ROUTING_STRATEGY="priority") as gw:
        failed_over = await gw.client.post("/v1/responses", json={"model": "auto", "input": "hi", "stream": True})
        cut = await gw.client.post("/v1/responses", json={"model": "cut", "input": "hi there", "stream": True})
        nothing = await gw.client.post("/v1/responses", json={"model": "down", "input": "hi", "stream": True})
    assert failed_over.headers["x-orchesity-provider"] == "up"
    assert events_of(failed_over.text)[-1]["type"] == "response.completed"
    events = events_of(cut.text)
    for event in events:
        validate(event, "ResponseStreamEvent")
    assert any(e["type"] == "response.output_text.delta" for e in events)
    assert events[-1]["type"] == "response.failed" and events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"
    # before any token, with nothing to fail over to: an ordinary error status
    assert nothing.status_code == 502 and nothing.json()["error"]["message"].startswith("down:")


BAD = [
    ({"input": "x", "tools": [{"type": "web_search"}]}, 400, "tools[0].type", "web_search"),
    ({"input": "x", "tools": [WEATHER, {"type": "file_search", "vector_store_ids": ["v"]}]}, 400, "tools[1].type",
     "file_search"),
    ({"input": "x", "tools": [{"type": "computer_use_preview"}]}, 400, "tools[0].type", "computer"),
    ({"input": "x", "tools": [{"type": "function"}]}, 400, "tools[0].name", "name"),
    ({"input": "x", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, 400,
     "tool_choice.name", "nope"),
    ({"input": "x", "tool_choice": {"type": "web_search_preview"}}, 400, "tool_choice", "web_search_preview"),
    ({"input": "x", "tool_choice": "required"}, 400, "tool_choice", "tools"),
    ({"input": []}, 400, "input", "empty"),
    ({"input": [{"type": "reasoning", "summary": []}]}, 400, "input[0].type", "reasoning"),
    ({"input": [{"role": "tool", "content": "x"}]}, 400, "input[0].role", "tool"),
    ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, 400, "input[0].content[0].type",
     "input_audio"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]}, 400,
     "input[0].content[0].file_id", "file_id"),
    ({"input": [{"role": "user", "content": 3}]}, 400, "input[0].content", "content"),
    ({"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]}, 400, "input[0].call_id",
     "call_x"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, 400, "input[0].arguments", "arguments"),
    ({"input": "x", "text": {"format": {"type": "yaml"}}}, 400, "text.format.type", "yaml"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}, 400, "text.format.schema", "schema"),
    ({"input": "x", "conversation": "conv_1"}, 422, "conversation", "not permitted"),
    ({"input": "x", "max_output_tokens": 0}, 422, "max_output_tokens", "greater"),
    ({"input": "x", "temperature": "hot"}, 422, "temperature", "number"),
    ({"input": "x", "truncation": "auto"}, 422, "truncation", "disabled"),
    ({"input": "x", "background": True}, 422, "background", "False"),
    ({"input": "x", "include": ["message.output_text.logprobs"]}, 422, "include", "logprobs"),
    ({"input": "x", "reasoning": {"summary": "auto"}}, 422, "reasoning.summary", "summaries"),
    ({"input": "x", "metadata": {str(i): "v" for i in range(17)}}, 422, "metadata", "16"),
    ({}, 422, "input", "required"),
    ({"input": "x", "model": "no-such-model"}, 400, "model", "no-such-model"),
    ({"input": "x", "previous_response_id": "resp_nope"}, 404, "previous_response_id", "resp_nope"),
]


@pytest.mark.parametrize(("body", "status", "param", "said"), BAD)
async def test_bad_inputs_are_refused_naming_the_param(open_gateway: Any, body: dict[str, Any], status: int,
                                                        param: str, said: str) -> None:
    async with open_gateway() as gw:
        response = await gw.client.post("/v1/responses", json={"model": "auto", **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and said in error["message"], error


# --- a provider at its HTTP boundary ----------------------------------------------------------------


def chat_reply(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: bool = False) -> bytes:
    body: dict[str, Any] = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1700000000,
                            "model": "gpt-4o-mini", "choices": [] if usage else [
                                {"index": 0, "delta": delta or {}, "finish_reason": finish}]}
    if usage:
        body["usage"] = {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42}
    return f"data: {json.dumps(body)}\n\n".encode()


async def test_the_provider_gets_the_translated_chat_body_and_the_prior_conversation(
        open_gateway: Any, tmp_path: Path, httpx_mock: Any, monkeypatch: pytest.MonkeyPatch,
        validate: Any) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    path = providers_file(tmp_path, [{"name": "gpt", "provider": "openai", "model": "gpt-4o-mini",
                                      "api_key_env": "OPENAI_API_KEY"}])
    call = {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    httpx_mock.add_response(url=OPENAI_CHAT, json=chat_reply({"content": None, "tool_calls": [call]}, "tool_calls"))
    httpx_mock.add_response(url=OPENAI_CHAT, headers={"content-type": "text/event-stream"}, stream=IteratorStream([
        chunk({"role": "assistant", "content": "It is "}), chunk({"content": "mild."}), chunk(finish="stop"),
        chunk(usage=True), b"data: [DONE]\n\n"]))
    image = {"type": "input_image", "image_url": "https://example.com/oslo.png", "detail": "low"}
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path) as gw:
        first = await gw.client.post("/v1/responses", json={
            "model": "gpt", "instructions": "You are terse.", "tools": [WEATHER], "tool_choice": "auto",
            "parallel_tool_calls": False, "max_output_tokens": 50, "temperature": 0.5, "top_p": 0.9, "user": "u-1",
            "text": {"format": COLOURS}, "reasoning": {"effort": "low"},
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "Weather here?"}, image]}]})
        assert first.status_code == 200, first.text
        validate(first.json(), "Response")
        (function_call,) = first.json()["output"]
        assert function_call["call_id"] == "call_abc" and function_call["arguments"] == '{"city":"Oslo"}'
        second = await gw.client.post("/v1/responses", json={
            "model": "gpt", "instructions": "Now be kind.", "previous_response_id": first.json()["id"],
            "tools": [WEATHER], "stream": True,
            "input": [{"type": "function_call_output", "call_id": "call_abc", "output": "mild"}]})
    assert second.status_code == 200, second.text
    events = events_of(second.text)
    for event in events:
        validate(event, "ResponseStreamEvent")
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == "It is mild." and final["usage"]["total_tokens"] == 42
    sent_first, sent_second = (json.loads(r.content) for r in httpx_mock.get_requests())
    user = {"role": "user", "content": [{"type": "text", "text": "Weather here?"},
                                        {"type": "image_url", "image_url": {"url": image["image_url"],
                                                                            "detail": "low"}}]}
    assert sent_first == {
        "model": "gpt-4o-mini", "messages": [{"role": "system", "content": "You are terse."}, user],
        "tools": [{"type": "function", "function": {k: WEATHER[k] for k in ("name", "description", "parameters",
                                                                           "strict")}}],
        "tool_choice": "auto", "parallel_tool_calls": False, "max_tokens": 50, "temperature": 0.5, "top_p": 0.9,
        "user": "u-1", "reasoning_effort": "low",
        "response_format": {"type": "json_schema", "json_schema": {k: COLOURS[k] for k in ("name", "schema",
                                                                                         "strict")}}}
    # the previous instructions are not carried over; the conversation is
    assert sent_second["messages"] == [
        {"role": "system", "content": "Now be kind."}, user,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "mild"}]
    assert sent_second["stream"] is True and "response_format" not in sent_second


# --- storage ----------------------------------------------------------------------------------------


async def test_without_redis_previous_response_id_works_through_postgres(open_gateway: Any) -> None:
    async with open_gateway() as gw:  # with Redis: Postgres is not written
        with_redis = (await gw.client.post("/v1/responses", json={"model": "auto", "input": "Remember me."})).json()
    async with open_gateway(REDIS_ENABLED=False) as gw:
        assert gw.services.kv is None
        first = (await gw.client.post("/v1/responses", json={"model": "auto", "input": "What is the weather?",
                                                             "tools": [WEATHER]})).json()
        (call,) = first["output"]
        second = await gw.client.post("/v1/responses", json={
            "model": "auto", "previous_response_id": first["id"], "tools": [WEATHER],
            "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}]})
        streamed = await gw.client.post("/v1/responses", json={
            "model": "auto", "previous_response_id": second.json()["id"], "input": "Thanks!", "stream": True})
        retrieved = await gw.client.get(f"/v1/responses/{first['id']}")
        async with gw.services.db.session() as session:
            rows = (await session.exec(select(StoredResponse).where(StoredResponse.id.in_(  # type: ignore[attr-defined]
                [first["id"], with_redis["id"]])))).all()
            logged = (await session.exec(select(RequestLog).where(
                RequestLog.request_id == "req_" + first["id"].removeprefix("resp_")))).all()
    assert second.status_code == 200, second.text
    assert "get_weather returned: sunny" in second.json()["output"][0]["content"][0]["text"]
    assert events_of(streamed.text)[-1]["type"] == "response.completed"
    assert retrieved.json() == first
    (row,) = rows  # only the one stored without Redis
    assert row.id == first["id"] and row.owner == "open" and row.conversation[0]["content"] == "What is the weather?"
    assert row.expires_at > datetime.now(UTC) + timedelta(days=29)
    (entry,) = logged  # the request log has it, as for chat (straight to Postgres without Redis)
    assert entry.endpoint == "responses" and entry.status == "ok" and entry.total_tokens > 0


async def test_expired_rows_are_not_read_and_the_cron_tick_deletes_them(open_gateway: Any) -> None:
    response = {"id": "resp_expired_test", "output": []}
    async with open_gateway(KNOWLEDGE_BATCH=0) as gw:
        db = gw.services.db
        await response_store.save(None, db, response_store.Stored("someone", [], response), ttl=60)
        assert await response_store.load(None, db, "resp_expired_test", "someone") is not None
        assert await response_store.load(None, db, "resp_expired_test", "another") is None
        async with db.session() as session:
            row = await session.get(StoredResponse, "resp_expired_test")
            assert row is not None
            row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
            session.add(row)
            await session.commit()
        assert await response_store.load(None, db, "resp_expired_test", "someone") is None
        tick = await gw.client.post("/api/cron/tick")
        async with db.session() as session:
            assert await session.get(StoredResponse, "resp_expired_test") is None
    assert tick.json()["responses"]["expired_deleted"] >= 1


async def test_another_key_cannot_continue_or_read_my_response(open_gateway: Any) -> None:
    from core.auth import create_key

    async with open_gateway(OPEN_ACCESS=False) as gw:
        mine, _ = await create_key(gw.services.db, name="mine", scopes=["llm"], created_by="test")
        theirs, _ = await create_key(gw.services.db, name="theirs", scopes=["llm"], created_by="test")
        me, them = {"authorization": f"Bearer {mine}"}, {"authorization": f"Bearer {theirs}"}
        first = (await gw.client.post("/v1/responses", json={"model": "auto", "input": "secret plans"},
                                      headers=me)).json()
        body = {"model": "auto", "input": "go on", "previous_response_id": first["id"]}
        stolen = await gw.client.post("/v1/responses", json=body, headers=them)
        peeked = await gw.client.get(f"/v1/responses/{first['id']}", headers=them)
        deleted = await gw.client.delete(f"/v1/responses/{first['id']}", headers=them)
        continued = await gw.client.post("/v1/responses", json=body, headers=me)
        anonymous = await gw.client.post("/v1/responses", json=body)
    assert stolen.status_code == 404 and stolen.json()["error"]["param"] == "previous_response_id"
    assert peeked.status_code == 404 and deleted.status_code == 404
    assert continued.status_code == 200, continued.text
    assert anonymous.status_code == 401


async def test_with_redis_down_responses_are_kept_in_postgres(open_gateway: Any, tmp_path: Path) -> None:
    from pydantic import SecretStr

    from core.embedded import start_redis

    own_redis = start_redis(tmp_path)  # not the session's server: this one gets killed
    async with open_gateway(REDIS_URL=SecretStr(f"unix://{own_redis.socket_path}"), REDIS_DB=0) as gw:
        before = (await gw.client.post("/v1/responses", json={"model": "auto", "input": "before"})).json()
        own_redis.kill()
        during = (await gw.client.post("/v1/responses", json={"model": "auto", "input": "during"})).json()
        continued = await gw.client.post("/v1/responses", json={"model": "auto", "input": "and then?",
                                                                "previous_response_id": during["id"]})
        unknowable = await gw.client.post("/v1/responses", json={"model": "auto", "input": "and then?",
                                                                 "previous_response_id": before["id"]})
        async with gw.services.db.session() as session:
            row = await session.get(StoredResponse, during["id"])
    assert continued.status_code == 200, continued.text
    assert row is not None and row.response == during
    # kept in Redis, which cannot answer: not "not found", since it may well exist
    assert unknowable.status_code == 503 and unknowable.json()["error"]["code"] == "redis_unavailable"


@pytest.mark.parametrize("value", ["10", "forever", str(400 * 24 * 3600)])
def test_a_bad_responses_ttl_stops_start_up_naming_it(value: str) -> None:
    from core.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="RESPONSES_TTL_SECONDS"):
        load_settings(_env_file=None, RESPONSES_TTL_SECONDS=value)


async def test_the_keys_limits_apply(open_gateway: Any) -> None:
    from core.auth import create_key
    from core.limits import Limits

    async with open_gateway(OPEN_ACCESS=False) as gw:
        key, _ = await create_key(gw.services.db, name="limited", scopes=["llm"], created_by="test",
                                  limits=Limits(requests_per_minute=2))
        headers = {"authorization": f"Bearer {key}"}
        replies = [await gw.client.post("/v1/responses", json={"model": "auto", "input": f"n{i}", "stream": i == 2},
                                        headers=headers) for i in range(3)]
    assert [r.status_code for r in replies] == [200, 200, 429]
    assert replies[0].headers["x-ratelimit-limit-requests"] == "2"
    assert replies[2].json()["error"]["type"] == "rate_limit_exceeded"
