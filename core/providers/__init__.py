"""LLM provider adapters: OpenAI-compatible APIs through the openai SDK, Gemini's own API,
and `simulated`.

    base.py           ChatRequest, Completion, Chunk, EmbeddingRequest, Embeddings, Usage, the Adapter protocol, errors
    config.py         DeploymentSpec; loading deployments from settings and a providers file
    openai_compat.py  the adapter for OpenAI, Anthropic, Gemini, Grok and any base URL
    gemini.py         the adapter for Gemini's own API (kind "gemini")
    gemini_request.py a ChatRequest as a generateContent body
    gemini_schema.py  a tool's JSON Schema as Gemini's Schema, or why it cannot be one
    simulated.py      the offline adapter with configurable latency and failures
    tokens.py         token counts when a provider reports no usage
    registry.py       every deployment as a ready adapter

Importing this package does not import openai; the first real provider call does.
"""

from core.providers.base import (
    Adapter,
    ChatRequest,
    Chunk,
    Completion,
    EmbeddingRequest,
    Embeddings,
    ProviderAuthError,
    ProviderBadResponse,
    ProviderBusy,
    ProviderClientError,
    ProviderError,
    ProviderRateLimited,
    ProviderStreamCut,
    ProviderTimeout,
    ProviderUnsupported,
    ProviderUnavailable,
    Usage,
)
from core.providers.config import DeploymentConfigError, DeploymentSpec, SimulationSpec, load_deployments
from core.providers.registry import ProviderRegistry, build_adapter, build_registry, load_registry

__all__ = [
    "Adapter",
    "ChatRequest",
    "Chunk",
    "Completion",
    "DeploymentConfigError",
    "DeploymentSpec",
    "EmbeddingRequest",
    "Embeddings",
    "ProviderAuthError",
    "ProviderBadResponse",
    "ProviderBusy",
    "ProviderClientError",
    "ProviderError",
    "ProviderRateLimited",
    "ProviderRegistry",
    "ProviderStreamCut",
    "ProviderTimeout",
    "ProviderUnsupported",
    "ProviderUnavailable",
    "SimulationSpec",
    "Usage",
    "build_adapter",
    "build_registry",
    "load_deployments",
    "load_registry",
]
