"""A provider's live state as read at one instant, what an outcome reports, a snapshot.

These are plain slotted classes, not pydantic models: they are built on every routing
decision and parsing must stay in the microseconds (see `RedisDWAStore.parse`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from core.dwa.profile import ProviderProfile


class OutcomeKind(str, Enum):
    """How a provider call ended, as far as the DWA is concerned."""

    SUCCESS = "ok"
    FAILURE = "fail"          # retryable and the provider's fault: timeout, connection, 5xx
    RATE_LIMITED = "rate"     # 429: a cooldown until Retry-After, not an outage
    CLIENT_ERROR = "client"   # other 4xx: the request's fault; the provider answered
    CANCELLED = "cancel"      # a hedge's or race's loser, cancelled unanswered: slower than it ran


def classify_status(status: int | None) -> OutcomeKind:
    """Map an HTTP status (None: no response at all, e.g. a timeout) to an OutcomeKind."""
    if status is None or status >= 500 or status == 408:
        return OutcomeKind.FAILURE
    if status == 429:
        return OutcomeKind.RATE_LIMITED
    if status >= 400:
        return OutcomeKind.CLIENT_ERROR
    return OutcomeKind.SUCCESS


@dataclass(slots=True)
class Outcome:
    """One finished provider call. `now` is when it finished (seconds, the caller's clock).

    `latency_s` is the whole call; `ttft_s` the time to first token of a stream (None
    when not streamed). A CANCELLED call never finished: its `latency_s` is the time it
    is expected to have taken (scoring.censored_latency) and `output_tokens` the size of
    the reply that won, by which its latency is compared; it counts no tokens or cost. `error` is a short class name ("timeout", "http_503") for
    `last_error`. `retry_after_s` comes from a 429's Retry-After header. `load` is the
    Decision's (how busy the provider was when the call started), 0 when unknown.
    """

    provider: str
    kind: OutcomeKind
    latency_s: float
    now: float
    input_tokens: int = 0
    output_tokens: int = 0
    ttft_s: float | None = None
    error: str | None = None
    retry_after_s: float | None = None
    fresh: bool = False
    load: int = 0  # calls in flight to the provider when this one started, itself included


@dataclass(slots=True)
class ProviderState:
    """One provider's state, decayed to the instant `Snapshot.now`.

    successes / failures: time-decayed counts (the Beta posterior's evidence).
    latency_weight: the evidence behind latency_norm (seconds per output token +
    DWAConfig.ttft_tokens, what routing compares): its samples, decayed with
    evidence_half_life_s; ttft_* likewise for streams (seconds). latency_mean (seconds) and
    log_mean / log_sq (decayed moments of ln latency: the latency's spread, for a p95
    estimate and for calls running unusually long) come with every read, and so do
    norm_log_mean / norm_log_sq (the same of ln latency_norm, for latency_quantile) and
    ttft_log_mean / ttft_log_sq (of ln TTFT, for streams).
    tripped: the breaker opened and no success has closed it since; open_until: end of
    the current open period (half-open after it); probe_until: a claimed half-open probe
    is running until then; rate_limited_until: a 429's Retry-After.
    last_success: when the last latency sample arrived (0: never).
    in_flight: this process's exact count plus other instances' recent reports.
    baseline: the recompute job's weight in [0, 1], None when it has not run.
    """

    # RedisDWAStore.parse builds these positionally: keep the first nine in this order.
    name: str
    profile: ProviderProfile
    successes: float = 0.0
    failures: float = 0.0
    latency_weight: float = 0.0
    latency_norm: float = 0.0
    last_success: float = 0.0
    in_flight: int = 0
    baseline: float | None = None
    rate_limited_until: float = 0.0
    tripped: bool = False
    open_until: float = 0.0
    probe_until: float = 0.0
    ttft_weight: float = 0.0
    ttft_mean: float = 0.0
    consecutive_failures: int = 0
    latency_mean: float = 0.0
    load_mean: float = 0.0   # decayed means of the load, load × latency_norm sample, load²
    load_cross: float = 0.0  # (see scripts.py): latency_norm as a function of the load
    load_sq: float = 0.0
    latency_history: float = 0.0  # latency_norm over a long memory (history_half_life_s)...
    looks: float = 0.0  # ...and the fresh looks answered in it, as of the last outcome
    failure_time: float = 0.0  # the mean duration of the failures counted in `failures` (s)
    log_mean: float = 0.0
    log_sq: float = 0.0
    norm_log_mean: float = 0.0  # the same moments of ln(latency_norm's samples): their spread
    norm_log_sq: float = 0.0    # without the replies' lengths (a request's latency_quantile)
    ttft_log_mean: float = 0.0  # and of ln TTFT (streams: calls hanging before their first
    ttft_log_sq: float = 0.0    # token, a stream's latency_quantile)
    steady_norm: float = 0.0  # latency_norm over a steadier memory (steady_half_life_s; scoring.settled)
    details: dict[str, Any] | None = None  # every stored field; filled only for stats


@dataclass(slots=True)
class Snapshot:
    """Every candidate's state read in one round trip, at time `now`.

    `order` is the candidates in the order the caller gave them (priority ties and
    round-robin rotation follow it); `rr_counter` is the shared round-robin counter's
    value when the read folded in its INCR, else None.
    """

    now: float
    order: tuple[str, ...]
    states: dict[str, ProviderState] = field(default_factory=dict)
    rr_counter: int | None = None
