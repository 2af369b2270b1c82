"""The router: one decision from a snapshot, and the calls around it.

    router = Router(RedisDWAStore(kv, profiles), strategy=settings.DWA_ROUTING_STRATEGY)
    decision = await router.pick(names, now)            # one round trip (+1 to claim a probe)
    ... call decision.provider ...
    await router.record(Outcome(decision.provider, OutcomeKind.SUCCESS, 0.42, now=...))
    decision = await router.pick(names, now, exclude={"openai"})   # failover

`decide` is the pure-CPU part (no I/O): an orchestrator that reads the state in its own
pipeline calls `pick_from(snapshot, ...)` (decide, then claim a probe if needed).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from core.dwa.breaker import available_at, circuit_state, is_available
from core.dwa.config import DWAConfig
from core.dwa.scoring import evaluate, load_slope, p95_latency
from core.dwa.state import Outcome, ProviderState, Snapshot
from core.dwa.store import DWAStore
from core.dwa.strategies import STRATEGIES, Context
from core.kv import KVUnavailable
from core.settings import RoutingStrategy

logger = logging.getLogger("orchesity.dwa")

# The selection reasons a Decision can carry.
REASONS = (
    "best_performance",      # load_balanced picked its top-quality provider
    "weighted_share",        # load_balanced sampled another provider (its share of traffic)
    "round_robin", "random", "priority_order", "lowest_latency", "lowest_cost",
    "adaptive_sample",       # adaptive's Thompson draw
    "fallback_after_error",  # `exclude` removed providers already tried
    "only_available",        # one candidate could take the request
    "explicit_provider",     # the caller named the provider
    "half_open_probe",       # the one trial request of a half-open circuit
    "all_circuits_open",     # none could: the one that reopens soonest, rather than nothing
)


@dataclass(slots=True)
class Decision:
    provider: str
    score: float                # dwa_score, in [0, 1]
    reason: str                 # dwa_selection_reason
    strategy: RoutingStrategy
    probe: bool = False         # this call is the half-open probe (already claimed by pick)
    explore: bool = False       # a fresh look at a provider whose old evidence was set aside
    load: int = 1               # calls in flight to it, this one included (the Outcome's load)


class Router:
    def __init__(
        self,
        store: DWAStore,
        *,
        strategy: RoutingStrategy | str = RoutingStrategy.load_balanced,
        config: DWAConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.strategy = RoutingStrategy(strategy)
        self.config = config or getattr(store, "config", None) or DWAConfig()
        self._ctx = Context(self.config, rng or random.Random())

    # -- the decision -------------------------------------------------------------------
    def decide(
        self,
        snapshot: Snapshot,
        *,
        strategy: RoutingStrategy | str | None = None,
        exclude: Collection[str] = (),
        provider: str | None = None,
        stream: bool = False,
        quantile: float | None = None,
    ) -> Decision | None:
        """Pick a provider from `snapshot` (no I/O). None only when `exclude` (or an
        empty candidate list) leaves nothing. Does not claim probes; see pick_from.
        `quantile`: compare latencies at that quantile, not at their means (see evaluate)."""
        decision = self._decide(snapshot, strategy, exclude, provider, stream, quantile)
        if decision is not None:
            state = snapshot.states.get(decision.provider)
            decision.load = state.in_flight + 1 if state is not None else 1
        return decision

    def _decide(self, snapshot: Snapshot, strategy: RoutingStrategy | str | None, exclude: Collection[str],
                provider: str | None, stream: bool, quantile: float | None) -> Decision | None:
        strategy = self.strategy if strategy is None else RoutingStrategy(strategy)
        config = self.config
        now = snapshot.now
        states = snapshot.states
        if provider is not None:
            pool = [states[name] for name in snapshot.order if name != provider]
            state = states.get(provider) or ProviderState(provider, self.store.profile(provider))
            quality = evaluate([state, *pool], config, now, stream=stream, quantile=quantile).quality[0]
            return Decision(provider, quality, "explicit_provider", strategy)
        if exclude:
            cands = [states[name] for name in snapshot.order if name not in exclude]
        else:
            cands = [states[name] for name in snapshot.order]
        if not cands:
            return None

        available: list[ProviderState] = []
        probe: ProviderState | None = None
        for state in cands:
            if not state.tripped:
                if state.rate_limited_until <= now:
                    available.append(state)
            elif (probe is None and state.open_until <= now and state.probe_until <= now
                  and state.rate_limited_until <= now):
                probe = state

        # A half-open provider gets the one trial request, but never a request that
        # already failed elsewhere (a retry should go where success is likely).
        if probe is not None and len(cands) == len(snapshot.order):
            quality = evaluate([probe, *available], config, now, stream=stream, quantile=quantile).quality[0]
            return Decision(probe.name, quality, "half_open_probe", strategy, probe=True)

        if not available:
            ev = evaluate(cands, config, now, stream=stream, quantile=quantile)
            best = min(range(len(cands)), key=lambda i: (available_at(cands[i], now), -ev.quality[i]))
            return Decision(cands[best].name, ev.quality[best], "all_circuits_open", strategy)

        ev = evaluate(available, config, now, stream=stream, quantile=quantile)
        ctx = self._ctx
        ctx.rr_counter = snapshot.rr_counter
        index, reason = STRATEGIES[strategy](available, ev, ctx)
        if len(cands) < len(snapshot.order):
            reason = "fallback_after_error"
        elif len(available) == 1:
            reason = "only_available"
        return Decision(available[index].name, ev.quality[index], reason, strategy, explore=ev.exploring[index])

    async def pick_from(self, snapshot: Snapshot, *, tokens: int | None = None, started: float | None = None,
                        **options: Any) -> Decision | None:
        """decide(), claiming the probe when it picked a half-open provider (one more
        round trip, only then; another instance holding the probe makes it decide
        again), and count the call as in flight in this process (asking for up to
        `tokens` output tokens, when its whole reply is awaited: see store.start) from
        `started` (wall clock; default the snapshot's time). A failover decides on the
        request's snapshot but starts later: from the snapshot's time, its call would look
        as old as the request to mark_overdue, a failure in progress at the provider that
        took over after a 30 s timeout."""
        while True:
            decision = self.decide(snapshot, **options)
            if decision is None:
                return None
            if decision.probe and not await self.store.claim_probe(decision.provider, snapshot.now):
                state = snapshot.states[decision.provider]
                state.probe_until = snapshot.now + self.config.probe_timeout_s
                continue
            self.store.start(decision.provider, snapshot.now if started is None else started, tokens,
                             bool(options.get("stream")))
            return decision

    async def pick(
        self,
        names: Sequence[str],
        now: float,
        *,
        strategy: RoutingStrategy | str | None = None,
        exclude: Collection[str] = (),
        provider: str | None = None,
        stream: bool = False,
        quantile: float | None = None,
    ) -> Decision | None:
        """Read every candidate's state (one round trip) and pick.

        If Redis cannot be reached, the pick is made on the priors (every provider as if
        new; round_robin rotates per process) rather than failing the request.
        """
        strategy = self.strategy if strategy is None else RoutingStrategy(strategy)
        rr = strategy is RoutingStrategy.round_robin and provider is None
        try:
            snapshot = await self.store.read(names, now, round_robin=rr)
        except KVUnavailable as exc:
            logger.warning("DWA state unavailable, routing on priors: %s", exc)
            snapshot = Snapshot(now, tuple(names),
                                {name: ProviderState(name, self.store.profile(name)) for name in names})
            decision = self.decide(snapshot, strategy=strategy, exclude=exclude, provider=provider,
                                   stream=stream, quantile=quantile)
            if decision is not None:
                self.store.start(decision.provider, now)
            return decision
        return await self.pick_from(snapshot, strategy=strategy, exclude=exclude,
                                    provider=provider, stream=stream, quantile=quantile)

    async def best(self, names: Sequence[str], now: float) -> Decision | None:
        """The provider with the highest score now (GET /api/llm/dwa/best-provider); does
        not count as a call."""
        snapshot = await self.store.read(names, now)
        states = [snapshot.states[name] for name in names]
        pool = [state for state in states if is_available(state, now)]
        reason = "best_performance" if len(pool) > 1 else "only_available"
        if not pool:
            pool, reason = states, "all_circuits_open"
        if not pool:
            return None
        ev = evaluate(pool, self.config, now)
        index = max(range(len(pool)), key=ev.quality.__getitem__)
        return Decision(pool[index].name, ev.quality[index], reason, self.strategy)

    # -- around the decision -------------------------------------------------------------
    async def record(self, outcome: Outcome) -> None:
        await self.store.record(outcome)

    async def reset(self, names: Sequence[str]) -> None:
        await self.store.reset(names)

    async def stats(self, names: Sequence[str], now: float) -> dict[str, dict[str, Any]]:
        """Per provider: the seed's fields (accuracy, speed, cost, availability,
        consecutive_failures, last_success_time, last_error, weight) and ours.

        accuracy: decayed observed success rate (no prior; None before any outcome).
        speed, cost: the formula's speed and price factors in [0, 1] among `names`.
        availability: the posterior mean the router uses. weight: the quality score
        (load_balanced's dwa_score before the in-flight penalty). p95_latency_ms: from a
        log-normal fit of decayed ln-latency moments (approximate).
        """
        snapshot = await self.store.read_details(names, now)
        states = [snapshot.states[name] for name in names]
        if not states:
            return {}
        ev = evaluate(states, self.config, now)
        floor = self.config.price_floor_per_1k
        best_price = min(ev.price) + floor
        out: dict[str, dict[str, Any]] = {}
        for i, state in enumerate(states):
            d = state.details or {}
            evidence = state.successes + state.failures
            p95 = p95_latency(state) if "l1" in d and _f(d.get("ok")) > 0 else None
            out[state.name] = {
                "accuracy": state.successes / evidence if evidence > 1e-9 else None,
                "speed": ev.speed[i],
                "cost": best_price / (ev.price[i] + floor),
                "availability": ev.availability[i],
                "consecutive_failures": state.consecutive_failures,
                "last_success_time": _f(d["ls"]) if _f(d.get("ls")) > 0 else None,
                "last_error": d.get("ec"),
                "last_error_time": _f(d["le"]) if _f(d.get("le")) > 0 else None,
                "weight": ev.quality[i],
                "circuit_state": circuit_state(state, now).value,
                "probe_in_flight": state.tripped and state.probe_until > now,
                "rate_limited_until": state.rate_limited_until if state.rate_limited_until > now else None,
                "in_flight": state.in_flight,
                "mean_latency_ms": state.latency_mean * 1000 if _f(d.get("lw")) > 0 else None,
                "p95_latency_ms": p95 * 1000 if p95 is not None else None,
                # what a failure costs before failover (a timeout's seconds; a 503's few ms)
                "failure_ms": state.failure_time * 1000 if state.failure_time > 0 else None,
                "ttft_ms": state.ttft_mean * 1000 if _f(d.get("fw")) > 0 else None,
                "seconds_per_output_token": _f(d["pm"]) if _f(d.get("pw")) > 0 else None,
                "samples": int(_f(d.get("n"))),
                "successes": int(_f(d.get("ok"))),
                "failures": int(_f(d.get("ko"))),
                "rate_limited": int(_f(d.get("rlc"))),
                "client_errors": int(_f(d.get("ce"))),
                "effective_samples": evidence,
                "input_tokens": int(_f(d.get("ti"))),
                "output_tokens": int(_f(d.get("to"))),
                "cost_usd": _f(d.get("c")),
                "baseline_weight": state.baseline,
                # the share of its latency each further call in flight adds (None: no loads seen)
                "slowdown_per_call": (load_slope(state, self.config) / state.latency_norm
                                      if state.load_sq and state.latency_norm > 0 else None),
            }
        return out


def _f(value: Any) -> float:
    try:
        return float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return math.nan
