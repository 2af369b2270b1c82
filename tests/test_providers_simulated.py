"""The simulated provider: deterministic, realistic enough, failing on demand, instant on a virtual clock;
structured output (its schema instance generator) and tool calls."""

from __future__ import annotations

import asyncio
import datetime
import enum
import json
import uuid
from typing import Annotated, Any, Literal, Optional, Union

import jsonschema
import pytest
from pydantic import BaseModel, Field, HttpUrl

from core.providers import (
    ChatRequest,
    Chunk,
    Completion,
    DeploymentSpec,
    ProviderBadResponse,
    ProviderBusy,
    ProviderClientError,
    ProviderError,
    ProviderRateLimited,
    ProviderStreamCut,
    ProviderTimeout,
    ProviderUnavailable,
    build_adapter,
    tokens,
)
from core.providers.schema_instance import instance
from core.providers.simulated import SimulatedAdapter, VirtualClock

PROMPT = [{"role": "user", "content": "Explain how response caching works in an LLM gateway."}]


def adapter(clock: VirtualClock | None = None, **simulation: Any) -> SimulatedAdapter:
    clock = clock or VirtualClock()
    spec_fields = {k: simulation.pop(k) for k in ("timeout_seconds", "max_concurrency") if k in simulation}
    spec = DeploymentSpec(name="simulated", kind="simulated", simulation=simulation, **spec_fields)
    made = build_adapter(spec, sleep=clock.sleep, clock=clock.time)
    assert isinstance(made, SimulatedAdapter)
    return made


def request(**fields: Any) -> ChatRequest:
    return ChatRequest(messages=fields.pop("messages", PROMPT), **fields)


async def outcomes(a: SimulatedAdapter, n: int) -> list[str]:
    results = []
    for _ in range(n):
        try:
            completion = await a.complete(request(), timeout=5)
            results.append(f"ok:{completion.usage.completion_tokens}")
        except ProviderError as exc:
            results.append(exc.error_class)
    return results


async def test_reply_is_plausible_with_real_looking_usage() -> None:
    completion = await adapter(seed=1).complete(request(), timeout=5)
    assert isinstance(completion, Completion)
    assert completion.model == "orchesity-simulated-1" and completion.finish_reason == "stop"
    assert completion.id and completion.id.startswith("simcmpl-")
    assert len(completion.text.split()) > 10 and completion.text.endswith(".")
    usage = completion.usage
    assert usage.prompt_tokens == tokens.count_messages(PROMPT, "orchesity-simulated-1")
    assert usage.completion_tokens == tokens.count_text(completion.text, "orchesity-simulated-1")
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 20 <= usage.completion_tokens <= 120  # reply_tokens 60, varied 0.5x-1.5x


async def test_same_seed_same_everything() -> None:
    first = await outcomes(adapter(seed=7, failure_rate=0.4), 30)
    second = await outcomes(adapter(seed=7, failure_rate=0.4), 30)
    other = await outcomes(adapter(seed=8, failure_rate=0.4), 30)
    assert first == second
    assert first != other
    assert {"timeout", "rate_limited", "unavailable"} & set(first)  # mixed failures drawn
    assert any(o.startswith("ok:") for o in first)


async def test_same_prompt_same_text_whatever_ran_before() -> None:
    a = adapter(seed=3)
    first = await a.complete(request(), timeout=5)
    await a.complete(request(messages=[{"role": "user", "content": "Something else entirely"}]), timeout=5)
    again = await adapter(seed=3).complete(request(), timeout=5)
    assert again.text.split(".")[0] == first.text.split(".")[0]


async def test_latency_is_base_plus_per_token_with_jitter() -> None:
    clock = VirtualClock()
    a = adapter(clock, latency_ms=100, ms_per_token=10, jitter=0, seed=1)
    completion = await a.complete(request(), timeout=60)
    assert clock.now == pytest.approx(0.1 + 0.01 * completion.usage.completion_tokens)

    clock = VirtualClock()
    a = adapter(clock, latency_ms=100, ms_per_token=0, jitter=0.5, seed=1)
    await a.complete(request(), timeout=60)
    assert 0.05 <= clock.now <= 0.15 and clock.now != pytest.approx(0.1)


async def test_virtual_clock_means_no_real_sleeping() -> None:
    clock = VirtualClock()
    a = adapter(clock, latency_ms=2000, ms_per_token=50, seed=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(20):
        await a.complete(request(), timeout=600)
    assert loop.time() - started < 1.0
    assert clock.now > 40  # 20 calls of 2 s or more each were accounted


async def test_real_sleep_by_default() -> None:
    spec = DeploymentSpec(name="sim", kind="simulated", simulation={"latency_ms": 50, "ms_per_token": 0, "jitter": 0})
    a = build_adapter(spec)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await a.complete(request(), timeout=5)
    assert loop.time() - started >= 0.045


async def test_max_tokens_cuts_the_reply() -> None:
    completion = await adapter(seed=1, reply_tokens=200).complete(request(max_tokens=12), timeout=5)
    assert completion.finish_reason == "length"
    assert 0 < completion.usage.completion_tokens <= 12


@pytest.mark.parametrize(
    ("mode", "error", "status"),
    [
        ("timeout", ProviderTimeout, None),
        ("rate_limited", ProviderRateLimited, 429),
        ("unavailable", ProviderUnavailable, 500),
        ("bad_response", ProviderBadResponse, None),
        ("client_error", ProviderClientError, 400),
    ],
)
async def test_fixed_failure_modes(mode: str, error: type[ProviderError], status: int | None) -> None:
    with pytest.raises(error) as info:
        await adapter(failure_rate=1.0, failure_mode=mode, retry_after_seconds=2.5).complete(request(), timeout=5)
    assert info.value.status == status
    assert info.value.deployment == "simulated" and "simulated" in str(info.value)
    if mode == "rate_limited":
        assert info.value.retry_after == 2.5


async def test_timeout_failure_takes_the_whole_timeout() -> None:
    clock = VirtualClock()
    with pytest.raises(ProviderTimeout):
        await adapter(clock, failure_rate=1.0, failure_mode="timeout").complete(request(), timeout=3)
    assert clock.now == pytest.approx(3)


async def test_slow_reply_times_out() -> None:
    clock = VirtualClock()
    with pytest.raises(ProviderTimeout):
        await adapter(clock, latency_ms=5000).complete(request(), timeout=1)
    assert clock.now == pytest.approx(1)


async def test_failure_rate_is_roughly_honoured() -> None:
    results = await outcomes(adapter(seed=11, failure_rate=0.3, failure_mode="unavailable"), 400)
    share = results.count("unavailable") / len(results)
    assert 0.22 < share < 0.38


async def test_streaming_success() -> None:
    clock = VirtualClock()
    a = adapter(clock, seed=5, latency_ms=100, ms_per_token=10, jitter=0)
    chunks: list[Chunk] = [c async for c in a.stream(request(), timeout=60)]
    content, final = chunks[:-1], chunks[-1]
    assert len(content) > 5 and all(c.text and c.usage is None for c in content)
    assert final.is_final and final.finish_reason == "stop" and final.model == "orchesity-simulated-1"
    text = "".join(c.text for c in content)
    assert final.usage is not None and final.usage.completion_tokens == tokens.count_text(text)
    assert clock.now > 0.1
    # the streamed reply is the same one a plain call gives for the prompt
    plain = await adapter(seed=5).complete(request(), timeout=60)
    assert plain.text.split(".")[0] == text.split(".")[0]


async def test_stream_cut_mid_way() -> None:
    a = adapter(failure_rate=1.0, failure_mode="stream_cut", seed=2)
    received = []
    with pytest.raises(ProviderStreamCut) as info:
        async for chunk in a.stream(request(), timeout=5):
            received.append(chunk)
    assert received and all(c.text for c in received)
    assert info.value.retryable
    with pytest.raises(ProviderUnavailable):  # a plain call sees a dropped connection
        await a.complete(request(), timeout=5)


async def test_stream_failure_before_first_chunk() -> None:
    a = adapter(failure_rate=1.0, failure_mode="rate_limited")
    iterator = a.stream(request(), timeout=5)
    with pytest.raises(ProviderRateLimited):
        await iterator.__anext__()
    assert a.in_flight == 0


async def test_max_concurrency_queues_then_reports_busy() -> None:
    # real (tiny) sleeps: slots are held across real scheduling
    spec = DeploymentSpec(name="sim", kind="simulated", max_concurrency=2,
                          simulation={"latency_ms": 200, "ms_per_token": 0, "jitter": 0})
    a = build_adapter(spec)
    results = await asyncio.gather(*(a.complete(request(), timeout=0.1) for _ in range(3)), return_exceptions=True)
    kinds = sorted(type(r).__name__ for r in results)
    assert kinds == ["ProviderBusy", "ProviderTimeout", "ProviderTimeout"]
    assert a.in_flight == 0
    busy = next(r for r in results if isinstance(r, ProviderBusy))
    assert busy.retryable and busy.error_class == "busy" and "max_concurrency=2" in str(busy)

    results = await asyncio.gather(*(a.complete(request(), timeout=1) for _ in range(3)))
    assert len(results) == 3  # the third waited for a free slot within its deadline


async def test_no_time_left() -> None:
    with pytest.raises(ProviderTimeout):
        await adapter().complete(request(), timeout=0)


# --- structured output: the schema instance generator ------------------------------------------

class Status(str, enum.Enum):
    open = "open"
    closed = "closed"


class Address(BaseModel):
    street: str
    city: str = Field(min_length=2, max_length=12)
    zip: str = Field(pattern=r"^\d{5}$")


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=1, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool = True


class Node(BaseModel):
    name: str
    children: list["Node"]


class Ticket(BaseModel):
    """Nested models, an enum, Literal, optional fields, bounded lists, a discriminated union."""

    title: str
    summary: str = Field(description="one line")
    status: Status
    priority: Literal["low", "high"]
    owner: Optional[str] = None
    tags: list[str] = Field(min_length=2, max_length=5)
    home: Address
    offices: list[Address] = Field(min_length=1)
    pet: Annotated[Union[Cat, Dog], Field(discriminator="kind")]
    due: datetime.datetime
    id: uuid.UUID
    site: HttpUrl
    score: float = Field(gt=0, lt=1)
    count: int = Field(ge=10, multiple_of=5)
    tree: Node


class Step(BaseModel):
    action: str = Field(examples=["fetch the page"])
    tool: Optional[Literal["search", "fetch"]]
    retries: int = Field(default=2, ge=0)


class Plan(BaseModel):
    goal: str
    steps: list[Step] = Field(min_length=3)


def valid(schema: dict[str, Any]) -> Any:
    value = instance(schema)
    jsonschema.validators.validator_for(schema)(schema, format_checker=jsonschema.FormatChecker()).validate(value)
    assert instance(schema) == value  # deterministic
    return value


@pytest.mark.parametrize("model", [Ticket, Plan, Address, Node])
def test_instances_of_pydantic_models_validate(model: type[BaseModel]) -> None:
    value = valid(model.model_json_schema())
    model.model_validate(value)


def test_instances_read_as_text_and_honour_the_constraints() -> None:
    ticket = valid(Ticket.model_json_schema())
    assert ticket["summary"] == "simulated summary" and ticket["status"] == "open"
    assert "owner" not in ticket  # optional: left out
    assert len(ticket["tags"]) == 2 and len(set(ticket["tags"])) == 2
    assert ticket["home"]["zip"] == "00000" and ticket["pet"]["kind"] == "cat"
    assert ticket["count"] == 10 and 0 < ticket["score"] < 1
    assert ticket["tree"]["children"] == [{"name": "simulated name", "children": []}]  # recursion ends
    plan = valid(Plan.model_json_schema())
    assert len(plan["steps"]) == 3 and plan["steps"][0] == {"action": "fetch the page", "tool": "search"}


def test_openai_strict_schema_from_the_sdk() -> None:
    from openai.lib._pydantic import to_strict_json_schema

    value = valid(to_strict_json_schema(Ticket))
    Ticket.model_validate(value)


@pytest.mark.parametrize("schema", [
    {"type": "object", "additionalProperties": False, "minProperties": 2,
     "properties": {"a": {"type": "string"}, "b": {"type": "integer", "exclusiveMinimum": 3}}},
    {"type": "object", "minProperties": 2, "additionalProperties": {"type": "number", "multipleOf": 0.5}},
    {"allOf": [{"type": "object", "properties": {"x": {"type": "integer", "maximum": -4}}, "required": ["x"]},
               {"properties": {"y": {"const": "fixed"}}, "required": ["y"]}]},
    {"type": ["null", "string"], "minLength": 30, "maxLength": 32},
    {"type": "string", "pattern": r"^[A-Z]{3}-\d{4}(-[a-z]+)?$"},
    {"type": "array", "prefixItems": [{"type": "boolean"}, {"type": "null"}], "items": False, "minItems": 2},
    {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 3, "uniqueItems": True},
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 5}, "minItems": 4, "uniqueItems": True},
    {"type": "array", "maxItems": 0},
    {"oneOf": [{"type": "integer", "multipleOf": 2}, {"type": "integer", "multipleOf": 3}], "minimum": 3},
    {"anyOf": [{"type": "string", "maxLength": 2, "minLength": 5}, {"type": "number", "exclusiveMaximum": 0}]},
    {"type": "string", "format": "email"}, {"type": "string", "format": "date"},
    {"type": "string", "format": "uri"}, {"type": "string", "format": "uuid"},
    {"type": "integer", "default": "not an integer", "examples": [-1, 7], "minimum": 0},
    {"$defs": {"n": {"type": "number", "minimum": 0.25, "maximum": 0.75}}, "$ref": "#/$defs/n"},
    {"definitions": {"s": {"type": "string"}}, "type": "object", "required": ["s"],
     "properties": {"s": {"$ref": "#/definitions/s"}}},
])
def test_instances_of_handwritten_schemas_validate(schema: dict[str, Any]) -> None:
    valid(schema)


# --- structured output and tools in the adapter -------------------------------------------------

FORMAT = {"type": "json_schema", "json_schema": {"name": "Plan", "schema": Plan.model_json_schema(), "strict": False}}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                      "parameters": {"type": "object", "required": ["city", "unit"],
                                                     "properties": {"city": {"type": "string"},
                                                                    "unit": {"enum": ["c", "f"]}},
                                                     "additionalProperties": False}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}},
]


async def test_response_format_json_schema_gives_a_valid_document_and_the_same_in_a_stream() -> None:
    a = adapter(seed=3)
    completion = await a.complete(request(response_format=FORMAT), timeout=5)
    document = json.loads(completion.text)
    Plan.model_validate(document)
    assert completion.finish_reason == "stop" and completion.tool_calls is None
    assert completion.usage.completion_tokens == tokens.count_text(completion.text, "orchesity-simulated-1")
    chunks = [c async for c in a.stream(request(response_format=FORMAT), timeout=5)]
    assert len(chunks) > 3 and "".join(c.text for c in chunks) == completion.text
    assert chunks[-1].usage == completion.usage

    cut = await a.complete(request(response_format=FORMAT, max_tokens=5), timeout=5)
    assert cut.finish_reason == "length" and cut.usage.completion_tokens <= 5


async def test_response_format_json_object() -> None:
    completion = await adapter().complete(request(response_format={"type": "json_object"}), timeout=5)
    document = json.loads(completion.text)
    assert isinstance(document, dict) and "caching" in document["answer"]


def conversation_turn(completion: Completion, result: str) -> list[dict[str, Any]]:
    call = completion.tool_calls[0]
    return [{"role": "assistant", "content": None, "tool_calls": completion.tool_calls},
            {"role": "tool", "tool_call_id": call["id"], "content": result}]


async def test_tool_loop_calls_each_tool_once_then_answers() -> None:
    a = adapter(seed=5)
    messages = [{"role": "user", "content": "Weather and time in Paris?"}]
    first = await a.complete(request(messages=messages, tools=TOOLS), timeout=5)
    assert first.finish_reason == "tool_calls" and first.text == ""
    (call,) = first.tool_calls
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    arguments = json.loads(call["function"]["arguments"])
    jsonschema.validate(arguments, TOOLS[0]["function"]["parameters"])
    assert first.usage.completion_tokens > 0

    messages += conversation_turn(first, "18 degrees and sunny")
    second = await a.complete(request(messages=messages, tools=TOOLS), timeout=5)
    assert second.tool_calls[0]["function"]["name"] == "get_time"
    assert second.tool_calls[0]["id"] != call["id"]

    messages += conversation_turn(second, '{"time": "14:05"}')
    final = await a.complete(request(messages=messages, tools=TOOLS), timeout=5)
    assert final.tool_calls is None and final.finish_reason == "stop"
    assert "get_weather and get_time" in final.text and "18 degrees and sunny" in final.text

    # the same request, the same call
    again = await a.complete(request(messages=messages[:1], tools=TOOLS), timeout=5)
    assert again.tool_calls == first.tool_calls


async def test_tool_choice_forces_a_function_or_none() -> None:
    a = adapter()
    forced = {"type": "function", "function": {"name": "get_time"}}
    completion = await a.complete(request(tools=TOOLS, extra={"tool_choice": forced}), timeout=5)
    assert completion.tool_calls[0]["function"]["name"] == "get_time"
    text = await a.complete(request(tools=TOOLS, extra={"tool_choice": "none"}), timeout=5)
    assert text.tool_calls is None and text.text


async def test_streamed_tool_call_is_name_first_then_argument_pieces() -> None:
    a = adapter()
    whole = await a.complete(request(tools=TOOLS), timeout=5)
    chunks = [c async for c in a.stream(request(tools=TOOLS), timeout=5)]
    head = chunks[0].tool_calls[0]
    assert head["index"] == 0 and head["function"] == {"name": "get_weather", "arguments": ""}
    assert head["id"] == whole.tool_calls[0]["id"]
    arguments = "".join(c.tool_calls[0]["function"]["arguments"] for c in chunks[1:-1])
    assert arguments == whole.tool_calls[0]["function"]["arguments"]
    assert chunks[-1].finish_reason == "tool_calls" and chunks[-1].usage == whole.usage
