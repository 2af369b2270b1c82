"""The messages function: Anthropic's Messages API in front of every deployment.

POST /v1/messages               Anthropic's schema, `stream: true` as its SSE events; `model`
                                as for /v1/chat/completions (a deployment, a provider, a
                                model deployments serve, or "auto")
POST /v1/messages/count_tokens  {"input_tokens": N}, counted by core/providers/tokens.py

Point the anthropic SDK or LangChain's ChatAnthropic at the gateway's root URL. A request
goes through the orchestrator as a chat request does (cache, DWA, failover, keys, limits,
the request log), so any family may serve it. Errors have Anthropic's shape,
`{"type": "error", "error": {"type", "message"}}`. The translation is core/anthropic_format.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from core import anthropic_format, fastjson
from core import limits as key_limits
from core.anthropic_format import MalformedReply, Untranslatable
from core.auth import Principal
from core.limits import LimitExceeded
from core.orchestrator import LLMRequest, NoDeployment, NotServed, Orchestration, UnknownProvider
from core.providers import tokens
from core.providers.base import ProviderError
from core.services import Services
from functions.http import (ApiError, JSONResponse, create_app, entry_points, http_error_message, problems_text,
                            services, validation_problems)
from functions.llm import LLM, ROUTING_FIELDS, Float, Int, ReplyRouting, on_behalf, routing_headers
from functions.routing import Handler, LeanRoute

# The anthropic-version values the surface accepts (what Anthropic's API and SDKs send);
# answers have the Messages API's shape of 2023-06-01, which later versions extend.
VERSIONS = ("2023-06-01", "2023-01-01", "2026-10-21")

# HTTP status -> Anthropic's error type
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return JSONResponse({"type": "error", "error": {"type": kind, "message": message}}, status_code=status,
                        headers=headers)


class AnthropicRoute(LeanRoute):
    """A route whose errors, its key's and its body's included, have Anthropic's shape."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return _error(exc.status, exc.message, exc.headers)
            except RequestValidationError as exc:
                return _error(400, problems_text(validation_problems(request, exc)))
            except StarletteHTTPException as exc:  # FastAPI's, for a body it could not read
                return _error(exc.status_code, http_error_message(exc), getattr(exc, "headers", None))

        return route


router = APIRouter(tags=["messages"], route_class=AnthropicRoute)


class Metadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str | None = None


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: StrictBool | None = None


class _Prompt(BaseModel):
    """What a Messages request and a count_tokens request share."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice | None = None
    thinking: dict[str, Any] | None = None


class MessagesBody(_Prompt, ReplyRouting):
    """Anthropic's MessageCreateParams, plus Orchesity's routing fields (functions.llm);
    a field it has that the gateway cannot serve is refused."""

    max_tokens: Int = Field(ge=1, le=1_000_000)
    stop_sequences: list[str] | None = None
    temperature: Float | None = Field(default=None, ge=0, le=1)
    top_p: Float | None = Field(default=None, ge=0, le=1)
    top_k: Int | None = Field(default=None, ge=0)
    metadata: Metadata | None = None
    stream: StrictBool = False


def _version(request: Request) -> None:
    version = request.headers.get("anthropic-version")
    if version is not None and version not in VERSIONS:
        raise ApiError(400, f"anthropic-version: {version!r} is not a known version (send {VERSIONS[0]})")
    if request.headers.get("anthropic-beta"):
        raise ApiError(400, "anthropic-beta: beta features are not served through the gateway")


def _translate(body: _Prompt, max_tokens: int = 1) -> Any:
    fields = body.model_dump(exclude_none=True, exclude=ROUTING_FIELDS)
    fields.setdefault("max_tokens", max_tokens)
    try:
        return anthropic_format.chat_request(fields)
    except Untranslatable as exc:
        raise ApiError(400, str(exc)) from None


def _refused(exc: Exception) -> ApiError:
    if isinstance(exc, LimitExceeded):
        return ApiError(429, str(exc), headers=key_limits.headers(exc.verdict, exc.limits))
    if isinstance(exc, NoDeployment):
        return ApiError(503, str(exc))
    return ApiError(400 if isinstance(exc, NotServed) else 404, f"model: {exc}")


def _headers(orchestration: Orchestration, request: LLMRequest) -> dict[str, str]:
    return {"request-id": orchestration.request_id, **routing_headers(orchestration, request)}


def _failure(orchestration: Orchestration) -> tuple[int, str] | None:
    result = orchestration.results[0]
    if result.ok:
        return None
    error = result.error or {}
    message = error.get("message") or "the provider call failed"
    return int(error.get("status") or 502), f"{error['provider']}: {message}" if error.get("provider") else message


def _message_id(orchestration: Orchestration) -> str:
    return "msg_" + orchestration.request_id.removeprefix("req_")




@router.post("/v1/messages")
async def messages(request: Request, body: MessagesBody, svc: Services = Depends(services),
                   caller: Principal = LLM) -> Any:
    _version(request)
    chat = _translate(body)
    llm = on_behalf(caller, chat=chat, targets=None if body.model == "auto" else [body.model], endpoint="messages",
                    **body.routing())
    if body.stream:
        return await _stream(svc, llm, body.model)
    try:
        orchestration = await svc.orchestrator.complete(llm)
    except (UnknownProvider, LimitExceeded, NoDeployment) as exc:
        raise _refused(exc) from None
    headers = _headers(orchestration, llm)
    failure = _failure(orchestration)
    if failure is not None:
        return _error(*failure, headers=headers)
    try:
        answer = anthropic_format.message(orchestration.results[0], message_id=_message_id(orchestration),
                                          model=body.model)
    except MalformedReply as exc:
        return _error(502, f"{orchestration.results[0].provider}: {exc}", headers=headers)
    return JSONResponse(answer, headers=headers)


async def _stream(svc: Services, llm: LLMRequest, requested: str) -> Any:
    """Anthropic's event stream: a failure before the first token fails over (or answers
    with an error status, as a plain call does); one after it ends with an `error` event."""
    try:
        orchestration, chunks = await svc.orchestrator.stream(llm)
    except (UnknownProvider, LimitExceeded, NoDeployment) as exc:
        raise _refused(exc) from None
    headers = _headers(orchestration, llm)
    failure = _failure(orchestration)
    if failure is not None:
        return _error(*failure, headers=headers)
    assert llm.chat is not None
    writer = anthropic_format.StreamWriter(message_id=_message_id(orchestration), model=requested,
                                           input_tokens=tokens.count_messages(llm.chat.messages, requested))

    async def events() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield writer.write(chunk, orchestration.results[0].model)
        except ProviderError as exc:
            kind = "overloaded_error" if exc.error_class in ("unavailable", "busy") else "api_error"
            yield writer.error(kind, f"the stream failed after it started: {exc.error_class}")

    return StreamingResponse(events(), media_type="text/event-stream", headers=headers | {"cache-control": "no-cache"})


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request, body: _Prompt, svc: Services = Depends(services),
                       caller: Principal = LLM) -> Any:
    _version(request)
    chat = _translate(body)
    if body.model != "auto" and not svc.orchestrator.registry.resolve(body.model, "chat"):
        raise ApiError(404, f"model: {body.model!r} names no deployment serving chat")
    counted = tokens.count_messages(chat.messages, body.model)
    if chat.tools:
        counted += tokens.count_text(fastjson.dumps(chat.tools).decode(), body.model)
    return {"input_tokens": counted}


__getattr__ = entry_points(lambda: create_app(router, title="Orchesity messages", routes_llm=True,
                                              drains_log=True))
