"""The routing strategies: each picks one of the available candidates.

A strategy gets the candidates that may take a request right now (closed circuit, not
rate limited, not excluded), in the caller's order, with their scores (scoring.py), and
returns (index, selection reason). The router handles everything around it: exclusion,
half-open probes, the all-circuits-open fallback, and the reason overrides.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from core.dwa.config import DWAConfig
from core.dwa.scoring import Evaluation, load_factor, tolerant
from core.dwa.state import ProviderState
from core.settings import RoutingStrategy


class Context:
    """What a strategy may use besides the candidates: settings, randomness, the shared
    round-robin counter, and a fallback local counter when the read had none."""

    __slots__ = ("config", "rng", "rr_counter", "_local_rr")

    def __init__(self, config: DWAConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.rr_counter: int | None = None
        self._local_rr = 0

    def next_rotation(self) -> int:
        if self.rr_counter is not None:
            return self.rr_counter - 1  # INCR returns 1 first: start at the first candidate
        self._local_rr += 1
        return self._local_rr - 1


_exp, _sqrt = math.exp, math.sqrt
Strategy = Callable[[Sequence[ProviderState], Evaluation, Context], tuple[int, str]]


def _argmax(values: Sequence[float]) -> int:
    best, best_value = 0, -math.inf
    for i, value in enumerate(values):
        if value > best_value:
            best, best_value = i, value
    return best


def _waiting(ev: Evaluation) -> list[bool]:
    """The candidates to pass over: those with more calls in flight than answers to go on
    (Evaluation.unproven), unless every candidate is."""
    unproven = ev.unproven
    return unproven if not all(unproven) else [False] * len(unproven)


def _tolerant_quality(q: float, v: float, config: DWAConfig) -> float:
    """q̂: the quality with its speed v read within the speed tolerance (scoring.tolerant)."""
    return q * tolerant(v, config) / v


def load_balanced(cands: Sequence[ProviderState], ev: Evaluation, ctx: Context) -> tuple[int, str]:
    """Sample ∝ (quality, within the speed tolerance)^sharpness × load factor (see scoring.py)."""
    config = ctx.config
    gamma = config.sharpness
    weights = []
    total = 0.0
    for state, q, v, wait in zip(cands, ev.quality, ev.speed, _waiting(ev)):
        w = 0.0 if wait else _tolerant_quality(q, v, config) ** gamma * load_factor(state)
        weights.append(w)
        total += w
    best = _argmax(ev.quality)
    if total <= 0.0:
        return best, "best_performance"
    r = ctx.rng.random() * total
    for i, w in enumerate(weights):
        r -= w
        if r < 0.0:
            break
    return i, "best_performance" if i == best else "weighted_share"


def round_robin(cands: Sequence[ProviderState], ev: Evaluation, ctx: Context) -> tuple[int, str]:
    """The next in a rotation shared by every instance (a Redis INCR per decision)."""
    return ctx.next_rotation() % len(cands), "round_robin"


def random_choice(cands: Sequence[ProviderState], ev: Evaluation, ctx: Context) -> tuple[int, str]:
    return ctx.rng.randrange(len(cands)), "random"


def priority(cands: Sequence[ProviderState], ev: Evaluation, ctx: Context) -> tuple[int, str]:
    """The lowest configured priority number; ties go to the caller's order."""
    best = min(range(len(cands)), key=lambda i: cands[i].profile.priority)
    return best, "priority_order"


def lowest_latency(cands: Sequence[ProviderState], ev: Evaluation, ctx: Context) -> tuple[int, str]:
    """The lowest expected time to a success: the expected time E (the latency plus
    what its failures cost, scoring.py) / availability, i.e. the highest speed ×
    availability. On the latency alone, a provider whose calls hang for seconds
    looked as fast as ever when its availability had fallen by less than it is faster."""
    best = max(range(len(cands)), key=lambda i: ev.speed[i] * ev.availability[i])
    return best, "lowest_latency"


def lowest_cost(cands: Sequence[ProviderState], ev: Evaluation, ctx: Context) -> tuple[int, str]:
    """The cheapest provider that is reasonably available (ties: the best quality)."""
    floor = ctx.config.cost_min_availability
    pool = [i for i in range(len(cands)) if ev.availability[i] >= floor] or list(range(len(cands)))
    best = min(pool, key=lambda i: (ev.price[i], -ev.quality[i]))
    return best, "lowest_cost"


def adaptive(cands: Sequence[ProviderState], ev: Evaluation, ctx: Context) -> tuple[int, str]:
    """Thompson sampling on the success posteriors and on the latency means.

    For each candidate draw a success probability from its decayed posterior
    Beta(α₀ + S, β₀ + F), and a latency around its estimate with the standard error of a
    mean of W' samples (ln-spread latency_draw_sigma / √W'), and take the best draw of
    the quality formula on the speed load_balanced samples on (`tolerant`: within 2% of
    the fastest counts as as fast), times the load factor. A provider that failed a
    little lately has a wide posterior and keeps getting an occasional request, in
    proportion to the chance it is actually the best; two providers as fast as each
    other share the load (their means are known to a few percent), and one 25% slower
    gets none.

    The latency draw explores little: a provider known from one sample has a wide draw,
    but gets no more calls than its evidence allows until they answer (`unproven`).
    Exploring the rest comes from the optimistic estimate (scoring.py): an unused
    provider's estimate drifts toward the best one with time, and after explore_after_s
    without a sample it is tried once, whatever the traffic: that notices a recovery.
    """
    config = ctx.config
    rng = ctx.rng
    a0, b0 = config.prior_success, config.prior_failure
    exp_a = config.availability_exponent
    gauss = rng.gauss
    sigma = config.latency_draw_sigma
    best, best_value = 0, -math.inf
    waiting = _waiting(ev)
    for i, state in enumerate(cands):
        if waiting[i]:
            continue
        alpha = a0 + state.successes
        beta = b0 + state.failures
        n = alpha + beta
        mean_a = ev.availability[i]  # alpha / n
        if n > 40.0:  # the normal approximation: several times cheaper than betavariate
            a = mean_a + gauss(0.0, 1.0) * math.sqrt(mean_a * (1.0 - mean_a) / (n + 1.0))
            a = 1e-3 if a < 1e-3 else (1.0 if a > 1.0 else a)
        else:
            a = rng.betavariate(alpha, beta) or 1e-3
        speed = _exp(sigma * gauss(0.0, 1.0) / _sqrt(ev.evidence[i]))
        value = (_tolerant_quality(ev.quality[i], ev.speed[i], config) * (a / mean_a) ** exp_a * speed
                 * load_factor(state))
        if value > best_value:
            best, best_value = i, value
    return best, "adaptive_sample"


STRATEGIES: dict[RoutingStrategy, Strategy] = {
    RoutingStrategy.load_balanced: load_balanced,
    RoutingStrategy.round_robin: round_robin,
    RoutingStrategy.random: random_choice,
    RoutingStrategy.priority: priority,
    RoutingStrategy.latency: lowest_latency,
    RoutingStrategy.cost: lowest_cost,
    RoutingStrategy.adaptive: adaptive,
}
