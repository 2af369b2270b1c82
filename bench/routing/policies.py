"""Who picks the provider: the real DWA router, LiteLLM's two strategies, the oracle.

All policies have the same interface: pick(request, now, exclude) → name or None, and
record(request, name, result, now). Failover is the simulator's (the same
for every policy): a failed attempt is retried on a provider not yet tried.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence

from core.dwa import DWAConfig, Outcome, OutcomeKind, ProviderProfile, RedisDWAStore, Router
from core.dwa.scoring import P99_Z, censored_latency, first_token_deadline, first_token_wait, hedge_delay
from core.kv import KV
from core.settings import RoutingStrategy

from bench.routing.scenario import Scenario
from bench.routing.world import CallResult, Request, World

_KINDS = {"ok": OutcomeKind.SUCCESS, "fail": OutcomeKind.FAILURE, "rate": OutcomeKind.RATE_LIMITED}


def profiles_for(scenario: Scenario) -> list[ProviderProfile]:
    return [
        ProviderProfile(p.name, priority=p.priority, input_price_per_1k=p.input_price_per_1k,
                        output_price_per_1k=p.output_price_per_1k, max_concurrency=p.max_concurrency)
        for p in scenario.providers
    ]


class DWAPolicy:
    """The real core/dwa Router, one per gateway instance, all on one real Redis."""

    def __init__(self, scenario: Scenario, kv: KV, strategy: RoutingStrategy, namespace: str,
                 config: DWAConfig | None = None, quantile: float | None = None) -> None:
        self.names = [p.name for p in scenario.providers]
        self.quantile = quantile  # every request's latency_quantile (None: the mean)
        profiles = profiles_for(scenario)
        self.routers = [
            Router(RedisDWAStore(kv, profiles, config, namespace=namespace, instance_id=f"i{k}"),
                   strategy=strategy, rng=random.Random(scenario.seed * 1000 + k))
            for k in range(scenario.instances)
        ]
        self.reasons: dict[str, int] = defaultdict(int)
        self.explored: set[tuple[int, str]] = set()  # (request, provider) picked as a fresh look
        self.loads: dict[tuple[int, str], int] = {}  # (request, provider): the pick's load

    async def pick(self, request: Request, now: float, exclude: Sequence[str]) -> str | None:
        decision = await self.routers[request.instance].pick(self.names, now, exclude=exclude, stream=request.stream,
                                                         quantile=self.quantile)
        if decision is None:
            return None
        self.reasons[decision.reason] += 1
        if decision.explore:
            self.explored.add((request.rid, decision.provider))
        self.loads[request.rid, decision.provider] = decision.load
        return decision.provider

    async def record(self, request: Request, name: str, result: CallResult, now: float) -> None:
        ok = result.kind == "ok"
        await self.routers[request.instance].record(Outcome(
            name, _KINDS[result.kind], result.latency, now,
            input_tokens=request.input_tokens if ok else 0,
            output_tokens=request.output_tokens if ok else 0,
            error=result.error, retry_after_s=result.retry_after, ttft_s=result.ttft if request.stream else None,
            fresh=(request.rid, name) in self.explored, load=self.loads.pop((request.rid, name), 0),
        ))
        self.explored.discard((request.rid, name))

    async def hedge_delay(self, request: Request, name: str, now: float) -> float | None:
        """The gateway's hedge_after_ms "auto" for a call to `name` (core's hedge_delay)."""
        router = self.routers[request.instance]
        state = (await router.store.read([name], now)).states[name]
        return hedge_delay(state, router.config)

    async def first_token_deadline(self, request: Request, name: str, now: float) -> float | None:
        """How long a stream to `name` waits for its first token while another provider
        could take it: the gateway's STREAM_FIRST_TOKEN_TIMEOUT "auto" (core's
        first_token_deadline of its TTFTs and the prompt)."""
        router = self.routers[request.instance]
        state = (await router.store.read([name], now)).states[name]
        return first_token_deadline(state, request.input_tokens, router.config)

    async def answering(self, request: Request, name: str, started: float) -> None:
        """A stream's first token, as the gateway reports it (Orchestrator.stream)."""
        self.routers[request.instance].store.answering(name, started)

    async def cancel(self, request: Request, name: str, now: float, elapsed: float) -> None:
        """A hedge's other call, cancelled unanswered after `elapsed`: its place in flight
        freed, and the time it is expected to have taken recorded (the gateway's
        Orchestrator._cancelled)."""
        router = self.routers[request.instance]
        router.store.finish(name)
        self.explored.discard((request.rid, name))
        state = (await router.store.read([name], now)).states[name]
        latency = censored_latency(state, elapsed, request.output_tokens, router.config)
        await router.record(Outcome(name, OutcomeKind.CANCELLED, latency, now, output_tokens=request.output_tokens,
                                    load=self.loads.pop((request.rid, name), 0)))


# --- LiteLLM ---------------------------------------------------------------------------
# Reproduced from litellm/router_utils/cooldown_handlers.py (v2 cooldown logic),
# router_strategy/simple_shuffle.py and router_strategy/lowest_latency.py, with
# LiteLLM's defaults. Time is the simulated clock.
LITELLM_COOLDOWN_S = 5.0              # DEFAULT_COOLDOWN_TIME_SECONDS
LITELLM_FAILURE_THRESHOLD = 0.5       # DEFAULT_FAILURE_THRESHOLD_PERCENT
LITELLM_FAILURE_MIN_REQUESTS = 5      # DEFAULT_FAILURE_THRESHOLD_MINIMUM_REQUESTS
LITELLM_LATENCY_PENALTY_S = 1000.0    # appended to the latency list on a failed call
LITELLM_LIST_SIZE = 10                # RoutingArgs.max_latency_list_size
LITELLM_MIN_TOKENS = 5                # RoutingArgs.min_tokens_for_latency


class LiteLLMCooldowns:
    """The router-wide cooldown list: a 429 cools a deployment down at once; otherwise
    more than 50% failures among at least 5 calls in the current minute does. Shared by
    all instances (LiteLLM keeps it in Redis when one is configured)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.multi = len(names) > 1
        self.until: dict[str, float] = {}
        self.minute: dict[str, tuple[int, int, int]] = {}  # name → (minute, ok, fail)

    def healthy(self, names: Sequence[str], now: float) -> list[str]:
        return [n for n in names if self.until.get(n, 0.0) <= now]

    def _count(self, name: str, now: float, ok: bool) -> tuple[int, int]:
        minute = int(now // 60)
        current, s, f = self.minute.get(name, (minute, 0, 0))
        if current != minute:
            s, f = 0, 0
        s, f = (s + 1, f) if ok else (s, f + 1)
        self.minute[name] = (minute, s, f)
        return s, f

    def success(self, name: str, now: float) -> None:
        self._count(name, now, True)

    def failure(self, name: str, now: float, status: int) -> None:
        s, f = self._count(name, now, False)
        total = s + f
        cool = (
            (status == 429 and self.multi)
            or (f == total and total >= 1000)
            or (f / total > LITELLM_FAILURE_THRESHOLD and total >= LITELLM_FAILURE_MIN_REQUESTS and self.multi)
        )
        if cool:
            self.until[name] = now + LITELLM_COOLDOWN_S


def _status(result: CallResult) -> int:
    return {"http_429": 429, "http_500": 500, "http_503": 503, "timeout": 408}.get(result.error or "", 500)


class LiteLLMShuffle:
    """`simple-shuffle`: a weighted random pick by the deployments' `weight`, else `rpm`,
    else `tpm` (as LiteLLM checks them: on the first deployment), else uniform."""

    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.names = [p.name for p in scenario.providers]
        self.params = {p.name: p.litellm for p in scenario.providers}
        self.cooldowns = LiteLLMCooldowns(self.names)
        self.rng = random.Random(seed)

    async def pick(self, request: Request, now: float, exclude: Sequence[str]) -> str | None:
        healthy = [n for n in self.cooldowns.healthy(self.names, now) if n not in exclude]
        if not healthy:
            return None  # LiteLLM: "No deployments available" (every deployment cooling down)
        for key in ("weight", "rpm", "tpm"):
            if self.params[healthy[0]].get(key) is not None:
                weights = [float(self.params[n].get(key) or 0) for n in healthy]
                if max(weights) > 0:
                    return self.rng.choices(healthy, weights=weights)[0]
        return self.rng.choice(healthy)

    async def record(self, request: Request, name: str, result: CallResult, now: float) -> None:
        if result.kind == "ok":
            self.cooldowns.success(name, now)
        else:
            self.cooldowns.failure(name, now, _status(result))


class LiteLLMLatency:
    """`latency-based-routing`: per deployment a list of up to 10 latencies (seconds per
    output token when the reply has ≥ 5 tokens), 1000 s appended for a failed call
    (timeout, 5xx, 429, connection error), a never-used deployment counted as 0; pick the
    lowest average, at random among those within `lowest_latency_buffer` of it (default
    0); deployments over their configured rpm this minute are skipped. A stream is
    routed on the average of a list of its deployments' times to first token, when it
    has one (streams' successes append to it), as LiteLLM's `use_ttft` does.

    Each gateway instance keeps its own lists: LiteLLM reads its in-memory copy first and
    overwrites the shared blob with it, so instances do not pool what they learn. The
    list is a true sliding window of the last 10 (LiteLLM's own update keeps the first 9
    and replaces the 10th, which adapts even more slowly; we give it the better one).
    """

    def __init__(self, scenario: Scenario, seed: int, buffer: float = 0.0) -> None:
        self.names = [p.name for p in scenario.providers]
        self.params = {p.name: p.litellm for p in scenario.providers}
        self.cooldowns = LiteLLMCooldowns(self.names)
        self.lists = [{n: [] for n in self.names} for _ in range(scenario.instances)]
        self.ttft = [{n: [] for n in self.names} for _ in range(scenario.instances)]
        self.rpm = [defaultdict(lambda: (-1, 0)) for _ in range(scenario.instances)]
        self.buffer = buffer
        self.rng = random.Random(seed)

    def _push(self, instance: int, name: str, value: float, lists: list[dict[str, list[float]]] | None = None) -> None:
        values = (lists or self.lists)[instance][name]
        values.append(value)
        if len(values) > LITELLM_LIST_SIZE:
            del values[0]

    async def pick(self, request: Request, now: float, exclude: Sequence[str]) -> str | None:
        instance = request.instance
        healthy = [n for n in self.cooldowns.healthy(self.names, now) if n not in exclude]
        if not healthy:
            return None
        minute = int(now // 60)
        self.rng.shuffle(healthy)  # LiteLLM shuffles so that ties (e.g. all 0) spread
        scored = []
        for name in healthy:
            limit = self.params[name].get("rpm")
            used_minute, used = self.rpm[instance][name]
            if limit is not None and used_minute == minute and used + 1 > limit:
                continue
            values = (request.stream and self.ttft[instance][name]) or self.lists[instance][name] or [0.0]
            scored.append((sum(values) / len(values), name))
        if not scored:
            return None
        scored.sort(key=lambda item: item[0])
        lowest = scored[0][0]
        valid = [name for value, name in scored if value <= lowest + self.buffer * lowest]
        return self.rng.choice(valid)

    async def record(self, request: Request, name: str, result: CallResult, now: float) -> None:
        instance = request.instance
        if result.kind == "ok":
            self.cooldowns.success(name, now)
            tokens = request.output_tokens
            value = result.latency / tokens if tokens >= LITELLM_MIN_TOKENS else result.latency
            self._push(instance, name, value)
            if request.stream and result.ttft is not None:
                self._push(instance, name, result.ttft, self.ttft)
            minute = int(now // 60)
            used_minute, used = self.rpm[instance][name]
            self.rpm[instance][name] = (minute, used + 1 if used_minute == minute else 1)
        else:
            self.cooldowns.failure(name, now, _status(result))
            self._push(instance, name, LITELLM_LATENCY_PENALTY_S)


class Oracle:
    """Knows the true state: each provider's mean latency for this very request, its
    failure probability and failure time, outages, and whether its rate limit is used up.
    Picks the lowest expected time to an answer (a failure costs its time plus the next
    best provider's latency). It does not know the luck of the individual call. Its
    streams wait for a first token as the gateway's do (first_token_deadline), from the
    true spread of each provider's TTFT, so a stream that hangs costs it what it costs
    the DWA's."""

    def __init__(self, scenario: Scenario, world: World) -> None:
        self.names = [p.name for p in scenario.providers]
        self.world = world
        self.config = DWAConfig()

    async def first_token_deadline(self, request: Request, name: str, now: float) -> float | None:
        return self._first_token(request, name, now)

    def _first_token(self, request: Request, name: str, now: float) -> float:
        """core's first_token_deadline, with the provider's true TTFT mean and spread."""
        sigma = max(self.world.providers[name].jitter, self.config.overdue_min_sigma)
        p99 = self.world.mean_ttft(name, now) * math.exp(P99_Z * sigma - sigma * sigma / 2.0)
        return first_token_wait(p99, request.input_tokens, self.config)

    def expected(self, now: float, request: Request, exclude: Sequence[str]) -> list[tuple[float, str]]:
        world = self.world
        options = []
        for name in self.names:
            if name in exclude or world.rate_limited(name, now):
                continue
            if request.stream:
                latency = world.mean_ttft(name, now)
            else:
                latency = world.mean_latency(name, now, request.output_tokens)
            p_fail, _, fail_s = world.failure(name, now)
            if request.stream:
                fail_s = min(fail_s, self._first_token(request, name, now))
            options.append((latency, p_fail, fail_s, name))
        if not options:
            return []
        best_latency = min(o[0] for o in options if o[1] < 1.0) if any(o[1] < 1.0 for o in options) else 0.0
        return sorted(((1 - p) * lat + p * (fail_s + best_latency), name) for lat, p, fail_s, name in options)

    async def pick(self, request: Request, now: float, exclude: Sequence[str]) -> str | None:
        ranked = self.expected(now, request, exclude)
        return ranked[0][1] if ranked else None

    async def record(self, request: Request, name: str, result: CallResult, now: float) -> None:
        pass
