"""THE DWA formula: how a provider's live state becomes a score in [0, 1].

For the candidates of one decision (S, F, W, m: the decayed counts and means from
state.py; everything already decayed to `now` by elapsed time):

    availability   a = (S + α₀) / (S + F + α₀ + β₀)
                   the mean of a Beta(α₀ + S, β₀ + F) posterior. α₀ = 1.9, β₀ = 0.1:
                   a new provider starts at 0.95 and one failure takes it to 0.63, never
                   to 0. As S and F decay (half-life 60 s), old verdicts fade back to the
                   prior, so a provider that was down an hour ago is not still punished.
                   (Failures while its circuit is open are the breaker's business and
                   are not counted in F; see breaker.py.) F also counts this process's
                   calls running unusually long with no answer begun (a stream's first
                   token ends the doubt), each by the chance it is a failure
                   (failures in progress, StoreBase.mark_overdue): a provider that
                   hangs is left before its first timeout comes back. When more of
                   the calls started since the oldest of those run long than its
                   failure rate explains, their share is the rate the next call
                   meets, not a few hanging calls against a minute of answers. A fresh look
                   (below) that succeeds clears F: traffic left the provider for its
                   failures, so only a look can tell the spell is over, and the ramp
                   rule (below) bounds what a lucky look at one still failing costs
                   (its calls running long count again within seconds). With S and F
                   decaying together, the spell's failure rate would otherwise outlive
                   it: a provider that timed out 40% of its calls for two minutes got
                   one call in 30 s for minutes after it recovered.

    latency        L = (W'·m + k₀·L*) / (W' + k₀)
                   m: the decayed mean of latency / (output tokens + 40), with a 6 s
                   half-life, so it follows a degradation within seconds, or with a
                   60 s one while the 6 s mean stays within its noise of it (`settled`:
                   between changes, the 6 s mean's wander split two identical hosts
                   75/25); for a stream, of the time to first token. Not for a stream, m is as expected at
                   the provider's load now (`loaded`): a provider whose samples got
                   slower with the calls in flight is expected slower when busier.
                   W: its samples, decayed with a slower 20 s half-life (how long a
                   provider's speed stays known). An LLM call takes about TTFT +
                   tokens × time per token, so
                   dividing by the tokens removes the spread that comes from the reply's
                   length rather than from the provider (a 50-token reply from a slow
                   provider beats a 400-token one from a fast provider); the +40 stands
                   for the TTFT in tokens (TTFT / time-per-token is 20-60 on common
                   APIs), so short replies are not over-penalised.
                   L*: 10% below the lowest m any candidate has shown, k₀ = 1 sample.
                   A provider with no recent samples drifts toward looking a little
                   faster than the best, and is tried again: optimism under
                   uncertainty, which is how a provider that recovered gets traffic
                   back (a sample or two per provider every 30-90 s, so exploration
                   costs less the more traffic there is).
                   After 30 s without a sample W counts as 0: a provider that looked
                   slow is tried again, so a recovery is noticed within about that. A
                   look at a provider r times slower than the best costs r − 1 of the
                   best's latencies, so one that has been that slow all along (over
                   the 10 min memory of m, `latency_history`) is looked at every
                   30 s × √r (a √ because the cost of noticing a recovery late grows
                   with the interval too); one that slowed lately, and any for a
                   stream (the long memory is of whole replies), every 30 s. So too,
                   after 0.5 s, for a candidate holding less than 0.5% of the
                   candidates' evidence: a verdict drawn from a few answers (a cold
                   start's) is checked at once when traffic is heavy, at a cost of at
                   most that share of it; for one that looked slower than the best,
                   after 0.5 s × 3^looks (`looks`: the fresh looks it had, over the
                   long memory): a cold start's verdict was never checked, however
                   many answers it drew from (a twin that lost the race out of its cold
                   start holds a dozen), and it is checked again 1.5, 4.5, 13.5 s later
                   (a cold start lasts a few calls, and two looks in a row can both
                   land in it), while a provider slow all along is not looked at twice
                   a second. Such a call is a fresh look: its latency
                   replaces the old means instead of joining them (the Lua's `fresh`),
                   so one answer undoes the verdict.
                   W' = W + calls in flight: pending calls count at the current mean
                   (the "kriging believer" for pending observations), so while the
                   answer to one exploratory call is awaited, no more are sent. And a
                   candidate with W + 1 calls in flight or more waits for their answers
                   (`unproven`, unless all do): one answer that looked fast, a heavy
                   tail's lucky draw, earns one call more at a time, not the traffic;
                   a provider really that fast ramps up, doubling per latency.

    at a quantile  m ← m · exp(z·s − s²/2)                 (a request's latency_quantile)
                   for a call whose caller asked for, say, its p95 (z = 1.645) rather
                   than its mean: s is the spread of ln latency_norm (the Lua's g1, g2;
                   for a stream, of ln TTFT: f1, f2; quantile_factor), so a deployment whose mean is 15%
                   lower but whose tail is long loses to a steady one. Before L*, so the
                   optimistic prior is read at the quantile too.

    expected time  E = L + F / (S + F + α₀ + β₀) · T_f
                   T_f: the decayed mean time its failures took (in the units of L: a
                   non-stream's divided by its replies' mean size), so a provider that
                   fails 3% of its calls by a 20 s timeout is 30% slower than it looks
                   when it answers, and one whose failures are quick 503s is not. The
                   failure rate is the evidence's, without the prior's β₀: the prior is
                   a doubt about a provider little heard from, not a failure that costs
                   T_f (at 5% × a 28 s T_f it kept a recovered provider looking 70%
                   slower than it answers). Left out for a fresh look, which would
                   otherwise never happen.

    a hedge's loser                                         (Outcome's CANCELLED)
                   a call cancelled because another answered first joins m as the
                   latency a call slower than it ran is expected to take
                   (censored_latency), with no verdict on a: a provider whose calls all
                   run past the hedge would otherwise never answer, never look slower,
                   and be picked first every time.

    a first token  D = max(3 · p99(TTFT) + prompt / 2000 tok/s, 2 s)  (first_token_deadline)
                   how long a stream waits for its first token while another candidate
                   could take it (STREAM_FIRST_TOKEN_TIMEOUT "auto"); then it fails over,
                   and the wait counts as a timeout of that provider.

    speed          v = min(E) / E                          (1 for the fastest candidate)
    price factor   c = (min(P) + ε) / (P + ε)              P: blended price per 1k tokens
    baseline       b' = 1 − λ + λ·b                        b: the recompute job's weight

    quality        q = a^2 · v · c^0.02 · b'       ∈ [0, 1]  → dwa_score

a is squared because a failure costs more than its time (a failover, a risk of an error
reaching the caller); with a alone, a provider failing 20% of the time would look as
good as one 20% slower. Cost enters with a small exponent: it breaks near-ties in the
default strategy (the `cost` strategy exists for cost-first routing).

load_balanced then samples provider i with probability ∝ q̂_i^16 / (1 + (n_i / C_i)²),
where n_i is the in-flight count, C_i the provider's max_concurrency (without one the
factor is 1: a hosted API takes hundreds of calls at once, and a wall shows in its
answers, `loaded`; a default of 64 sent adaptive to slower providers at a peak), and
q̂ = q with v replaced by `tolerant(v)`: within 2% of the fastest counts as as fast
(rejoining v by 4%), since the gateway's own timing noise is of that order. The
sampling is sharp enough that a provider 25% slower gets ~3% of the traffic (and the mean latency
stays within a few percent of always picking the best), soft enough to spread load
across near-equals (5% slower: a third of the traffic) and to back off a provider
filling up. In that sampling the price factor weighs c^0.32: among equally fast
providers, one 10× cheaper gets two thirds of the traffic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

from core.dwa.config import DWAConfig
from core.dwa.state import ProviderState


def availability(successes: float, failures: float, config: DWAConfig) -> float:
    """a: the posterior mean success probability; never 0, whatever the failures."""
    a0 = config.prior_success
    return (successes + a0) / (successes + failures + a0 + config.prior_failure)


def quality(availability: float, speed: float, price_factor: float, config: DWAConfig) -> float:
    """q = a^2 · v · c^0.02 (see the module docstring): the live score, before the
    baseline, and the baseline itself (recompute.py, over the request log's figures)."""
    return availability ** config.availability_exponent * speed * price_factor ** config.cost_exponent


def price_factor(price: float, cheapest: float, config: DWAConfig) -> float:
    """c: 1 for the cheapest candidate, less for dearer ones (prices below the floor tie)."""
    floor = config.price_floor_per_1k
    return (cheapest + floor) / (price + floor)


def load_factor(state: ProviderState) -> float:
    """1 when idle, ½ at the profile's max_concurrency in flight, falling fast beyond; 1
    without a max_concurrency (how busy it can be kept is then learnt: `loaded`)."""
    capacity = state.profile.max_concurrency
    if not capacity:
        return 1.0
    x = state.in_flight / capacity
    return 1.0 / (1.0 + x * x)


def _observed(state: ProviderState, stream: bool, config: DWAConfig) -> tuple[float, float]:
    """(evidence, mean) of the latency routing compares for this call: time to first
    token for a stream, else latency / (output tokens + ttft_tokens), at the load this
    call would add to (see loaded)."""
    if stream:
        return state.ttft_weight, state.ttft_mean
    return state.latency_weight, loaded(state, config)


def loaded(state: ProviderState, config: DWAConfig) -> float:
    """latency_norm as expected at the provider's load now (in flight + this call).

    The plain mean, plus load_slope × how much busier than its samples' mean load the
    provider is now; never less than the plain mean when it is less busy (a latency
    that rose with the load is as likely to be a slow spell that kept calls in flight
    longer, Little's law, as a capacity wall: so the line only ever warns). A provider
    whose latency does not depend on how busy we keep it (a large hosted API) has a
    slope of about 0 and keeps its mean; one with a capacity wall (a self-hosted pool, a
    small host) is expected slower as calls pile up on it, before its answers come back
    slower (bench.routing's `diurnal`)."""
    mean = settled(state, config)
    slope = load_slope(state, config)
    if slope == 0.0:
        return mean
    busier = state.in_flight + 1 - state.load_mean
    return mean + slope * busier if busier > 0.0 else mean


def settled(state: ProviderState, config: DWAConfig) -> float:
    """latency_norm, read on its steadier mean (steady_half_life_s, 60 s) while the 6 s
    mean stays within steady_z (2) standard errors of it; the 6 s mean beyond 2 × that,
    and a blend between.

    The 6 s mean follows a slowdown within a few answers, but between changes it
    wanders with its noise: at σ 0.3 and four answers a second it is known to ±5%, and
    load_balanced's sharpness turns two identical hosts' 7% apart into a 75/25 split.
    The 60 s mean is known to ±1.6%. The test is on ln of the two, against the 6 s
    mean's standard error: the spread of ln latency_norm (g1, g2; at least
    overdue_min_sigma) over √(2 × its samples), an exponentially weighted mean of n
    samples having the variance of a plain one of 2n; the 6 s mean's samples are the
    evidence's (latency_weight, 20 s) × 6 / 20. A 3× slowdown is past the test within
    two or three answers; a 10% one, at σ 0.3, once the 6 s mean rests on some 40 of
    them, and until then it is within what the noise alone would show."""
    short = state.latency_norm
    steady = state.steady_norm
    if steady <= 0.0 or short <= 0.0 or steady == short:
        return short
    n = 2.0 * state.latency_weight * config.latency_half_life_s / config.evidence_half_life_s
    z = abs(math.log(short / steady)) * math.sqrt(n) / log_spread(state.norm_log_mean, state.norm_log_sq, config)
    c = config.steady_z
    if z <= c:
        return steady
    if z >= 2.0 * c:
        return short
    return steady + (z - c) / c * (short - steady)


def load_slope(state: ProviderState, config: DWAConfig) -> float:
    """How much latency_norm grows per call in flight: the slope of the least-squares
    line of the samples' latency_norm on the load they met (decayed moments, see
    scripts.py), shrunk by load_ridge (16 calls²) of load variance so that samples at
    nearly one load say nothing; 0 without loads, never below 0."""
    if not state.load_sq:
        return 0.0
    n = state.load_mean
    slope = (state.load_cross - n * state.latency_norm) / (state.load_sq - n * n + config.load_ridge)
    return slope if slope > 0.0 else 0.0


class Evaluation:
    """The formula's terms for each candidate, as parallel lists (cheap to build)."""

    __slots__ = ("availability", "latency", "speed", "price", "quality", "exploring", "unproven", "evidence")

    def __init__(self, availability: list[float], latency: list[float], speed: list[float], price: list[float],
                 quality: list[float], exploring: list[bool], unproven: list[bool], evidence: list[float]) -> None:
        self.availability = availability
        self.latency = latency
        self.speed = speed
        self.price = price
        self.quality = quality
        self.exploring = exploring  # its evidence was set aside: a call would be a fresh look
        self.unproven = unproven  # more calls in flight than answers to go on: wait for them
        self.evidence = evidence  # W' + k₀: the samples behind `latency`, pending calls included


def log_variance(mean: float, square: float) -> float:
    """The variance of ln x from the decayed means of ln x and (ln x)² (never below 0:
    the two decay as floats, and a provider with one sample has none)."""
    variance = square - mean * mean
    return variance if variance > 0.0 else 0.0


def log_spread(mean: float, square: float, config: DWAConfig) -> float:
    """The standard deviation of ln x from those moments, at least overdue_min_sigma: a
    provider known from a few tight answers is not taken to be tighter than LLM calls are."""
    sigma = math.sqrt(log_variance(mean, square))
    return sigma if sigma > config.overdue_min_sigma else config.overdue_min_sigma


def quantile_factor(state: ProviderState, z: float, stream: bool, config: DWAConfig) -> float:
    """How much longer than its mean a call to this provider takes at the standard normal
    quantile z: exp(z·s − s²/2), the quantile of a log-normal whose mean is 1.

    s² is the variance of ln latency_norm over its recent samples (the reply's length
    taken out), for a stream of ln TTFT, shrunk toward quantile_prior_sigma² by
    quantile_prior_weight samples, so a provider known from one answer is not taken to
    be tight. At z = 1.645 (the p95), s = 0.2 gives 1.36, s = 0.5 gives 1.99 and s = 0.9
    gives 2.93: with means 15% apart, the tight provider wins the p95."""
    if stream:
        weight, mu, sq = state.ttft_weight, state.ttft_log_mean, state.ttft_log_sq
    else:
        weight, mu, sq = state.latency_weight, state.norm_log_mean, state.norm_log_sq
    if not sq:
        weight = 0.0  # a state from before these moments: the prior
    prior = config.quantile_prior_sigma
    k = config.quantile_prior_weight
    s2 = (weight * log_variance(mu, sq) + k * prior * prior) / (weight + k)
    return math.exp(z * math.sqrt(s2) - 0.5 * s2)


_NORMAL = NormalDist()


def evaluate(states: Sequence[ProviderState], config: DWAConfig, now: float, *,
             stream: bool = False, quantile: float | None = None) -> Evaluation:
    """Score every candidate at `now` (the module docstring's formula). Runs on every
    decision; the strategies, the stats and the recompute's baseline use its terms.

    `quantile` (a request's latency_quantile): each candidate's latency (a stream's
    TTFT) is read at that quantile of its spread (quantile_factor) instead of at its
    mean, so the call goes where it is expected to be answered soonest at, say, its p95."""
    observed = [_observed(state, stream, config) for state in states]
    if quantile is not None:
        z = _NORMAL.inv_cdf(quantile)
        factors = [quantile_factor(state, z, stream, config) for state in states]
        observed = [(weight, mean * f) for (weight, mean), f in zip(observed, factors)]
    else:
        factors = None
    best = min((mean for weight, mean in observed if weight > 0.0), default=math.inf)
    prior = best * (1.0 - config.latency_optimism) if best < math.inf else config.default_latency_s
    k0 = config.latency_prior_weight
    stale_before = now - config.explore_after_s
    recent_before = now - config.explore_min_s
    scarce = sum(weight for weight, _ in observed) * config.explore_share
    avails: list[float] = []
    latencies: list[float] = []
    exploring: list[bool] = []
    unproven: list[bool] = []
    evidence: list[float] = []
    ramp = config.ramp_calls
    for i, (state, (weight, mean)) in enumerate(zip(states, observed)):
        avails.append(availability(state.successes, state.failures, config))
        fresh = False
        if mean > 0.0:
            # how much slower it has been (the long memory is of whole replies: streams keep 30 s)
            history = state.latency_history * factors[i] if factors else state.latency_history
            r = 1.0 if stream else min(mean, history or mean) / best
            stale = stale_before if r <= 1.0 else now - config.explore_after_s * math.sqrt(r)
            recent = recent_before if r <= 1.0 else now - config.explore_min_s * config.explore_backoff ** state.looks
            if state.last_success < stale or (weight < scarce and state.last_success < recent):
                weight, fresh = 0.0, True  # nothing heard for a while, or too little of the traffic: look again
            weight += state.in_flight  # pending calls, imputed at the current mean
        # answers of any kind prove it (latency_weight counts streams too; in_flight, all calls)
        unproven.append(state.in_flight >= (0.0 if fresh else state.latency_weight) + ramp)
        latencies.append((weight * mean + k0 * prior) / (weight + k0))
        evidence.append(weight + k0)
        exploring.append(fresh and not state.in_flight)
    costs = _with_failures(states, latencies, exploring, stream, config)
    prices = [state.profile.unit_price for state in states]
    cheapest = min(prices)
    fastest = min(costs)
    speeds = [fastest / cost for cost in costs]
    blend = config.baseline_blend
    qualities: list[float] = []
    for i, state in enumerate(states):
        q = quality(avails[i], speeds[i], price_factor(prices[i], cheapest, config), config)
        if state.baseline is not None:
            q *= 1.0 - blend + blend * state.baseline
        qualities.append(q)
    return Evaluation(avails, latencies, speeds, prices, qualities, exploring, unproven, evidence)


def _with_failures(states: Sequence[ProviderState], latencies: list[float], exploring: list[bool],
                   stream: bool, config: DWAConfig) -> list[float]:
    """Each candidate's expected time to an answer, in the units of `latencies`: L + the
    evidence's failure rate × the mean time its failures took (converted like latency: a
    non-stream's failure time is divided by its replies' mean size, latency_mean /
    latency_norm)."""
    if not any(state.failure_time for state in states):
        return latencies
    scale = 0.0  # seconds → the latency unit, from a candidate that has both means
    if not stream:
        for state in states:
            if state.latency_mean > 0.0 and state.latency_norm > 0.0:
                scale = state.latency_norm / state.latency_mean
                break
    prior = config.prior_success + config.prior_failure
    costs = []
    for state, latency, fresh in zip(states, latencies, exploring):
        tf = state.failure_time
        if tf > 0.0 and not fresh:
            if not stream:
                own = state.latency_norm / state.latency_mean if state.latency_mean > 0.0 else scale
                tf *= own
            f = state.failures
            latency += f / (state.successes + f + prior) * tf
        costs.append(latency)
    return costs


def tolerant(speed: float, config: DWAConfig) -> float:
    """The speed load_balanced samples on: 1 within speed_tolerance t of the fastest,
    the plain v = min(L) / L from 2t slower on, linear in between.

    What the gateway measures carries its own timing noise (a busy event loop, a
    connection pool warmer on one side): without the tolerance, load_balanced's
    sharpness turns a 1-2% difference of that kind into a lopsided share, and two
    identical upstreams behind a busy gateway split 60/40 to 70/30 for seconds at a
    time. adaptive draws on it too: its latency draws are narrower than a 6 s mean's
    wander, so without it the twins of bench.routing split up to 71/29 after 30 s."""
    t = config.speed_tolerance
    r = 1.0 / speed
    if r <= 1.0 + t:
        return 1.0
    if r >= 1.0 + 2.0 * t:
        return speed
    return 1.0 - (r - 1.0 - t) / t * (1.0 - 1.0 / (1.0 + 2.0 * t))


def hedge_delay(state: ProviderState, config: DWAConfig) -> float | None:
    """When to ask a second deployment for a call `state`'s provider is answering
    (hedge_after_ms "auto"): hedge_factor × its mean latency, at least hedge_min_s;
    None before it has answered anything (nothing to tell a slow call by)."""
    if state.latency_mean <= 0.0:
        return None
    delay = config.hedge_factor * state.latency_mean
    return delay if delay > config.hedge_min_s else config.hedge_min_s


P99_Z = 2.3263479  # the standard normal quantile of 0.99


def first_token_deadline(state: ProviderState, prompt_tokens: int, config: DWAConfig) -> float | None:
    """How long a stream to `state`'s provider waits for its first token before it fails
    over (STREAM_FIRST_TOKEN_TIMEOUT "auto", while another deployment could take it):
    first_token_factor × the p99 of its TTFTs (the log-normal of their logs, the spread at
    least overdue_min_sigma), plus prompt_tokens / first_token_prefill_tps for reading a
    long prompt, at least first_token_min_s. None before it has streamed (nothing to tell
    a hanging stream by). A stream that accepted the call and sends nothing is then
    another deployment's after a few seconds, not after the whole provider timeout; a
    slow first token from a provider whose first tokens are that slow is not cut."""
    if state.ttft_log_sq <= 0.0 or state.ttft_mean <= 0.0:
        return None
    mu = state.ttft_log_mean
    return first_token_wait(math.exp(mu + P99_Z * log_spread(mu, state.ttft_log_sq, config)), prompt_tokens, config)


def first_token_wait(p99: float, prompt_tokens: int, config: DWAConfig) -> float:
    """first_token_deadline's rule for a provider whose TTFTs have this p99 (seconds)."""
    deadline = config.first_token_factor * p99 + prompt_tokens / config.first_token_prefill_tps
    return deadline if deadline > config.first_token_min_s else config.first_token_min_s


def censored_latency(state: ProviderState, elapsed: float, tokens: int, config: DWAConfig) -> float:
    """What a call cancelled unanswered after `elapsed` seconds (a hedge's loser) is
    recorded as: the time it is expected to have taken given that it took longer than
    that, E[X | X > elapsed], under the log-normal of the provider's latency_norm samples
    (the mean and spread of their logs; the spread at least overdue_min_sigma) for a reply
    of `tokens` (the winner's): elapsed · e^(σ²/2 − σz) · Φ(σ − z) / Φ(−z), z the
    elapsed time's standard score. Never below `elapsed`; `elapsed` itself for a provider
    with no samples. Without it a provider whose calls all run past the hedge would
    never answer, never look slower, and be picked first every time."""
    if not state.norm_log_sq or elapsed <= 0.0:
        return elapsed
    mu = state.norm_log_mean
    sigma = log_spread(mu, state.norm_log_sq, config)
    z = (math.log(elapsed / (tokens + config.ttft_tokens)) - mu) / sigma
    if z > 8.0:  # Φ's tails by Mills' ratio: the factor tends to z / (z − σ)
        factor = z / max(z - sigma, 1.0)
    else:
        factor = (math.exp(0.5 * sigma * sigma - sigma * z) * math.erfc((z - sigma) / math.sqrt(2.0))
                  / math.erfc(z / math.sqrt(2.0)))
    return elapsed * factor if factor > 1.0 else elapsed


def p95_latency(state: ProviderState) -> float | None:
    """Approximate p95 latency (seconds) from a log-normal fit of the decayed moments of
    ln(latency); None without samples. Cheap and smooth; it assumes a unimodal, right-
    skewed latency distribution, which LLM latencies roughly are."""
    if state.latency_weight <= 0.0 and state.log_mean == 0.0:
        return None
    return math.exp(state.log_mean + 1.6448536 * math.sqrt(log_variance(state.log_mean, state.log_sq)))
