"""What every provider adapter speaks: the request, the reply types, the errors.

The orchestrator only ever sees these types. An adapter turns one `ChatRequest` into
either a `Completion` or a stream of `Chunk`s, one `EmbeddingRequest` into `Embeddings`,
and every failure into one of the
`ProviderError` subclasses below, because failover is decided on the class alone:

    retryable (try the next deployment)     not retryable (back to the caller)
    ---------------------------------       -------------------------------------
    ProviderTimeout       no answer in time  ProviderClientError  4xx: the request
    ProviderUnavailable   connection / 5xx                        itself is refused
    ProviderStreamCut     stream ended early
    ProviderRateLimited   429 (retry_after)
    ProviderBadResponse   unparseable reply
    ProviderAuthError     401/403/404: this deployment's key, model or URL is wrong
    ProviderBusy          our own max_concurrency for the deployment is reached
    ProviderUnsupported   its protocol cannot express the request (a 400 if none can)

Replies are plain slotted dataclasses, not pydantic models: they are built once per
call on the hot path and never validated against user input.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from core.providers.config import DeploymentSpec

UsageSource = Literal["provider", "tiktoken", "estimate"]


@dataclass(slots=True)
class ChatRequest:
    """One chat completion request, provider-neutral (the OpenAI chat schema's fields).

    `extra` carries any other parameter (tool_choice, n, presence_penalty, a provider's
    own knobs...) through to the provider's body unchanged.
    """

    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None
    seed: int | None = None
    user: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Usage:
    """Token counts of one call; `source` says whether the provider reported them."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    source: UsageSource = "provider"

    @property
    def counted(self) -> bool:
        """True when we counted the tokens ourselves (the provider reported none)."""
        return self.source != "provider"


@dataclass(slots=True)
class Completion:
    """A finished, non-streamed reply."""

    text: str
    model: str
    finish_reason: str | None
    usage: Usage
    id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # as the provider sent them (OpenAI shape)
    logprobs: list[dict[str, Any]] | None = None  # the choice's logprobs.content, when asked for
    stop_sequence: str | None = None  # which of `stop` ended the reply, when the provider says (Anthropic)
    # The reply's rate-limit headers said no request (or token) is left: seconds until they
    # reset. The DWA then sends nothing more there until then, instead of meeting a 429.
    limit_reset_s: float | None = None


@dataclass(slots=True)
class Chunk:
    """One piece of a streamed reply.

    Content chunks carry `text` (and/or `tool_calls` deltas, and `logprobs` when the
    request asked for them). The last chunk of every
    successful stream carries `usage` (never None there), `finish_reason`, `model`,
    `id` and `stop_sequence` (when the provider names it), and no text; and
    `limit_reset_s` when the reply's limit headers said none is left (see Completion).
    """

    text: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: list[dict[str, Any]] | None = None  # this piece's logprobs.content entries
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None
    id: str | None = None
    stop_sequence: str | None = None
    limit_reset_s: float | None = None

    @property
    def is_final(self) -> bool:
        return self.usage is not None


@dataclass(slots=True)
class EmbeddingRequest:
    """One embeddings request, provider-neutral (the OpenAI embeddings schema's fields).

    `encoding_format` is how the caller wants the vectors on the wire; adapters always
    hand back floats (the gateway encodes), so it never changes what a provider is asked.
    """

    input: list[str]
    model: str | None = None            # what the caller asked for (routing resolved it already)
    dimensions: int | None = None       # None: the model's own size
    user: str | None = None
    encoding_format: Literal["float", "base64"] = "float"


@dataclass(slots=True)
class Embeddings:
    """The vectors of one embeddings call, in the order of the request's `input`."""

    vectors: list[list[float]]
    model: str
    usage: Usage  # completion_tokens is 0: embeddings only read


@runtime_checkable
class Adapter(Protocol):
    """A deployment the orchestrator can call. Built by `core.providers.registry`."""

    spec: DeploymentSpec

    @property
    def name(self) -> str: ...

    @property
    def in_flight(self) -> int:
        """Calls (and open streams) currently holding one of the deployment's slots."""
        ...

    async def complete(self, request: ChatRequest, *, timeout: float | None = None) -> Completion:
        """One reply. `timeout` bounds the whole call, queueing for a slot included."""
        ...

    def stream(self, request: ChatRequest, *, timeout: float | None = None) -> AsyncIterator[Chunk]:
        """Streamed reply. `timeout` bounds the wait for the first byte and each gap after."""
        ...

    async def embed(self, request: EmbeddingRequest, *, timeout: float | None = None) -> Embeddings:
        """One vector per input text. Only called on deployments whose spec serves embeddings."""
        ...

    async def aclose(self) -> None: ...


# --- errors -------------------------------------------------------------------------------


class ProviderError(Exception):
    """A provider call failed. `retryable`: another deployment may well succeed."""

    retryable: ClassVar[bool] = True
    error_class: ClassVar[str] = "provider_error"  # short, stable: logs, DWA, request log

    def __init__(
        self,
        message: str,
        *,
        deployment: str = "",
        status: int | None = None,
        retry_after: float | None = None,
        provider_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.deployment = deployment
        self.status = status
        self.retry_after = retry_after
        self.provider_message = provider_message

    def __str__(self) -> str:
        return f"{self.deployment}: {self.message}" if self.deployment else self.message

    def __repr__(self) -> str:
        extra = f", status={self.status}" if self.status is not None else ""
        if self.retry_after is not None:
            extra += f", retry_after={self.retry_after}"
        return f"{type(self).__name__}({self.message!r}, deployment={self.deployment!r}{extra})"


class ProviderTimeout(ProviderError):
    error_class = "timeout"


class ProviderFirstTokenLate(ProviderTimeout):
    """A stream's first token did not come within the gateway's first-token deadline
    (STREAM_FIRST_TOKEN_TIMEOUT), shorter than the call's timeout: a timeout of the
    provider's, never one the request's own deadline cut short."""


class ProviderUnavailable(ProviderError):
    """Connection refused/reset, DNS, TLS, or a 5xx (529 overloaded included)."""

    error_class = "unavailable"


class ProviderStreamCut(ProviderUnavailable):
    """The stream stopped before the provider said it was finished."""

    error_class = "stream_cut"


class ProviderRateLimited(ProviderError):
    """429. `retry_after` (seconds) comes from retry-after-ms / Retry-After when sent."""

    error_class = "rate_limited"


class ProviderBadResponse(ProviderError):
    """The provider answered 2xx with something that is not a chat completion (or embeddings)."""

    error_class = "bad_response"


class ProviderAuthError(ProviderError):
    """401/403/404: the deployment's key, permissions, model or base URL is wrong.

    Not the caller's fault, so it is retryable on another deployment; the DWA should
    treat the deployment as down until its configuration is fixed.
    """

    error_class = "auth"


class ProviderBusy(ProviderError):
    """No free slot under the deployment's max_concurrency within the time allowed."""

    error_class = "busy"


class ProviderClientError(ProviderError):
    """The provider refused the request itself (400, 413, 422...): goes back to the caller.

    `status` and `provider_message` are what the provider said (keys scrubbed).
    """

    retryable = False
    error_class = "client_error"


class ProviderUnsupported(ProviderClientError):
    """This deployment's protocol cannot express the request (Anthropic's Messages API has
    no response_format, Gemini no free-form tool schema...), found before anything was
    sent. Retryable: another deployment may speak a protocol that can; not held against
    this one (the DWA counts it as a client error). With nowhere else to go, the caller
    gets the 400 naming the field."""

    retryable = True
    error_class = "unsupported"


# --- helpers shared by the adapters ----------------------------------------------------------


def call_budget(spec: DeploymentSpec, timeout: float | None) -> float:
    """The time a call may take: the caller's remaining deadline, capped by the spec's.

    Raises ProviderTimeout when the deadline has already passed.
    """
    budget = spec.timeout_seconds if timeout is None else min(spec.timeout_seconds, timeout)
    if budget <= 0:
        raise ProviderTimeout("no time left in the request's deadline", deployment=spec.name)
    return budget


class Slots:
    """The deployment's max_concurrency: calls queue for a slot, within their deadline.

    With no limit configured it only counts, so `in_flight` is always meaningful.
    """

    __slots__ = ("limit", "in_flight", "_semaphore")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.in_flight = 0
        self._semaphore = asyncio.Semaphore(limit) if limit else None

    async def acquire(self, timeout: float, deployment: str) -> None:
        semaphore = self._semaphore
        if semaphore is not None:
            if semaphore.locked():
                try:
                    await asyncio.wait_for(semaphore.acquire(), timeout)
                except TimeoutError:
                    raise ProviderBusy(
                        f"no free slot within {timeout:g}s (max_concurrency={self.limit})",
                        deployment=deployment,
                    ) from None
            else:
                await semaphore.acquire()  # free: returns at once
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        if self._semaphore is not None:
            self._semaphore.release()
