"""What the LLM surfaces share (/api/llm/orchestrate, /v1/chat/completions, /v1/embeddings,
/v1/messages, /v1/responses): their scope, strict numbers, the routing fields, the request
made on a caller's behalf, the routing headers, and how a refusal or a failure becomes
an OpenAI-shaped error (the Messages API shapes its own, functions/messages.py).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from fastapi import Depends
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from core import limits as key_limits
from core.auth import Principal, Scope
from core.cache import DEFAULT_NAMESPACE, CachePolicy
from core.limits import LimitExceeded
from core.orchestrator import LLMRequest, NoDeployment, Orchestration, Result, UnknownProvider
from core.settings import RoutingStrategy
from functions.http import ApiError, require

LLM = Depends(require(Scope.llm))

# Strict numbers: `max_tokens: true` or `temperature: "0.5"` is a mistake to report,
# not a value to coerce (an int is still a valid float).
Int = Annotated[int, Field(strict=True)]
Float = Annotated[float, Field(strict=True)]


class CacheOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    no_cache: StrictBool = False
    no_store: StrictBool = False
    ttl: Int | None = Field(default=None, ge=1, le=30 * 24 * 3600)
    namespace: str = Field(default=DEFAULT_NAMESPACE, min_length=1, max_length=64,
                           pattern=r"^[A-Za-z0-9_.-]+$")

    def policy(self) -> CachePolicy:
        return CachePolicy(self.no_cache, self.no_store, self.ttl, self.namespace)


class Routing(BaseModel):
    """Orchesity's own fields of a request, the same on every LLM surface; each is off
    (the deployment's defaults) when absent."""

    strategy: RoutingStrategy | None = None
    cache: CacheOptions | None = None
    timeout: Float | None = Field(default=None, gt=0, le=600)

    def routing(self) -> dict[str, Any]:
        """These fields as LLMRequest's."""
        return {"strategy": self.strategy, "cache": self.cache.policy() if self.cache else CachePolicy(),
                "timeout": self.timeout}


class ReplyRouting(Routing):
    """...and the two of a call for a reply (chat completions, orchestrate, Messages,
    Responses; not embeddings)."""

    # Ask a second deployment if the first has not answered within this (off by default;
    # not for streams; "auto": twice the first's mean latency): the first answer wins, the
    # other call is cancelled, not failed.
    hedge_after_ms: Annotated[Int, Field(ge=1, le=600_000)] | Literal["auto"] | None = None
    # Route on this quantile of each deployment's latency (a stream's: of its time to
    # first token) instead of its mean (off by default): 0.95 sends the call where its
    # p95 is lowest.
    latency_quantile: Float | None = Field(default=None, ge=0.5, le=0.999)

    @field_validator("hedge_after_ms", mode="before")
    @classmethod
    def _hedge_is_ms_or_auto(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "auto":
            raise ValueError('hedge_after_ms is a number of milliseconds (1 to 600000), or "auto"')
        return value

    @model_validator(mode="after")
    def _no_hedged_stream(self) -> "ReplyRouting":
        if getattr(self, "stream", None) and self.hedge_after_ms is not None:
            raise ValueError("hedge_after_ms hedges whole replies, not streams: drop it or stream")
        return self

    def routing(self) -> dict[str, Any]:
        ms = self.hedge_after_ms
        return {**super().routing(), "hedge_after": ms if ms is None or ms == "auto" else ms / 1000.0,
                "latency_quantile": self.latency_quantile}


ROUTING_FIELDS = frozenset(ReplyRouting.model_fields)  # what a surface's own translation leaves out


def on_behalf(principal: Principal, **fields: Any) -> LLMRequest:
    """An LLMRequest on behalf of `principal`: its id in the log, its cache, its limits."""
    return LLMRequest(caller=None if principal.kind == "open" else principal.id, tenant=principal.tenant,
                      limits=principal.limits, **fields)


def routing_headers(orchestration: Orchestration, request: LLMRequest) -> dict[str, str]:
    """x-orchesity-request-id, -overhead-ms, -cached, -provider, and the key's limits."""
    first = orchestration.results[0] if orchestration.results else None
    headers = {
        "x-orchesity-request-id": orchestration.request_id,
        "x-orchesity-overhead-ms": f"{orchestration.overhead_ms:.3f}",
        "x-orchesity-cached": "true" if orchestration.cached else "false",
    }
    if first is not None and first.provider:
        headers["x-orchesity-provider"] = first.provider
    if orchestration.verdict is not None and request.limits is not None:
        headers.update(key_limits.headers(orchestration.verdict, request.limits))
    retry_after = first.error.get("retry_after") if first is not None and first.error else None
    if retry_after is not None:  # the deployments are rate limited: when one takes requests again
        headers["retry-after"] = str(max(1, math.ceil(retry_after)))
    return headers


def refused(request: LLMRequest, exc: UnknownProvider | LimitExceeded) -> ApiError:
    if isinstance(exc, LimitExceeded):
        budget = exc.verdict.limit is not None and exc.verdict.limit.startswith("budget")
        return ApiError(429, str(exc), type="rate_limit_exceeded" if not budget else "insufficient_quota",
                        code=exc.verdict.limit, headers=key_limits.headers(exc.verdict, exc.limits))
    return ApiError(400, str(exc), param="providers" if request.endpoint == "orchestrate" else "model",
                    code="unknown_provider")


def no_deployment(exc: NoDeployment) -> ApiError:
    return ApiError(503, str(exc), type="service_unavailable", param="model", code="no_deployment")


def failure_of(results: list[Result]) -> tuple[int, dict[str, Any]] | None:
    """When nothing succeeded: the status and error object the caller should get."""
    if any(r.ok for r in results) or not results:
        return None
    error = results[0].error or {}
    status = int(error.get("status") or 502)
    message = error.get("message") or "the provider call failed"
    if error.get("provider"):
        message = f"{error['provider']}: {message}"
    kind = "rate_limit_exceeded" if status == 429 else "invalid_request_error" if 400 <= status < 500 \
        else "provider_error"
    return status, {"type": kind, "message": message, "param": None, "code": error.get("type")}
