"""Structured output and tool calls through the gateway, offline: the simulated provider
answers `response_format` with schema-valid JSON and `tools` with tool calls, and real
clients (the openai SDK, LangChain) get them over loopback as they would from OpenAI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal, Optional

import jsonschema
import pytest
from pydantic import BaseModel, Field

from core.settings import Settings
from functions.gateway import build_app
from tests.servers import serve


class Task(BaseModel):
    title: str
    done: bool
    estimate_hours: float = Field(ge=0.5, le=40)


class Plan(BaseModel):
    goal: str
    priority: Literal["low", "medium", "high"]
    tasks: list[Task] = Field(min_length=2)
    notes: Optional[str] = None


SCHEMA_FORMAT = {"type": "json_schema",
                 "json_schema": {"name": "Plan", "schema": Plan.model_json_schema(), "strict": False}}
ASK = [{"role": "user", "content": "Plan the migration of the billing database."}]
TOOLS = [
    {"type": "function", "function": {
        "name": "search_docs", "description": "Search the documentation",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"},
                                                        "limit": {"type": "integer", "minimum": 1}},
                       "required": ["query", "limit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "open_ticket", "description": "Open a ticket",
        "parameters": {"type": "object", "properties": {"title": {"type": "string", "maxLength": 40},
                                                        "severity": {"enum": ["minor", "major"]}},
                       "required": ["title", "severity"]}}},
]


@pytest.fixture
def base_url(gateway_settings: Settings) -> Iterator[str]:
    with serve(build_app(settings=gateway_settings)) as url:
        yield url + "/v1"


@pytest.fixture
def client(base_url: str) -> Any:
    import openai

    with openai.OpenAI(base_url=base_url, api_key="x", max_retries=0) as sdk:
        yield sdk


def test_json_schema_response_format_with_the_openai_sdk(client: Any) -> None:
    completion = client.chat.completions.create(model="simulated", messages=ASK, response_format=SCHEMA_FORMAT)
    content = completion.choices[0].message.content
    document = json.loads(content)
    jsonschema.validate(document, Plan.model_json_schema())
    assert len(document["tasks"]) == 2 and document["goal"] == "simulated goal"
    assert completion.usage.completion_tokens > 0

    again = client.chat.completions.create(model="simulated", messages=ASK, response_format=SCHEMA_FORMAT)
    assert again.choices[0].message.content == content  # deterministic for a given request

    pieces = [c.choices[0].delta.content
              for c in client.chat.completions.create(model="simulated", messages=ASK, stream=True,
                                                      response_format=SCHEMA_FORMAT)
              if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3 and "".join(pieces) == content


def test_openai_sdk_parse_gives_a_model(client: Any) -> None:
    parse = getattr(client.chat.completions, "parse", None)
    if parse is None:  # pragma: no cover - older SDKs had it under client.beta
        pytest.skip("this openai SDK has no chat.completions.parse")
    completion = parse(model="simulated", messages=ASK, response_format=Plan)
    plan = completion.choices[0].message.parsed
    assert isinstance(plan, Plan) and all(isinstance(t, Task) for t in plan.tasks)


def test_json_object_response_format(client: Any) -> None:
    completion = client.chat.completions.create(model="simulated", messages=ASK,
                                                response_format={"type": "json_object"})
    assert isinstance(json.loads(completion.choices[0].message.content), dict)


def test_langchain_with_structured_output(base_url: str) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=base_url, api_key="x", model="simulated", max_retries=0)
    plan = llm.with_structured_output(Plan, method="json_schema").invoke("Plan the billing migration.")
    assert isinstance(plan, Plan) and len(plan.tasks) >= 2
    # function calling: LangChain forces the model's one tool, whose arguments are the Plan
    plan = llm.with_structured_output(Plan, method="function_calling").invoke("Plan it again.")
    assert isinstance(plan, Plan)


def _tool_result(message: Any, result: str) -> list[dict[str, Any]]:
    call = message.tool_calls[0]
    return [{"role": "assistant", "content": message.content,
             "tool_calls": [{"id": call.id, "type": "function",
                             "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
            {"role": "tool", "tool_call_id": call.id, "content": result}]


def test_tool_loop_with_the_openai_sdk(client: Any) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Find the runbook and open a ticket."}]
    first = client.chat.completions.create(model="simulated", messages=messages, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "search_docs"
    jsonschema.validate(json.loads(call.function.arguments), TOOLS[0]["function"]["parameters"])

    messages += _tool_result(choice.message, "runbook: docs/billing-migration.md")
    second = client.chat.completions.create(model="simulated", messages=messages, tools=TOOLS)
    call = second.choices[0].message.tool_calls[0]
    assert second.choices[0].finish_reason == "tool_calls" and call.function.name == "open_ticket"
    jsonschema.validate(json.loads(call.function.arguments), TOOLS[1]["function"]["parameters"])

    messages += _tool_result(second.choices[0].message, "ticket BILL-42 opened")
    final = client.chat.completions.create(model="simulated", messages=messages, tools=TOOLS)
    answer = final.choices[0]
    assert answer.finish_reason == "stop" and not answer.message.tool_calls
    assert "search_docs and open_ticket" in answer.message.content and "BILL-42" in answer.message.content


def test_tool_choice_named_and_none(client: Any) -> None:
    forced = client.chat.completions.create(
        model="simulated", messages=ASK, tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "open_ticket"}})
    assert forced.choices[0].message.tool_calls[0].function.name == "open_ticket"
    plain = client.chat.completions.create(model="simulated", messages=ASK, tools=TOOLS, tool_choice="none")
    assert plain.choices[0].finish_reason == "stop" and plain.choices[0].message.content
    assert not plain.choices[0].message.tool_calls


def test_streamed_tool_call_and_its_cached_replay(client: Any) -> None:
    whole = client.chat.completions.create(model="simulated", messages=ASK, tools=TOOLS)
    expected = whole.choices[0].message.tool_calls[0]

    def streamed() -> tuple[dict[str, str], str | None, str]:
        call = {"id": "", "name": "", "arguments": ""}
        finish = None
        stream = client.chat.completions.with_raw_response.create(
            model="simulated", messages=ASK, tools=TOOLS, stream=True, temperature=0)
        for chunk in stream.parse():
            if not chunk.choices:
                continue
            finish = chunk.choices[0].finish_reason or finish
            for delta in chunk.choices[0].delta.tool_calls or ():
                call["id"] += delta.id or ""
                call["name"] += (delta.function.name or "") if delta.function else ""
                call["arguments"] += (delta.function.arguments or "") if delta.function else ""
        return call, finish, stream.headers.get("x-orchesity-cached")

    for cached in ("false", "true"):  # temperature 0 is cached; the replay keeps the call
        call, finish, was_cached = streamed()
        assert was_cached == cached and finish == "tool_calls"
        assert call == {"id": expected.id, "name": expected.function.name, "arguments": expected.function.arguments}


async def test_tool_call_responses_match_openais_schemas(open_gateway: Any, schema_validator: Any) -> None:  # noqa: F811
    body = {"model": "simulated", "messages": ASK, "tools": TOOLS}
    async with open_gateway() as gw:
        completion = await gw.client.post("/v1/chat/completions", json=body)
        stream = await gw.client.post("/v1/chat/completions", json={**body, "stream": True})
    assert completion.status_code == 200, completion.text
    schema_validator(completion.json(), "CreateChatCompletionResponse")
    chunks = [json.loads(line[6:]) for line in stream.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    assert any(c["choices"] and c["choices"][0]["delta"].get("tool_calls") for c in chunks)
    for chunk in chunks:
        schema_validator(chunk, "CreateChatCompletionStreamResponse")
