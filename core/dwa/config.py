"""The DWA's tunables, in one frozen dataclass with documented defaults.

Passed explicitly to the store and the router (never read from globals), so a test or
the benchmark can run the real code with other values. Time is in seconds throughout.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DWAConfig:
    # -- availability: a Beta(prior_success + S, prior_failure + F) posterior over the
    # success probability, where S and F are success/failure counts that decay with
    # elapsed time. Prior mean 0.95 with the weight of two requests: a new provider is
    # trusted, one failure moves it to 0.63 (never 0), and old evidence fades back here.
    prior_success: float = 1.9
    prior_failure: float = 0.1
    availability_half_life_s: float = 60.0

    # -- latency: time-decayed means (an EWMA whose alpha depends on elapsed time, not
    # on the number of samples) of latency, time to first token and seconds per output
    # token, following changes with latency_half_life_s. Routing trusts a mean by its
    # evidence: the samples decayed with the slower evidence_half_life_s, against
    # latency_prior_weight pseudo-samples of an optimistic prior (a little faster than
    # the best candidate), so a provider nobody has sampled lately drifts back toward
    # "faster than the best" and gets re-tried; after explore_after_s without a sample
    # it is tried at once (one call, then it waits for the answer): a sample per
    # provider per 30 s or so, whatever the traffic; per 30 s × √r for one r times
    # slower than the best all along (history_half_life_s; see scoring.py).
    latency_half_life_s: float = 6.0
    # ...and over steady_half_life_s, the mean routing reads while the 6 s mean stays
    # within steady_z of its standard errors of it (scoring.settled)
    steady_half_life_s: float = 60.0
    steady_z: float = 2.0
    evidence_half_life_s: float = 20.0
    explore_after_s: float = 30.0   # no latency sample for this long: evidence counts as 0;
    explore_share: float = 0.005    # so too for a candidate with less than this share of the
    explore_min_s: float = 0.5      # candidates' evidence, after this long without a sample
    explore_backoff: float = 3.0    # (if slower than the best: after this much longer per fresh look it had)
    ttft_tokens: float = 40.0  # routing compares latency / (output tokens + this); see scoring.py
    load_ridge: float = 16.0        # calls² of load variance that shrink the latency-on-load slope
    history_half_life_s: float = 600.0  # the long memory of latency_norm (explore_after_s)
    latency_draw_sigma: float = 0.3  # adaptive: a sample's spread (ln s) for its latency draws
    ramp_calls: float = 1.0         # calls in flight beyond a candidate's evidence before it waits
    latency_prior_weight: float = 1.0
    latency_optimism: float = 0.1   # the prior is this much faster than the best mean seen
    default_latency_s: float = 1.0  # the prior when no candidate has data (all then share it)

    # -- a request's latency_quantile (see scoring.quantile_factor): the spread (ln s) of a
    # provider's latency_norm, or a stream's TTFT, assumed before its samples show it,
    # with this many samples' weight
    quantile_prior_sigma: float = 0.5
    quantile_prior_weight: float = 2.0

    # -- the score (see scoring.py)
    availability_exponent: float = 2.0
    cost_exponent: float = 0.02     # cost only breaks near-ties in load_balanced/adaptive
    price_floor_per_1k: float = 0.0001  # prices below $0.10/M tokens count as equal
    sharpness: float = 16.0         # load_balanced samples providers ∝ quality ** sharpness
    speed_tolerance: float = 0.02   # slower than the fastest by less than this counts as as fast
    baseline_blend: float = 0.2     # weight of the recompute job's baseline weight
    cost_min_availability: float = 0.5  # `cost` skips providers less available than this

    # -- circuit breaker (see breaker.py)
    failure_threshold: int = 5      # consecutive retryable failures that open the circuit
    cooldown_s: float = 5.0         # first open period; doubles on each failed probe...
    cooldown_max_s: float = 30.0    # ...up to this
    probe_timeout_s: float = 30.0   # a claimed half-open probe expires after this
    rate_limit_default_s: float = 5.0  # cooldown after a 429 that carried no Retry-After

    # -- hedge_after_ms "auto": a second deployment after this many times the first's mean
    # latency (about its p95 at the spread LLM calls show), never sooner than hedge_min_s
    hedge_factor: float = 2.0
    hedge_min_s: float = 0.05

    # -- a stream's first token (STREAM_FIRST_TOKEN_TIMEOUT "auto", scoring.first_token_deadline):
    # while another deployment could take the call, a stream waits for its first token this
    # many times the p99 of the deployment's TTFTs, plus the prompt's reading at
    # first_token_prefill_tps, never less than first_token_min_s, then fails over
    first_token_factor: float = 3.0
    first_token_min_s: float = 2.0
    first_token_prefill_tps: float = 2000.0

    # -- calls in flight too long (see StoreBase.mark_overdue): failures in progress
    overdue_min_s: float = 1.0      # a call younger than this is never suspected
    overdue_prior: float = 0.02     # the least failure rate assumed of a call running long
    overdue_min_sigma: float = 0.25  # the least spread assumed of a provider's latencies (ln s; settled too)
    overdue_excess: float = 1.0     # calls running long beyond its failure rate's share: a spell

    # -- shared in-flight counts (see store.py)
    in_flight_max_age_s: float = 30.0  # other instances' counts older than this are ignored

    # -- housekeeping
    state_ttl_s: int = 7 * 24 * 3600  # a provider's state expires after a week unused
