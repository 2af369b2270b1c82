"""The responses function: OpenAI's Responses API over the chat flow.

POST   /v1/responses        create, `stream: true` as SSE (`event:` + `data:`); model =
                            deployment, provider, or "auto"; `previous_response_id`
                            continues a stored response of the same caller
GET    /v1/responses/{id}   a stored response (the caller's own)
DELETE /v1/responses/{id}   forget it

The translation is `core.responses`, the storage `core.response_store`, the request flow
`core.orchestrator` (cache, routing, failover, limits and the request log, as for
/v1/chat/completions, whose error mapping this shares).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from core import fastjson, response_store
from core.auth import Principal
from core.limits import LimitExceeded
from core.orchestrator import LLMRequest, NoDeployment, Orchestration, UnknownProvider
from core.providers.base import ProviderError
from core.response_store import Stored
from core.responses import CreateRequest, EventStream, InvalidRequest, finished
from core.services import Services
from functions.http import ApiError, JSONResponse, create_app, entry_points, services
from functions.llm import LLM, Float, Int, ReplyRouting, failure_of, no_deployment, on_behalf, refused, routing_headers
from functions.routing import LeanRoute

router = APIRouter(tags=["responses"], route_class=LeanRoute)

# `include` asks for extras of output this gateway never makes (reasoning, searches,
# code runs, input images echoed), so there is nothing to add; except for this one.
_UNSUPPORTED_INCLUDE = {"message.output_text.logprobs"}


class TextOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: dict[str, Any] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: str | None = None

    @field_validator("summary")
    @classmethod
    def _no_summary(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError("reasoning summaries are not supported: chat models return none to relay")
        return value


class ResponseBody(ReplyRouting):
    """OpenAI's CreateResponse (what translates to a chat call), plus Orchesity's routing
    options. Anything else is refused by name: it would not mean what the caller meant."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    input: str | list[Any]
    instructions: str | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    max_output_tokens: Int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: Float | None = Field(default=None, ge=0, le=2)
    top_p: Float | None = Field(default=None, ge=0, le=1)
    text: TextOptions | None = None
    store: StrictBool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=128)
    stream: StrictBool | None = None
    stream_options: dict[str, StrictBool] | None = None  # include_obfuscation: there is none to turn off
    include: list[str] | None = None
    reasoning: ReasoningOptions | None = None
    truncation: Literal["disabled"] | None = None  # "auto" would drop input: refused
    background: Literal[False] | None = None
    service_tier: str | None = None                # passed on to the chat call, as are these two
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None:  # OpenAI's limits, so what works here works there
            if len(value) > 16:
                raise ValueError("at most 16 keys")
            for key, text in value.items():
                if len(key) > 64 or len(text) > 512:
                    raise ValueError(f"{key[:64]!r}: keys are at most 64 characters, values at most 512")
        return value

    @field_validator("include")
    @classmethod
    def _include(cls, value: list[str] | None) -> list[str] | None:
        for name in value or ():
            if name in _UNSUPPORTED_INCLUDE:
                raise ValueError(f"{name} is not supported")
        return value

    @field_validator("stream_options")
    @classmethod
    def _stream_options(cls, value: dict[str, bool] | None) -> dict[str, bool] | None:
        for name in value or ():
            if name != "include_obfuscation":
                raise ValueError(f"unknown stream option {name!r}")
        return value


def _create_request(body: ResponseBody) -> CreateRequest:
    extra: dict[str, Any] = {name: value for name in ("service_tier", "safety_identifier", "prompt_cache_key")
                             if (value := getattr(body, name)) is not None}
    if body.reasoning is not None and body.reasoning.effort is not None:
        extra["reasoning_effort"] = body.reasoning.effort
    if body.text is not None and body.text.verbosity is not None:
        extra["verbosity"] = body.text.verbosity
    try:
        return CreateRequest.checked(
            model=body.model, input=body.input, instructions=body.instructions, tools=body.tools,
            tool_choice=body.tool_choice, parallel_tool_calls=body.parallel_tool_calls,
            text=body.text.model_dump(exclude_none=True) if body.text else None,
            max_output_tokens=body.max_output_tokens, temperature=body.temperature, top_p=body.top_p,
            user=body.user, metadata=body.metadata or {}, previous_response_id=body.previous_response_id,
            store=body.store is not False, extra=extra)
    except InvalidRequest as exc:
        raise _invalid(exc) from None


def _invalid(exc: InvalidRequest) -> ApiError:
    return ApiError(400, str(exc), param=exc.param, code="invalid_value")


def _not_found(response_id: str, param: str | None) -> ApiError:
    # The same answer whether it never existed, expired, or is another caller's.
    return ApiError(404, f"no stored response {response_id!r}: unknown, expired, created with store: false, "
                         "or not yours", type="invalid_request_error", param=param,
                    code="previous_response_not_found" if param else "response_not_found")


def _response_id(orchestration: Orchestration) -> str:
    return "resp_" + orchestration.request_id.removeprefix("req_")


@router.post("/v1/responses")
async def create(body: ResponseBody, svc: Services = Depends(services), caller: Principal = LLM) -> Any:
    request = _create_request(body)
    prior: list[dict[str, Any]] = []
    if request.previous_response_id is not None:
        previous = await response_store.load(svc.kv, svc.db, request.previous_response_id, caller.id)
        if previous is None:
            raise _not_found(request.previous_response_id, "previous_response_id")
        prior = previous.continued
    try:
        chat = request.chat(prior)
    except InvalidRequest as exc:
        raise _invalid(exc) from None
    llm = on_behalf(caller, chat=chat, targets=None if body.model == "auto" else [body.model],
                   endpoint="responses", **body.routing())
    conversation = [*prior, *request.items]
    if body.stream:
        return await _stream(svc, llm, request, caller, conversation)
    created_at = int(time.time())
    try:
        orchestration = await svc.orchestrator.complete(llm)
    except (UnknownProvider, LimitExceeded) as exc:
        raise refused(llm, exc) from None
    except NoDeployment as exc:
        raise no_deployment(exc) from None
    headers = routing_headers(orchestration, llm)
    failure = failure_of(orchestration.results)
    if failure is not None:
        status, error = failure
        return JSONResponse({"error": error}, status_code=status, headers=headers)
    response = finished(request, _response_id(orchestration), orchestration.results[0], created_at)
    if request.store:
        await _store(svc, caller, conversation, response)
    return JSONResponse(response, headers=headers)


async def _store(svc: Services, caller: Principal, conversation: list[dict[str, Any]],
                 response: dict[str, Any]) -> None:
    await response_store.save(svc.kv, svc.db, Stored(caller.id, conversation, response),
                              svc.settings.RESPONSES_TTL_SECONDS)


async def _stream(svc: Services, llm: LLMRequest, request: CreateRequest, caller: Principal,
                  conversation: list[dict[str, Any]]) -> Any:
    try:
        orchestration, chunks = await svc.orchestrator.stream(llm)
    except (UnknownProvider, LimitExceeded) as exc:
        raise refused(llm, exc) from None
    except NoDeployment as exc:
        raise no_deployment(exc) from None
    failure = failure_of(orchestration.results)
    if failure is not None:  # failed before the first token (every deployment tried): an error status
        status, error = failure
        return JSONResponse({"error": error}, status_code=status, headers=routing_headers(orchestration, llm))
    result = orchestration.results[0]
    events = EventStream(request, _response_id(orchestration), result.model or request.model)

    async def body() -> AsyncIterator[str]:
        for event in events.start():
            yield _sse(event)
        try:
            async for chunk in chunks:
                if chunk.is_final:
                    finish = events.finish(chunk, result.model)
                    if request.store:  # stored before the caller reads that it is done
                        await _store(svc, caller, conversation, events.response)
                    for event in finish:
                        yield _sse(event)
                else:
                    for event in events.chunk(chunk):
                        yield _sse(event)
        except ProviderError as exc:
            for event in events.fail(f"the stream failed after it started: {exc.error_class}"):
                yield _sse(event)

    headers = routing_headers(orchestration, llm) | {"cache-control": "no-cache"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


def _sse(event: dict[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {fastjson.dumps(event).decode()}\n\n"


@router.get("/v1/responses/{response_id}")
async def retrieve(response_id: str, svc: Services = Depends(services), caller: Principal = LLM) -> Any:
    stored = await response_store.load(svc.kv, svc.db, response_id, caller.id)
    if stored is None:
        raise _not_found(response_id, None)
    return JSONResponse(stored.response)


@router.delete("/v1/responses/{response_id}")
async def delete(response_id: str, svc: Services = Depends(services), caller: Principal = LLM) -> Any:
    if not await response_store.delete(svc.kv, svc.db, response_id, caller.id):
        raise _not_found(response_id, None)
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


__getattr__ = entry_points(lambda: create_app(router, title="Orchesity responses", routes_llm=True,
                                              drains_log=True))
