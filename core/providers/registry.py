"""Every configured deployment as a ready adapter, built once per process.

    registry = load_registry(settings)          # at start-up; raises on bad config
    adapter = registry["openai"]                # by deployment name
    for adapter in registry.resolve("gemini"):  # by deployment name, provider family or model
        ...
    registry.serving("embeddings")              # the deployments whose spec serves embeddings
    await registry.aclose()                     # at shutdown

Building adapters is cheap and does no I/O: the openai SDK is imported and its client
created on a deployment's first call (the native Anthropic adapter needs no SDK).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from core.providers.base import Adapter
from core.providers.config import Capability, DeploymentSpec, load_deployments

if TYPE_CHECKING:
    import httpx2

    from core.providers.simulated import Clock, Sleep
    from core.settings import Settings


def build_adapter(
    spec: DeploymentSpec,
    *,
    sleep: Sleep | None = None,
    clock: Clock | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> Adapter:
    """The adapter for one deployment. `sleep`/`clock` reach simulated ones only;
    `transport` (the caller's, not closed here) carries the HTTP of the others."""
    if spec.kind == "simulated":
        from core.providers.simulated import SimulatedAdapter

        return SimulatedAdapter(spec, sleep=sleep, clock=clock)
    if spec.kind == "gemini":
        from core.providers.gemini import GeminiAdapter

        return GeminiAdapter(spec, transport=transport)
    if spec.kind == "anthropic":
        from core.providers.anthropic import AnthropicAdapter

        return AnthropicAdapter(spec, transport=transport)
    from core.providers.openai_compat import OpenAICompatAdapter

    return OpenAICompatAdapter(spec, transport=transport)


class ProviderRegistry:
    """Adapters by deployment name, in priority order (smaller `priority` first)."""

    def __init__(self, adapters: Iterable[Adapter]) -> None:
        ordered = sorted(adapters, key=lambda adapter: adapter.spec.priority)
        self._by_name: dict[str, Adapter] = {}
        for adapter in ordered:
            if adapter.name in self._by_name:
                raise ValueError(f"two deployments are named {adapter.name!r}")
            self._by_name[adapter.name] = adapter
        # Built once: the chat hot path reads its candidates here on every request.
        self._serving: dict[str, list[Adapter]] = {
            capability: [a for a in self._by_name.values() if capability in a.spec.serves]
            for capability in ("chat", "embeddings")}

    def __getitem__(self, name: str) -> Adapter:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Adapter]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __repr__(self) -> str:
        return f"<ProviderRegistry {', '.join(self._by_name)}>"

    def get(self, name: str) -> Adapter | None:
        return self._by_name.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    def serving(self, capability: Capability) -> list[Adapter]:
        """Every deployment serving `capability`, in priority order (do not modify)."""
        return self._serving[capability]

    def resolve(self, name: str, capability: Capability | None = None) -> list[Adapter]:
        """A deployment by name, else every deployment of that provider family, else
        every deployment serving that model; with `capability`, only deployments that
        serve it (a name matching one that does not gives nothing).

        So a seed request's `providers: ["openai"]`, an OpenAI-style `model` that names
        a deployment, and one that names a model (`gpt-4o-mini`, served by deployments
        with other names) all work. Empty when nothing matches.
        """
        candidates = self._by_name.values() if capability is None else self._serving[capability]
        adapter = self._by_name.get(name)
        if adapter is not None:
            return [adapter] if capability is None or capability in adapter.spec.serves else []
        family = [adapter for adapter in candidates if adapter.spec.provider == name]
        if family:
            return family
        if capability == "embeddings":  # a simulated deployment names its embedding model apart
            return [adapter for adapter in candidates if adapter.spec.embedding_model == name]
        if capability is None:
            return [a for a in candidates if name in (a.spec.model, a.spec.embedding_model)]
        return [adapter for adapter in candidates if adapter.spec.model == name]

    def describe(self) -> list[dict[str, Any]]:
        """Every deployment as shown to API callers, never a key."""
        return [adapter.spec.describe() for adapter in self._by_name.values()]

    async def aclose(self) -> None:
        for adapter in self._by_name.values():
            await adapter.aclose()


def build_registry(
    specs: Iterable[DeploymentSpec],
    *,
    sleep: Sleep | None = None,
    clock: Clock | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> ProviderRegistry:
    return ProviderRegistry(build_adapter(s, sleep=sleep, clock=clock, transport=transport) for s in specs)


def load_registry(
    settings: Settings,
    *,
    environ: Mapping[str, str] | None = None,
    sleep: Sleep | None = None,
    clock: Clock | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> ProviderRegistry:
    """Deployments from the settings (and providers file), ready to call.

    Raises `DeploymentConfigError` (a SettingsError) when the configuration is unusable.
    """
    specs = load_deployments(settings, environ=environ)
    return build_registry(specs, sleep=sleep, clock=clock, transport=transport)
