"""The discrete-event simulator: arrivals, calls, outcomes and failover on a simulated clock.

Events are processed in simulated-time order; a policy's pick and record run when their
event does (the DWA policy's run the real Router against Redis), so the routers see
the world exactly as a gateway would, only without waiting.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence

from bench.routing.scenario import Scenario
from bench.routing.world import CallResult, Request, World, requests_for


class Policy(Protocol):
    async def pick(self, request: Request, now: float, exclude: Sequence[str]) -> str | None: ...

    async def record(self, request: Request, name: str, result: CallResult, now: float) -> None: ...

    async def cancel(self, request: Request, name: str, now: float, elapsed: float) -> None: ...  # hedging only

    async def hedge_delay(self, request: Request, name: str, now: float) -> float | None: ...  # hedging "auto"

    # A policy may also have `async first_token_deadline(request, name, now)` (the DWA's and
    # the oracle's): how long a stream waits for its first token while another provider
    # could take it, after which it fails over as a timeout of that long (the gateway's
    # STREAM_FIRST_TOKEN_TIMEOUT).
    # A policy may also have `async answering(request, name, started)` (the DWA's): told
    # of a stream's first token, `started` being when its call began.


@dataclass
class RunResult:
    latencies: list[float] = field(default_factory=list)   # per request, failures included
    ok: int = 0
    requests: int = 0
    cost: float = 0.0
    attempts: dict[str, list[float]] = field(default_factory=dict)   # start times per provider
    successes_at: dict[str, list[float]] = field(default_factory=dict)
    failovers: int = 0
    rate_limited: int = 0
    errors: int = 0
    hedges: int = 0            # requests also sent to a second provider (hedging)


def make_world(scenario: Scenario) -> tuple[World, list[Request]]:
    return World(scenario), requests_for(scenario)


async def simulate(scenario: Scenario, world: World, requests: list[Request], policy: Policy,
                   hedge_after_s: float | Literal["auto"] | None = None) -> RunResult:
    """Run the traffic through `policy`. With `hedge_after_s`, a request not answered by
    then is also sent to another provider (once), as the gateway's hedge_after_ms does:
    each of the two fails over on its own, the first success wins and the other call is
    cancelled (it frees its provider at once and records the time it is expected to have
    taken, as the gateway does: scoring.censored_latency). Streams are not
    hedged, as the gateway hedges only whole replies. "auto": after the policy's
    hedge_delay for the provider it picked (none when it has no figure)."""
    names = [p.name for p in scenario.providers]
    prices = {p.name: (p.input_price_per_1k, p.output_price_per_1k) for p in scenario.providers}
    result = RunResult(attempts={n: [] for n in names}, successes_at={n: [] for n in names})
    deadline = scenario.deadline_s
    tried: dict[int, list[str]] = {}
    running: dict[int, dict[int, tuple[str, float]]] = {}  # request → its calls in flight (id → provider, start)
    cancelled: set[int] = set()
    heap: list[tuple[float, int, int, object]] = []
    seq = 0
    for request in requests:
        heap.append((request.arrival, seq, 0, request))
        seq += 1
    heapq.heapify(heap)
    answering = getattr(policy, "answering", None)
    first_token = getattr(policy, "first_token_deadline", None)

    async def finish(request: Request, now: float, ok: bool, at: float | None = None) -> None:
        result.requests += 1
        result.latencies.append((now if at is None else at) - request.arrival)
        if ok:
            result.ok += 1
        tried.pop(request.rid, None)
        for call_id, (name, started) in running.pop(request.rid, {}).items():  # a hedge's other call
            cancelled.add(call_id)
            world.in_flight[name] -= 1
            await policy.cancel(request, name, now, now - started)

    async def attempt(request: Request, now: float) -> str | None:
        nonlocal seq
        already = tried.setdefault(request.rid, [])
        name = await policy.pick(request, now, already)
        if name is None:
            return None
        already.append(name)
        result.attempts[name].append(now)
        call = world.call(name, now, request)
        if first_token is not None and request.stream and len(already) < len(names):
            wait = await first_token(request, name, now)  # another could take it: a late first token fails over
            if wait is not None and (call.ttft if call.kind == "ok" and call.ttft is not None
                                     else call.latency if call.kind == "fail" else 0.0) > wait:
                call = CallResult("fail", wait, "timeout")
        left = request.arrival + deadline - now
        if call.latency > left:  # the request's deadline cuts the call short
            call = CallResult("fail", left, "timeout")
        world.in_flight[name] += 1
        running.setdefault(request.rid, {})[seq] = (name, now)
        heapq.heappush(heap, (now + call.latency, seq, 1, (request, name, call)))
        seq += 1
        if answering is not None and request.stream and call.kind == "ok" and call.ttft is not None:
            heapq.heappush(heap, (now + call.ttft, seq, 3, (request, name, now)))  # its first token
            seq += 1
        return name

    while heap:
        now, call_id, kind, data = heapq.heappop(heap)
        if kind == 0:
            request = data  # type: ignore[assignment]
            name = await attempt(request, now)  # type: ignore[arg-type]
            if name is None:
                await finish(request, now, False)  # type: ignore[arg-type]
            elif hedge_after_s is not None and not request.stream:  # type: ignore[union-attr]
                delay = (await policy.hedge_delay(request, name, now)  # type: ignore[arg-type]
                         if hedge_after_s == "auto" else hedge_after_s)
                if delay is not None:
                    heapq.heappush(heap, (now + delay, seq, 2, request))
                    seq += 1
            continue
        if kind == 3:  # a stream's first token: its tokens are coming
            await answering(*data)  # type: ignore[misc]
            continue
        if kind == 2:  # the hedge: still unanswered, one call in flight
            request = data  # type: ignore[assignment]
            if len(running.get(request.rid, {})) == 1 and len(tried[request.rid]) < len(names):  # type: ignore[union-attr]
                if await attempt(request, now) is not None:  # type: ignore[arg-type]
                    result.hedges += 1
            continue
        if call_id in cancelled:
            cancelled.discard(call_id)
            continue
        request, name, call = data  # type: ignore[misc]
        world.in_flight[name] -= 1
        del running[request.rid][call_id]
        await policy.record(request, name, call, now)
        if call.kind == "ok":
            p_in, p_out = prices[name]
            result.cost += (request.input_tokens * p_in + request.output_tokens * p_out) / 1000.0
            result.successes_at[name].append(now)
            # a stream's caller waited for its first token, the call's start + its TTFT
            first = now - call.latency + call.ttft if request.stream and call.ttft is not None else None
            await finish(request, now, True, first)
            continue
        if call.kind == "rate":
            result.rate_limited += 1
        else:
            result.errors += 1
        if now - request.arrival < deadline and len(tried[request.rid]) < len(names):
            result.failovers += 1
            if await attempt(request, now):
                continue
        if not running[request.rid]:  # no hedge still running
            await finish(request, now, False)
    return result


# --- reading a run ---------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = math.ceil(q / 100.0 * len(ordered))  # nearest rank
    return ordered[min(len(ordered), max(1, rank)) - 1]


def summary(run: RunResult) -> dict[str, float]:
    n = max(1, run.requests)
    return {
        "mean_latency_ms": 1000.0 * sum(run.latencies) / n,
        "p95_latency_ms": 1000.0 * percentile(run.latencies, 95),
        "success_rate": run.ok / n,
        "cost": run.cost,
    }


def recovery_times(scenario: Scenario, run: RunResult, window_s: float = 10.0) -> dict[str, float | None] | None:
    """For the watched provider: seconds from the end of its last outage (or last phase)
    to (a) its first success and (b) the first moment its share of attempts over the
    preceding `window_s` is back to half its share in the minute before the outage."""
    name = scenario.watch_recovery
    if name is None:
        return None
    provider = next(p for p in scenario.providers if p.name == name)
    phases = [p for p in provider.phases if p.down] or list(provider.phases)
    if not phases:
        return None
    phase = max(phases, key=lambda p: p.end_s)
    start, recovered = phase.start_s, phase.end_s
    all_attempts = sorted(t for times in run.attempts.values() for t in times)
    mine = run.attempts[name]

    def share(lo: float, hi: float) -> float:
        total = _count(all_attempts, lo, hi)
        return _count(mine, lo, hi) / total if total else 0.0

    before = share(max(0.0, start - 60.0), start)
    first = next((t for t in run.successes_at[name] if t >= recovered), None)
    back = None
    if before > 0:
        t = recovered + 1.0
        while t <= scenario.duration_s:
            if share(t - window_s, t) >= 0.5 * before:
                back = t - recovered
                break
            t += 1.0
    return {
        "share_before": before,
        "first_success_s": None if first is None else first - recovered,
        "traffic_back_s": back,
    }


def _count(sorted_times: Sequence[float], lo: float, hi: float) -> int:
    from bisect import bisect_left

    return bisect_left(sorted_times, hi) - bisect_left(sorted_times, lo)


def traffic_share(scenario: Scenario, run: RunResult, buckets: int = 60) -> tuple[list[float], dict[str, list[float]]]:
    """Per-provider share of attempts in `buckets` equal time slices (for the plot)."""
    width = scenario.duration_s / buckets
    counts = {name: [0] * buckets for name in run.attempts}
    for name, times in run.attempts.items():
        for t in times:
            counts[name][min(buckets - 1, int(t / width))] += 1
    shares: dict[str, list[float]] = {name: [] for name in counts}
    for b in range(buckets):
        total = sum(counts[name][b] for name in counts)
        for name in counts:
            shares[name].append(counts[name][b] / total if total else 0.0)
    return [width * (b + 0.5) for b in range(buckets)], shares
