"""The simulated providers: their true behaviour at any simulated time.

Nothing here sleeps or touches the network. Each call's luck (failure draw, latency
noise) is a pure function of (scenario seed, request id, provider), so every strategy
meets the same luck when it sends the same request to the same provider.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from bench.routing.scenario import Phase, Provider, Scenario

RATE_LIMIT_WINDOW_S = 60.0
RATE_LIMITED_LATENCY_S = 0.05  # a 429 comes back fast


@dataclass(slots=True)
class Request:
    rid: int
    arrival: float
    instance: int
    input_tokens: int
    output_tokens: int
    stream: bool = False      # what counts is the time to its first token


@dataclass(slots=True)
class CallResult:
    kind: str                 # ok | fail | rate
    latency: float            # seconds until the answer (or the error)
    error: str | None = None
    retry_after: float | None = None  # a 429's Retry-After; on a success, its limit headers' reset
    ttft: float | None = None  # a success's time to first token (seconds)


def requests_for(scenario: Scenario) -> list[Request]:
    """The scenario's traffic: Poisson arrivals (at the rate its load phases give, by
    thinning a Poisson process at the peak rate), uniform token counts, instances in turn."""
    rng = random.Random(scenario.seed)
    out: list[Request] = []
    t = 0.0
    rid = 0
    lo_in, hi_in = scenario.input_tokens
    lo_out, hi_out = scenario.output_tokens
    peak = max([1.0, *(phase.rate_factor for phase in scenario.load_phases)])
    while True:
        t += rng.expovariate(scenario.rate_per_s * peak)
        if t >= scenario.duration_s:
            return out
        if peak > 1.0 or scenario.load_phases:
            if rng.random() * peak >= scenario.rate_factor(t):
                continue
        request = Request(rid, t, rid % scenario.instances, rng.randint(lo_in, hi_in), rng.randint(lo_out, hi_out))
        if scenario.stream_share:  # drawn only then: the other scenarios' traffic is unchanged
            request.stream = rng.random() < scenario.stream_share
        out.append(request)
        rid += 1


class World:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.providers = {p.name: p for p in scenario.providers}
        self.in_flight = {p.name: 0 for p in scenario.providers}
        self._window = {p.name: (-1, 0) for p in scenario.providers}
        self.calls = {p.name: 0 for p in scenario.providers}

    # -- the truth ----------------------------------------------------------------------
    @staticmethod
    def phase(provider: Provider, t: float) -> Phase | None:
        current = None
        for phase in provider.phases:
            if phase.start_s <= t < phase.end_s:
                current = phase
        return current

    def mean_latency(self, name: str, t: float, output_tokens: int, in_flight: int | None = None) -> float:
        """The true expected latency of a successful call started at t (a cold start's
        included, while its first cold_calls answers are still to come)."""
        return self._expected(name, t, output_tokens, in_flight)

    def mean_ttft(self, name: str, t: float) -> float:
        """The true expected time to the first token of a call started at t."""
        return self._expected(name, t, 0, None)

    def _expected(self, name: str, t: float, output_tokens: int, in_flight: int | None) -> float:
        p = self.providers[name]
        phase = self.phase(p, t)
        factor = phase.latency_factor if phase else 1.0
        latency = (p.ttft_ms + output_tokens * p.ms_per_token) * factor / 1000.0
        if self.calls[name] < p.cold_calls:
            latency += p.cold_ms / 1000.0
        if p.capacity:
            load = (self.in_flight[name] if in_flight is None else in_flight) + 1
            if load > p.capacity:
                latency *= 1.0 + (load - p.capacity) / p.capacity
        return latency

    def failure(self, name: str, t: float) -> tuple[float, str, float]:
        """(probability a call fails, error kind, seconds a failure takes) at t."""
        p = self.providers[name]
        phase = self.phase(p, t)
        rate, kind, ms = p.error_rate, p.error_kind, p.error_ms
        if phase is not None:
            if phase.down:
                rate = 1.0
            elif phase.error_rate is not None:
                rate = phase.error_rate
            kind = phase.error_kind or kind
            ms = phase.error_ms if phase.error_ms is not None else ms
        return rate, kind, ms / 1000.0

    def rate_limited(self, name: str, t: float) -> bool:
        p = self.providers[name]
        if not p.rate_limit_rpm:
            return False
        window, count = self._window[name]
        return window == int(t // RATE_LIMIT_WINDOW_S) and count >= p.rate_limit_rpm

    # -- a call ---------------------------------------------------------------------------
    def call(self, name: str, t: float, request: Request) -> CallResult:
        p = self.providers[name]
        limit_reset = None
        if p.rate_limit_rpm:
            window = int(t // RATE_LIMIT_WINDOW_S)
            current, count = self._window[name]
            if current != window:
                current, count = window, 0
            if count >= p.rate_limit_rpm:
                self._window[name] = (current, count)
                retry_after = math.ceil((window + 1) * RATE_LIMIT_WINDOW_S - t)
                return CallResult("rate", RATE_LIMITED_LATENCY_S, "http_429", float(retry_after))
            self._window[name] = (current, count + 1)
            if count + 1 >= p.rate_limit_rpm:  # the reply's limit headers say none is left
                limit_reset = float(math.ceil((window + 1) * RATE_LIMIT_WINDOW_S - t))
        luck = random.Random(f"{self.scenario.seed}:{request.rid}:{name}")
        rate, kind, error_s = self.failure(name, t)
        if luck.random() < rate:
            return CallResult("fail", error_s * (0.8 + 0.4 * luck.random()), kind)
        sigma = p.jitter
        noise = math.exp(sigma * luck.gauss(0.0, 1.0) - sigma * sigma / 2.0)
        latency = self.mean_latency(name, t, request.output_tokens) * noise
        ttft = self.mean_ttft(name, t) * noise
        self.calls[name] += 1
        return CallResult("ok", latency, retry_after=limit_reset, ttft=ttft)
