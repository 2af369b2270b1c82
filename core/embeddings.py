"""Embeddings for core code: `embed_texts`, the one call the knowledge base and others make.

    result = await embed_texts(orchestrator, ["first text", "second"])
    result.vectors  # one list of floats per text, in order; result.model, result.provider

It goes through `Orchestrator.embed`, so an embedding is routed, cached, limited and
logged exactly like a chat completion: the DWA picks among the deployments whose
`serves` includes "embeddings", a retryable failure fails over to the next one, the
response cache answers a repeated input, the caller's key limits count it, and the
request log has its row. `POST /v1/embeddings` (functions/orchestrate.py) is the same
flow over HTTP.

`model=None` means the EMBEDDING_MODEL setting (`auto` by default: any deployment that
serves embeddings). Vectors of different models are not comparable: whoever stores them
should keep `result.model` beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.orchestrator import LLMRequest, NoDeployment
from core.providers.base import EmbeddingRequest

if TYPE_CHECKING:
    from core.limits import Limits
    from core.orchestrator import Orchestrator


@dataclass(slots=True, frozen=True)
class EmbeddingResult:
    vectors: list[list[float]]  # one per text, in the order given
    model: str                  # the model that made them (e.g. orchesity-simulated-embedding-1)
    provider: str               # the deployment that answered (or whose answer was cached)
    cached: bool = False
    prompt_tokens: int = 0


class EmbeddingError(Exception):
    """The texts could not be embedded; the message says why."""


class NoEmbeddingDeployment(EmbeddingError):
    """No configured deployment serves embeddings (or none the requested model names)."""


class EmbeddingFailed(EmbeddingError):
    """Every deployment tried failed, or the provider refused the input.

    `error` is the orchestrator's error object ({"type", "message", "status", "provider"}).
    """

    def __init__(self, message: str, error: dict[str, Any]) -> None:
        super().__init__(message)
        self.error = error
        self.status = int(error.get("status") or 502)


async def embed_texts(orchestrator: Orchestrator, texts: list[str], *, model: str | None = None,
                      caller: str | None = None, tenant: str | None = None,
                      limits: Limits | None = None) -> EmbeddingResult:
    """Embed `texts` (non-empty strings) with `model`, on behalf of `caller`.

    `caller` is the key id the request log names and `limits` are counted against (both
    or neither), `tenant` whose cache it reads and writes. Raises NoEmbeddingDeployment,
    EmbeddingFailed, `core.orchestrator.UnknownProvider` for a model nothing serves, and
    `core.limits.LimitExceeded` when the caller's key is over a limit.
    """
    if not texts or not all(isinstance(text, str) and text for text in texts):
        raise ValueError("texts must be a non-empty list of non-empty strings")
    name = model or orchestrator.embedding_model
    request = LLMRequest(embedding=EmbeddingRequest(input=list(texts), model=name),
                         targets=None if name == "auto" else [name], endpoint="embeddings",
                         caller=caller, tenant=tenant, limits=limits)
    try:
        orchestration = await orchestrator.embed(request)
    except NoDeployment as exc:
        raise NoEmbeddingDeployment(str(exc)) from None
    result = orchestration.results[0]
    if not result.ok or result.vectors is None:
        error = result.error or {"type": "no_vectors", "message": "no vectors came back", "status": 502}
        where = f"{error['provider']}: " if error.get("provider") else ""
        raise EmbeddingFailed(f"embedding failed: {where}{error.get('type')}: {error.get('message')}", error)
    return EmbeddingResult(vectors=result.vectors, model=result.model or name, provider=result.provider or "",
                           cached=result.cached, prompt_tokens=result.usage.prompt_tokens if result.usage else 0)
