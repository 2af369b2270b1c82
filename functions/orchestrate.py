"""The orchestrate function: the seed's API and an OpenAI-compatible one.

POST /api/llm/orchestrate   seed v2 format: one or several providers, or the DWA's pick
POST /v1/chat/completions    OpenAI's schema, `stream: true` as SSE; model = deployment,
                             provider, or "auto"; `n` > 1: n calls at once, one per choice
POST /v1/embeddings          OpenAI's schema; routed by the DWA among deployments serving embeddings
GET  /v1/models              the deployments (and what each `serves`), and "auto"
GET  /api/llm/providers      configured providers, model and status (never a key)

Only HTTP concerns live here; the request flow is `core.orchestrator`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from core import fastjson, openai_wire
from core.auth import Principal, Scope
from core.cache import CachePolicy
from core.json_schema import schema_problem
from core.limits import LimitExceeded
from core.orchestrator import LLMRequest, NoDeployment, Orchestration, Result, UnknownProvider
from core.providers.base import ChatRequest, Chunk, EmbeddingRequest, ProviderError
from core.providers.vectors import encode_base64
from core.services import Services
from functions.http import JSONResponse, create_app, entry_points, error_body, services
from functions.llm import (LLM, Float, Int, ReplyRouting, Routing, failure_of, no_deployment, on_behalf, refused,
                           routing_headers)
from functions.routing import LeanRoute

router = APIRouter(tags=["orchestrate"], route_class=LeanRoute)

class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @field_validator("tool_calls")
    @classmethod
    def _function_calls_are_named_with_arguments(cls, calls: list[dict[str, Any]] | None) -> Any:
        for index, call in enumerate(calls or ()):
            if call.get("type", "function") != "function":
                continue
            if not isinstance(call.get("id"), str):
                raise ValueError(f"tool_calls[{index}].id must be the call's id (a string)")
            function = call.get("function")
            if not isinstance(function, dict) or not isinstance(function.get("name"), str) \
                    or not isinstance(function.get("arguments"), str):
                raise ValueError(f"tool_calls[{index}].function must be an object with the function's name "
                                 "and its arguments (both strings)")
        return calls


class _Sampling(ReplyRouting):
    """Parameters both APIs share."""

    max_tokens: Int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: Float | None = Field(default=None, ge=0, le=2)
    top_p: Float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: Int | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None
    stream: StrictBool = False

    @field_validator("tools")
    @classmethod
    def _function_tools_are_named_with_a_schema(cls, tools: list[dict[str, Any]] | None) -> Any:
        for index, tool in enumerate(tools or ()):
            if tool.get("type", "function") != "function":
                continue  # another kind of tool: the provider's to judge
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if not isinstance(name, str) or not name:
                raise ValueError(f"tools[{index}].function must be an object with the function's name (a string)")
            problem = schema_problem(function["parameters"]) if "parameters" in function else None
            if problem is not None:
                raise ValueError(f"tools[{index}].function.parameters {problem}")
        return tools

    @field_validator("response_format")
    @classmethod
    def _json_schema_is_one(cls, response_format: dict[str, Any] | None) -> Any:
        if response_format is not None and response_format.get("type") == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or "schema" not in spec:
                raise ValueError("response_format.json_schema must be an object holding the schema")
            problem = schema_problem(spec["schema"])
            if problem is not None:
                raise ValueError(f"response_format.json_schema.schema {problem}")
        return response_format


class OrchestrateBody(_Sampling):
    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    messages: list[Message] | None = None
    providers: list[str] | None = Field(default=None, max_length=16)
    mode: Literal["all", "race"] = "all"

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("prompt is empty")
        return value

    @model_validator(mode="after")
    def _one_input(self) -> "OrchestrateBody":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages (exactly one)")
        if self.messages is not None and not self.messages:
            raise ValueError("messages is empty")
        if self.providers is not None and not self.providers:
            raise ValueError("providers is empty; omit it to let the DWA pick")
        if self.stream and self.providers and len(self.providers) > 1:
            raise ValueError("stream works with one provider (or none: the DWA picks)")
        return self


MAX_CHOICES = 16  # n: each choice is a call of its own (see chat_completions)


class ChatCompletionBody(_Sampling):
    """OpenAI's CreateChatCompletionRequest (what we act on; the rest passes through)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Int | None = Field(default=None, ge=1, le=1_000_000)
    n: Int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    stream_options: dict[str, Any] | None = None
    user: str | None = None


def _chat(body: _Sampling, messages: list[dict[str, Any]], extra: dict[str, Any]) -> ChatRequest:
    return ChatRequest(messages=messages, max_tokens=body.max_tokens, temperature=body.temperature,
                       top_p=body.top_p, stop=body.stop, tools=body.tools,
                       response_format=body.response_format, seed=body.seed,
                       user=getattr(body, "user", None), extra=extra)


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    return [m.model_dump(exclude_none=True) for m in messages]


async def _run(svc: Services, request: LLMRequest) -> Orchestration:
    try:
        if request.embedding is not None:
            return await svc.orchestrator.embed(request)
        return await svc.orchestrator.complete(request)
    except (UnknownProvider, LimitExceeded) as exc:
        raise refused(request, exc) from None
    except NoDeployment as exc:
        raise no_deployment(exc) from None


# -- the seed API --------------------------------------------------------------------------------


def _result_json(result: Result) -> dict[str, Any]:
    usage = result.usage
    return {
        "provider": result.provider,
        "model": result.model,
        "response": result.text,
        "response_time": round(result.response_time, 4),
        "tokens_used": usage.total_tokens if usage else 0,
        "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                  "total_tokens": usage.total_tokens} if usage else None,
        "cached": result.cached,
        "dwa_score": round(result.dwa_score, 4) if result.dwa_score is not None else None,
        "finish_reason": result.finish_reason,
        "cost": round(result.cost, 8),
        "logprobs": result.logprobs,
        "error": result.error,
    }


def _orchestrate_json(orchestration: Orchestration, mode: str) -> dict[str, Any]:
    results = orchestration.results
    reasons = [r.selection_reason for r in results if r.selection_reason]
    return {
        "request_id": orchestration.request_id,
        "results": [_result_json(r) for r in results],
        "metadata": {
            "total_response_time": round(orchestration.total_time, 4),
            "cached_response": orchestration.cached,
            "dwa_selection_reason": reasons[0] if len(set(reasons)) == 1 else (reasons or None),
            "database_logged": orchestration.database_logged,
            "cost": round(sum(r.cost for r in results), 8),
            "providers_tried": orchestration.providers_tried,
            "strategy": orchestration.strategy.value,
            "mode": mode,
            "overhead_ms": round(orchestration.overhead_ms, 3),
        },
    }


@router.post("/api/llm/orchestrate")
async def orchestrate(body: OrchestrateBody, svc: Services = Depends(services), caller: Principal = LLM) -> Any:
    if body.prompt is not None:
        messages = [{"role": "user", "content": body.prompt}]
    else:
        messages = _messages(body.messages or [])
    request = on_behalf(caller, chat=_chat(body, messages, {}), targets=body.providers, mode=body.mode,
                       endpoint="orchestrate", **body.routing())
    if body.stream:
        return await _stream(svc, request, _seed_events)
    orchestration = await _run(svc, request)
    payload = _orchestrate_json(orchestration, body.mode)
    failure = failure_of(orchestration.results)
    status = 200
    if failure is not None:
        status, payload["error"] = failure
    return JSONResponse(payload, status_code=status, headers=routing_headers(orchestration, request))


# -- the OpenAI-compatible API ------------------------------------------------------------------


def _completion_json(orchestration: Orchestration, result: Result, requested: str) -> dict[str, Any]:
    return {**openai_wire.completion(result, requested, _completion_id(orchestration)),
            "orchesity": {"provider": result.provider, "cached": result.cached,
                          "dwa_score": result.dwa_score, "dwa_selection_reason": result.selection_reason,
                          "request_id": orchestration.request_id, "cost": result.cost,
                          "database_logged": orchestration.database_logged}}


def _completion_id(orchestration: Orchestration) -> str:
    return "chatcmpl-" + orchestration.request_id.removeprefix("req_")


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionBody, svc: Services = Depends(services),
                           caller: Principal = LLM) -> Any:
    extra = dict(body.model_extra or {})
    if body.max_tokens is None and body.max_completion_tokens is not None:
        body.max_tokens = body.max_completion_tokens
    targets = None if body.model == "auto" else [body.model]
    request = on_behalf(caller, chat=_chat(body, _messages(body.messages), extra), targets=targets,
                       endpoint="chat.completions", **body.routing())
    if (body.n or 1) > 1:
        return await _choices(svc, request, body.n or 1, body.model, body.stream)
    if body.stream:
        return await _stream(svc, request, _openai_events(body.model))
    orchestration = await _run(svc, request)
    result = orchestration.results[0]
    failure = failure_of(orchestration.results)
    if failure is not None:
        status, error = failure
        return JSONResponse({"error": error}, status_code=status, headers=routing_headers(orchestration, request))
    return JSONResponse(_completion_json(orchestration, result, body.model), headers=routing_headers(orchestration, request))


async def _all(work: list[Awaitable[Any]]) -> list[Any]:
    """Every result of `work`, run at once; on the first exception the rest are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _choices(svc: Services, request: LLMRequest, n: int, requested: str, stream: bool) -> Any:
    """`n` choices: `n` calls at once, each routed by the DWA on its own (so a fleet spreads
    them), none read from or written to the cache (n samples, not one n times). Each
    counts against the caller's limits and has its row in the request log. Any choice
    failing fails the request, as one call would."""
    fresh = CachePolicy(no_cache=True, no_store=True, namespace=request.cache.namespace)
    requests = [replace(request, cache=fresh) for _ in range(n)]
    if stream:
        return await _stream_choices(svc, requests, requested)
    orchestrations = await _all([_run(svc, r) for r in requests])
    for orchestration, one in zip(orchestrations, requests):
        failure = failure_of(orchestration.results)
        if failure is not None:
            status, error = failure
            return JSONResponse({"error": error}, status_code=status, headers=routing_headers(orchestration, one))
    first = orchestrations[0]
    answer = _completion_json(first, first.results[0], requested)
    answer["choices"] = [{**openai_wire.completion(o.results[0], requested)["choices"][0], "index": i}
                         for i, o in enumerate(orchestrations)]
    answer["usage"] = _summed([openai_wire.usage(o.results[0]) for o in orchestrations])
    answer["orchesity"]["providers"] = [o.results[0].provider for o in orchestrations]
    answer["orchesity"]["cost"] = sum(o.results[0].cost for o in orchestrations)
    return JSONResponse(answer, headers=routing_headers(first, requests[0]))


def _summed(usages: list[dict[str, int]]) -> dict[str, int]:
    return {name: sum(u[name] for u in usages) for name in ("prompt_tokens", "completion_tokens", "total_tokens")}


MAX_EMBEDDING_INPUTS = 2048  # OpenAI's own limit per request


class EmbeddingBody(Routing):
    """OpenAI's CreateEmbeddingRequest, text inputs only; plus Orchesity's routing options."""

    model_config = ConfigDict(extra="forbid")

    input: list[str]  # a string is taken as a list of one
    model: str = Field(min_length=1)
    dimensions: Int | None = Field(default=None, ge=1, le=8192)
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ValueError("give a string or a list of strings")
        if not value:
            raise ValueError("input is empty")
        if len(value) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs per request, got {len(value)}")
        for index, item in enumerate(value):
            if isinstance(item, (int, list)) and not isinstance(item, bool):
                raise ValueError("token arrays are not supported: send the text itself")
            if not isinstance(item, str):
                raise ValueError(f"input[{index}] is {type(item).__name__}, not a string")
            if not item:
                raise ValueError(f"input[{index}] is an empty string")
        return value


def _embeddings_json(orchestration: Orchestration, result: Result, body: EmbeddingBody) -> dict[str, Any]:
    vectors = result.vectors or []
    if body.encoding_format == "base64":
        data = [{"object": "embedding", "index": i, "embedding": encode_base64(v)} for i, v in enumerate(vectors)]
    else:
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    usage = result.usage
    return {
        "object": "list",
        "data": data,
        "model": result.model or body.model,
        "usage": {"prompt_tokens": usage.prompt_tokens if usage else 0,
                  "total_tokens": usage.total_tokens if usage else 0},
        "orchesity": {"provider": result.provider, "cached": result.cached,
                      "dwa_score": result.dwa_score, "dwa_selection_reason": result.selection_reason,
                      "request_id": orchestration.request_id, "cost": result.cost,
                      "database_logged": orchestration.database_logged},
    }


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingBody, svc: Services = Depends(services), caller: Principal = LLM) -> Any:
    embedding = EmbeddingRequest(input=body.input, model=body.model, dimensions=body.dimensions,
                                 user=body.user, encoding_format=body.encoding_format)
    request = on_behalf(caller, embedding=embedding, targets=None if body.model == "auto" else [body.model],
                       endpoint="embeddings", **body.routing())
    orchestration = await _run(svc, request)
    headers = routing_headers(orchestration, request)
    failure = failure_of(orchestration.results)
    if failure is not None:
        status, error = failure
        return JSONResponse({"error": error}, status_code=status, headers=headers)
    return JSONResponse(_embeddings_json(orchestration, orchestration.results[0], body), headers=headers)


@router.get("/v1/models", dependencies=[LLM])
async def models(svc: Services = Depends(services)) -> dict[str, Any]:
    registry = svc.orchestrator.registry
    data: list[dict[str, Any]] = [{"id": "auto", "object": "model", "created": 0, "owned_by": "orchesity"}]
    # `serves` is ours: OpenAI's Model schema allows properties beyond its own.
    data += [{"id": a.name, "object": "model", "created": 0, "owned_by": a.spec.provider,
              "serves": list(a.spec.serves)} for a in registry]
    return {"object": "list", "data": data}


# Where a deployment lives and which variable holds its key are the operator's business.
_ADMIN_ONLY = ("base_url", "api_key_env")


@router.get("/api/llm/providers")
async def providers(svc: Services = Depends(services), caller: Principal = LLM) -> dict[str, Any]:
    orchestrator = svc.orchestrator
    registry = orchestrator.registry
    stats = await orchestrator.router.stats(registry.names, time.time())
    listed = []
    for described in registry.describe():
        if not caller.allows(Scope.admin):
            for name in _ADMIN_ONLY:
                described.pop(name, None)
        state = stats.get(described["name"], {})
        circuit = state.get("circuit_state", "closed")
        described["status"] = "available" if circuit == "closed" else circuit
        described["in_flight"] = state.get("in_flight", 0)
        listed.append(described)
    return {"providers": listed, "default_strategy": orchestrator.router.strategy.value}


# -- streaming ----------------------------------------------------------------------------------

EventWriter = Any  # (orchestration, chunk | None, error | None) -> SSE text


async def _open(svc: Services, request: LLMRequest) -> tuple[Orchestration, AsyncIterator[Chunk]]:
    """A stream under way (its first token in hand), or the refusal as an ApiError."""
    try:
        return await svc.orchestrator.stream(request)
    except (UnknownProvider, LimitExceeded) as exc:
        raise refused(request, exc) from None
    except NoDeployment as exc:
        raise no_deployment(exc) from None


async def _stream(svc: Services, request: LLMRequest, events: EventWriter) -> Any:
    orchestration, chunks = await _open(svc, request)
    failure = failure_of(orchestration.results)
    if failure is not None:  # failed before the first token: an ordinary error response
        status, error = failure
        return JSONResponse({"error": error}, status_code=status, headers=routing_headers(orchestration, request))

    async def body() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield events(orchestration, chunk, None)
        except ProviderError as exc:
            yield events(orchestration, None, exc)
            return
        yield "data: [DONE]\n\n"

    headers = routing_headers(orchestration, request) | {"cache-control": "no-cache"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


async def _stream_choices(svc: Services, requests: list[LLMRequest], requested: str) -> Any:
    """n streams as one: each choice's chunks under its `index`, as they come, then one
    usage chunk for them all. A stream failing before its first token fails the request;
    after it, the stream ends with the error event."""
    opened = await _all([_open(svc, r) for r in requests])
    for (orchestration, chunks), one in zip(opened, requests):
        failure = failure_of(orchestration.results)
        if failure is not None:
            for _, others in opened:
                await _close(others)
            status, error = failure
            return JSONResponse({"error": error}, status_code=status, headers=routing_headers(orchestration, one))
    first = opened[0][0]
    writers = [_openai_events(requested, index=i, completion_id=_completion_id(first)) for i in range(len(opened))]
    queue: asyncio.Queue[tuple[int, Chunk | None, ProviderError | None]] = asyncio.Queue()

    async def pump(index: int, chunks: AsyncIterator[Chunk]) -> None:
        try:
            async for chunk in chunks:
                await queue.put((index, chunk, None))
            await queue.put((index, None, None))
        except ProviderError as exc:
            await queue.put((index, None, exc))

    async def body() -> AsyncIterator[str]:
        pumps = [asyncio.create_task(pump(i, chunks)) for i, (_, chunks) in enumerate(opened)]
        usages, running = [], len(pumps)
        try:
            while running:
                index, chunk, error = await queue.get()
                if error is not None:
                    yield writers[index](opened[index][0], None, error)
                    return
                if chunk is None:
                    running -= 1
                    continue
                if chunk.usage is not None:
                    usages.append(chunk.usage)
                yield writers[index](opened[index][0], chunk, None)
            created = int(time.time())
            yield _sse({"id": _completion_id(first), "object": "chat.completion.chunk", "created": created,
                        "model": first.results[0].model or requested, "choices": [],
                        "usage": _summed([openai_wire.usage_of(u) for u in usages])})
            yield "data: [DONE]\n\n"
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for _, chunks in opened:
                await _close(chunks)

    headers = routing_headers(first, requests[0]) | {"cache-control": "no-cache"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


async def _close(chunks: AsyncIterator[Chunk]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {fastjson.dumps(payload).decode()}\n\n"


def _error_event(exc: ProviderError) -> str:
    return _sse(error_body(f"the stream failed after it started: {exc.error_class}",
                           type="provider_error", code=exc.error_class))


def _openai_events(requested: str, index: int = 0, completion_id: str | None = None) -> EventWriter:
    """The chunks of one choice (`index`). Choice 0 alone also ends with the usage chunk;
    the choices of n > 1 leave it to _stream_choices, which sums them."""
    created = int(time.time())
    started = False

    def write(orchestration: Orchestration, chunk: Chunk | None, error: ProviderError | None) -> str:
        nonlocal started
        if error is not None:
            return _error_event(error)
        assert chunk is not None
        result = orchestration.results[0]
        base = {"id": completion_id or _completion_id(orchestration), "object": "chat.completion.chunk",
                "created": created, "model": result.model or requested}
        if chunk.is_final:
            out = ""
            if chunk.finish_reason:
                out += _sse({**base, "choices": [{"index": index, "delta": {}, "finish_reason": chunk.finish_reason,
                                                   "logprobs": None}]})
            if completion_id is not None or chunk.usage is None:
                return out
            return out + _sse({**base, "choices": [], "usage": openai_wire.usage_of(chunk.usage)})
        delta: dict[str, Any] = {}
        if not started:
            delta["role"] = "assistant"
            started = True
        if chunk.text:
            delta["content"] = chunk.text
        if chunk.tool_calls:
            delta["tool_calls"] = chunk.tool_calls
        return _sse({**base, "choices": [{"index": index, "delta": delta, "finish_reason": chunk.finish_reason,
                                          "logprobs": openai_wire.logprobs(chunk.logprobs)}]})

    return write


def _seed_events(orchestration: Orchestration, chunk: Chunk | None, error: ProviderError | None) -> str:
    """The seed API's stream: `delta` events, then the whole v2 response as `done`."""
    if error is not None:
        return _error_event(error)
    assert chunk is not None
    if chunk.is_final:
        result = orchestration.results[0]
        return _sse({"type": "done", **_orchestrate_json(orchestration, "all"),
                     "usage": {"total_tokens": chunk.usage.total_tokens} if chunk.usage else None,
                     "provider": result.provider})
    return _sse({"type": "delta", "request_id": orchestration.request_id, "delta": chunk.text})


__getattr__ = entry_points(lambda: create_app(router, title="Orchesity orchestrate", routes_llm=True,
                                              drains_log=True))
