"""Scenarios: simulated providers and traffic, read from JSON (see bench/README.md).

The built-in scenarios are JSON files in scenarios/, so they double as examples of the
format. Validation is strict: an unknown key or a wrong type names the file and field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

SCENARIO_DIR = Path(__file__).with_name("scenarios")
BUILTIN = ("steady", "degrade", "outage", "rate_limited", "cost_tradeoff", "multi_instance",
           "llama70b_hosts", "heavy_tails", "slow_timeouts", "diurnal",  # these four: measured fleets
           "twins", "streaming_chat", "stream_hangs")
ERROR_KINDS = ("timeout", "http_500", "http_503", "connection")


class ScenarioError(ValueError):
    pass


@dataclass(frozen=True)
class Phase:
    """A change to a provider's true behaviour for start_s <= t < end_s."""

    start_s: float
    end_s: float
    latency_factor: float = 1.0    # multiplies ttft_ms and ms_per_token
    error_rate: float | None = None  # replaces the provider's error_rate
    down: bool = False             # every call fails (error_kind after error_ms)
    error_kind: str | None = None
    error_ms: float | None = None


@dataclass(frozen=True)
class LoadPhase:
    """The arrival rate × rate_factor for start_s <= t < end_s (a day's swell and lull)."""

    start_s: float
    end_s: float
    rate_factor: float


@dataclass(frozen=True)
class Provider:
    name: str
    ttft_ms: float                 # latency = (ttft_ms + output_tokens × ms_per_token)
    ms_per_token: float            #           × phase latency_factor × log-normal noise
    jitter: float = 0.25           # sigma of the log-normal noise (its mean is 1)
    error_rate: float = 0.0        # probability a call fails
    error_kind: str = "http_503"   # timeout | http_500 | http_503 | connection
    error_ms: float = 500.0        # how long a failed call takes
    priority: int = 100
    input_price_per_1k: float = 0.0
    output_price_per_1k: float = 0.0
    max_concurrency: int | None = None  # told to the DWA profile
    capacity: int | None = None    # true capacity: beyond it latency grows linearly
    rate_limit_rpm: int | None = None  # true limit, fixed 60 s windows: 429 + Retry-After
    cold_calls: int = 0            # its first cold_calls calls (a cold start: connections,
    cold_ms: float = 0.0           # caches, a machine waking) each take cold_ms longer
    litellm: dict[str, Any] = field(default_factory=dict)  # LiteLLM params: weight, rpm, tpm
    phases: tuple[Phase, ...] = ()


@dataclass(frozen=True)
class Scenario:
    name: str
    providers: tuple[Provider, ...]
    duration_s: float = 300.0
    rate_per_s: float = 10.0       # Poisson arrivals
    instances: int = 1             # stateless gateway instances sharing one Redis
    seed: int = 1
    deadline_s: float = 60.0       # a request gives up after this much time in total
    input_tokens: tuple[int, int] = (200, 800)    # uniform, inclusive
    output_tokens: tuple[int, int] = (50, 400)
    description: str = ""
    watch_recovery: str | None = None  # report when this provider gets traffic back
    load_phases: tuple[LoadPhase, ...] = ()  # the rate changes over time (diurnal load)
    even_after_s: float | None = None  # the providers are identical: report the split after this
    stream_share: float = 0.0      # this share of requests stream: their latency is the first token's

    def rate_factor(self, t: float) -> float:
        factor = 1.0
        for phase in self.load_phases:
            if phase.start_s <= t < phase.end_s:
                factor = phase.rate_factor
        return factor

    def scaled(self, factor: float) -> "Scenario":
        """The same scenario with `factor` × the arrival rate (for --quick)."""
        from dataclasses import replace

        return replace(self, rate_per_s=self.rate_per_s * factor)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ScenarioError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    return cls(**data)


def parse_scenario(data: dict[str, Any], source: str = "<scenario>") -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario is a JSON object")
    data = dict(data)
    raw_providers = data.pop("providers", None)
    if not raw_providers or not isinstance(raw_providers, list):
        raise ScenarioError(f"{source}: 'providers' must be a non-empty list")
    providers = []
    for i, raw in enumerate(raw_providers):
        where = f"{source}: providers[{i}]"
        if not isinstance(raw, dict):
            raise ScenarioError(f"{where} must be an object")
        raw = dict(raw)
        phases = tuple(_build(Phase, p, f"{where}.phases[{j}]") for j, p in enumerate(raw.pop("phases", [])))
        for key in ("name", "ttft_ms", "ms_per_token"):
            if key not in raw:
                raise ScenarioError(f"{where}: '{key}' is required")
        provider = _build(Provider, {**raw, "phases": phases}, where)
        kinds = [provider.error_kind] + [p.error_kind for p in phases if p.error_kind]
        for kind in kinds:
            if kind not in ERROR_KINDS:
                raise ScenarioError(f"{where}: error_kind {kind!r} is not one of {ERROR_KINDS}")
        providers.append(provider)
    names = [p.name for p in providers]
    if len(set(names)) != len(names):
        raise ScenarioError(f"{source}: provider names must be unique")
    for key in ("input_tokens", "output_tokens"):
        if key in data:
            data[key] = tuple(data[key])
    load_phases = data.pop("load_phases", [])
    if not isinstance(load_phases, list):
        raise ScenarioError(f"{source}: 'load_phases' must be a list")
    data["load_phases"] = tuple(_build(LoadPhase, phase, f"{source}: load_phases[{j}]")
                                for j, phase in enumerate(load_phases))
    if any(phase.rate_factor < 0 for phase in data["load_phases"]):
        raise ScenarioError(f"{source}: a load phase's rate_factor cannot be negative")
    if "name" not in data:
        raise ScenarioError(f"{source}: 'name' is required")
    scenario = _build(Scenario, {**data, "providers": tuple(providers)}, source)
    if scenario.watch_recovery is not None and scenario.watch_recovery not in names:
        raise ScenarioError(f"{source}: watch_recovery names no provider")
    if not 0.0 <= scenario.stream_share <= 1.0:
        raise ScenarioError(f"{source}: stream_share is a share of the requests, from 0 to 1")
    if scenario.rate_per_s <= 0 or scenario.duration_s <= 0 or scenario.instances < 1:
        raise ScenarioError(f"{source}: rate_per_s, duration_s and instances must be positive")
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    return parse_scenario(data, str(path))


def builtin(name: str) -> Scenario:
    return load_scenario(SCENARIO_DIR / f"{name}.json")
