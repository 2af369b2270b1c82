"""The router end to end: real Redis, several router instances, no mocks."""

from __future__ import annotations

import asyncio
import heapq
import random
import uuid
from collections import Counter

import pytest

from core.dwa import DWAConfig, Outcome, OutcomeKind, ProviderProfile, RedisDWAStore, Router
from core.kv import KV, RedisKV
from core.settings import RoutingStrategy

T0 = 1_700_000_000.0
NAMES = ["alpha", "beta", "gamma"]
PROFILES = [ProviderProfile("alpha", priority=1, input_price_per_1k=0.003, output_price_per_1k=0.015),
            ProviderProfile("beta", priority=2, input_price_per_1k=0.0005, output_price_per_1k=0.0015),
            ProviderProfile("gamma", priority=3)]


@pytest.fixture
def ns() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def make_router(kv: KV, ns: str, strategy: RoutingStrategy = RoutingStrategy.load_balanced,
                instance: str | None = None, seed: int = 0, **config) -> Router:
    store = RedisDWAStore(kv, PROFILES, DWAConfig(**config), namespace=ns, instance_id=instance)
    return Router(store, strategy=strategy, rng=random.Random(seed))


async def serve(router: Router, now: float, latency: dict[str, float], exclude=()) -> str:
    decision = await router.pick(NAMES, now, exclude=exclude)
    assert decision is not None
    await router.record(Outcome(decision.provider, OutcomeKind.SUCCESS, latency[decision.provider], now + 0.1,
                                input_tokens=100, output_tokens=200))
    return decision.provider


async def test_round_robin_rotates_exactly_across_two_router_instances(kv: KV, ns: str) -> None:
    one = make_router(kv, ns, RoutingStrategy.round_robin, "one")
    two = make_router(kv, ns, RoutingStrategy.round_robin, "two")
    picks = []
    for i in range(12):
        router = (one, two, two, one)[i % 4]  # any interleaving of instances
        decision = await router.pick(NAMES, T0 + i)
        assert decision is not None and decision.reason == "round_robin"
        picks.append(decision.provider)
    assert picks == NAMES * 4
    # concurrently too: each INCR is one position of the rotation
    decisions = await asyncio.gather(*(r.pick(NAMES, T0 + 20) for r in [one, two] * 6))
    assert Counter(d.provider for d in decisions) == {name: 4 for name in NAMES}


async def test_priority_skips_an_open_circuit_and_returns_when_it_closes(kv: KV, ns: str) -> None:
    router = make_router(kv, ns, RoutingStrategy.priority, failure_threshold=2, cooldown_s=5.0)
    decision = await router.pick(NAMES, T0)
    assert (decision.provider, decision.reason) == ("alpha", "priority_order")
    await router.record(Outcome("alpha", OutcomeKind.FAILURE, 0.2, T0, error="http_503"))
    retry = await router.pick(NAMES, T0, exclude={"alpha"})
    assert (retry.provider, retry.reason) == ("beta", "fallback_after_error")
    await router.record(Outcome("beta", OutcomeKind.SUCCESS, 0.5, T0 + 0.5, output_tokens=100))
    router.store.start("alpha")
    await router.record(Outcome("alpha", OutcomeKind.FAILURE, 0.2, T0 + 1, error="timeout"))  # opens
    decision = await router.pick(NAMES, T0 + 2)
    assert (decision.provider, decision.reason) == ("beta", "priority_order")
    await router.record(Outcome("beta", OutcomeKind.SUCCESS, 0.5, T0 + 2.5, output_tokens=100))
    # after the cooldown, the next pick is alpha's probe; its success closes the circuit
    probe = await router.pick(NAMES, T0 + 7)
    assert (probe.provider, probe.reason, probe.probe) == ("alpha", "half_open_probe", True)
    await router.record(Outcome("alpha", OutcomeKind.SUCCESS, 0.4, T0 + 7.4, output_tokens=100))
    decision = await router.pick(NAMES, T0 + 8)
    assert (decision.provider, decision.reason) == ("alpha", "priority_order")


async def test_only_one_of_two_instances_sends_the_half_open_probe(kv: KV, ns: str) -> None:
    one = make_router(kv, ns, RoutingStrategy.priority, "one", failure_threshold=1)
    two = make_router(kv, ns, RoutingStrategy.priority, "two", failure_threshold=1)
    one.store.start("alpha")
    await one.record(Outcome("alpha", OutcomeKind.FAILURE, 1.0, T0, error="timeout"))
    now = T0 + DWAConfig().cooldown_s + 1
    first, second = await asyncio.gather(one.pick(NAMES, now), two.pick(NAMES, now))
    assert sorted([first.reason, second.reason]) == ["half_open_probe", "priority_order"]
    assert {first.provider, second.provider} == {"alpha", "beta"}


async def test_load_balanced_learns_the_fastest_and_leaves_a_failing_one(kv: KV, ns: str) -> None:
    router = make_router(kv, ns)
    latency = {"alpha": 2.0, "beta": 0.6, "gamma": 1.5}
    picks = Counter()
    now = T0
    for _ in range(150):
        picks[await serve(router, now, latency)] += 1
        now += 0.5
    assert picks["beta"] > 100
    recent = Counter()
    for _ in range(40):
        recent[await serve(router, now, latency)] += 1
        now += 0.5
    assert recent["beta"] >= 34
    # beta starts failing fast: traffic moves away before its circuit would even open
    for _ in range(8):
        decision = await router.pick(NAMES, now)
        ok = decision.provider != "beta"
        await router.record(Outcome(decision.provider, OutcomeKind.SUCCESS if ok else OutcomeKind.FAILURE,
                                    latency[decision.provider] if ok else 0.1, now + 0.1,
                                    output_tokens=200 if ok else 0))
        now += 0.5
    stats = await router.stats(NAMES, now)
    assert stats["beta"]["availability"] < stats["gamma"]["availability"]


async def test_a_provider_judged_slow_on_a_few_samples_is_looked_at_afresh_and_shares_again(
        kv: KV, ns: str) -> None:
    """Two identical providers; alpha's first answers were slow (a cold start; a dozen,
    as a twin that lost the race out of its cold start holds in the real gateway). It is
    not left with that verdict: holding too little of the evidence, it is looked at
    afresh, its means restart from the new sample, and the two share the traffic."""
    store = RedisDWAStore(kv, [ProviderProfile("alpha"), ProviderProfile("beta")], namespace=ns)
    router = Router(store, rng=random.Random(3))
    names = NAMES[:2]
    now = T0
    for _ in range(13):
        router.store.start("alpha")
        await router.record(Outcome("alpha", OutcomeKind.SUCCESS, 0.9, now, output_tokens=100))
    picks: Counter[str] = Counter()
    looks = []
    for step in range(6000):
        decision = await router.pick(names, now)
        picks[decision.provider] += 1
        if decision.explore:
            looks.append((step, decision.provider))
        await router.record(Outcome(decision.provider, OutcomeKind.SUCCESS, 0.1, now + 0.004, output_tokens=100,
                                    fresh=decision.explore))
        now += 0.005  # 200 requests a second
        if step == 3999:
            picks = Counter()
    # within 15 s (once its evidence, decaying, is 0.5% of all), not after 30 s × √9
    assert looks and looks[0][1] == "alpha" and looks[0][0] < 3000, looks[:3]
    assert 0.4 <= picks["alpha"] / 2000 <= 0.6, picks  # and it shares half, from 20 s to 30 s


async def test_a_provider_whose_timeouts_cost_30_s_gets_its_traffic_back_once_it_recovers(
        kv: KV, ns: str) -> None:
    """alpha answers in about 1 s and beta in 1.3 s, 5 calls a second; from 60 s to 120 s,
    40% of alpha's calls hang until a 30 s timeout, and the traffic leaves it. Once it
    has recovered, a look finds it answering and the traffic comes back: the spell's
    failures are not kept on the books for minutes (before: one call in 30 s to alpha
    for the 3 minutes after, its failure rate from then times 30 s held against it)."""
    store = RedisDWAStore(kv, [ProviderProfile("alpha"), ProviderProfile("beta")], namespace=ns)
    router = Router(store, rng=random.Random(5))
    draws = random.Random(7)
    finishing: list[tuple[float, int, Outcome]] = []  # calls in flight, by when they end
    shares: dict[int, Counter[str]] = {}
    now = T0
    for call in range(1500):
        while finishing and finishing[0][0] <= now:
            await router.record(heapq.heappop(finishing)[2])
        decision = await router.pick(["alpha", "beta"], now)
        name = decision.provider
        hangs = name == "alpha" and 60 <= now - T0 < 120 and draws.random() < 0.4
        latency = 30.0 if hangs else (1.0 if name == "alpha" else 1.3) * draws.lognormvariate(0.0, 0.2)
        heapq.heappush(finishing, (now + latency, call, Outcome(
            name, OutcomeKind.FAILURE if hangs else OutcomeKind.SUCCESS, latency, now + latency,
            output_tokens=0 if hangs else 200, error="timeout" if hangs else None, fresh=decision.explore,
            load=decision.load)))
        shares.setdefault(int(now - T0) // 30, Counter())[name] += 1
        now += 0.2
    assert shares[3]["beta"] > 0.9 * 150, shares  # the spell: traffic left alpha
    back = shares[5] + shares[6]  # from 30 s after the recovery
    assert back["alpha"] > 0.8 * 300, shares


def test_a_long_call_is_suspected_sooner_at_a_provider_that_has_been_failing() -> None:
    """Two providers whose answers take about 2 s (σ 0.3 in ln s), each with a call
    running 3.5 s: that is in the last 3% of `reliable`'s answers, so it counts as under
    half a failure; `failing` lost one call in six lately, so it counts nearly whole."""
    import math

    from core.dwa.state import ProviderState
    from core.dwa.store import StoreBase

    store = StoreBase([ProviderProfile("reliable"), ProviderProfile("failing")])
    counted = {}
    for name, failures in (("reliable", 0.0), ("failing", 40.0)):
        state = ProviderState(name, store.profile(name), successes=200.0, failures=failures,
                              latency_mean=2.1, log_mean=math.log(2.0), log_sq=math.log(2.0) ** 2 + 0.09)
        store.start(name, T0 - 3.5)
        store.start(name, T0 - 0.5)  # younger than its usual latency: not looked at
        store.mark_overdue(state, T0)
        counted[name] = state.failures - failures
        if not failures:
            assert state.failure_time == pytest.approx(3.5)  # a failure in progress costs its age so far
    assert 0.2 < counted["reliable"] < 0.5 and counted["failing"] > 0.8, counted


async def test_calls_hanging_far_past_a_providers_latency_count_against_it_before_they_time_out(
        kv: KV, ns: str) -> None:
    """alpha starts hanging: its calls will time out after 30 s. Before the first of them
    comes back, the ones running far past its usual latency (here 1 s, overdue_min_s,
    for calls that took 0.5 s each) already count as failures in progress, and traffic
    moves to beta."""
    store = RedisDWAStore(kv, [ProviderProfile("alpha"), ProviderProfile("beta")], namespace=ns)
    router = Router(store, rng=random.Random(5))
    names = NAMES[:2]
    now = T0
    for name, latency in (("alpha", 0.5), ("beta", 0.6)):  # alpha a little faster, until it hangs
        for _ in range(40):
            store.start(name, now)
            await router.record(Outcome(name, OutcomeKind.SUCCESS, latency, now + latency, output_tokens=100))
    picks: Counter[str] = Counter()
    for _ in range(40):  # 10 s at 4 a second; alpha answers nothing, beta at once
        now += 0.25
        decision = await router.pick(names, now)
        picks[decision.provider] += 1
        if decision.provider == "beta":
            await router.record(Outcome("beta", OutcomeKind.SUCCESS, 0.6, now, output_tokens=100))
    hanging = picks["alpha"]
    assert 0 < hanging <= 8, picks  # some went to alpha until their age gave it away
    late: Counter[str] = Counter()
    for _ in range(20):
        now += 0.25
        decision = await router.pick(names, now)
        late[decision.provider] += 1
        if decision.provider == "beta":
            await router.record(Outcome("beta", OutcomeKind.SUCCESS, 0.6, now, output_tokens=100))
    assert late["beta"] >= 19, late  # none of its timeouts is back yet, and it is avoided


async def test_a_busy_provider_that_starts_hanging_is_left_before_a_minute_of_answers_outweighs_it(
        kv: KV, ns: str) -> None:
    """alpha has answered 8 calls a second in about 1 s for a minute; then 40% of its
    calls hang until a 30 s timeout. Against that minute of answers, the calls running
    long are a failure rate of a few percent for seconds; among the calls started since
    the spell began they are four in ten, which is what the next call meets. Traffic
    leaves alpha within two of its latencies (before: 18 calls hung, the traffic left
    after 4.5 s), long before the first timeout comes back."""
    store = RedisDWAStore(kv, [ProviderProfile("alpha"), ProviderProfile("beta")], namespace=ns)
    router = Router(store, rng=random.Random(3))
    draws = random.Random(11)
    finishing: list[tuple[float, int, Outcome]] = []  # calls that will answer, by when
    hung = 0
    picks: dict[int, Counter[str]] = {}  # by second of the spell (-1: the second before it)
    now = T0
    for call in range(8 * 75):  # 60 s healthy, then 15 s of the spell
        while finishing and finishing[0][0] <= now:
            await router.record(heapq.heappop(finishing)[2])
        decision = await router.pick(["alpha", "beta"], now)
        name = decision.provider
        second = int(now - T0) - 60
        if name == "alpha" and second >= 0 and draws.random() < 0.4:
            hung += 1  # its timeout would come back after 30 s: after this test
        else:
            latency = (1.0 if name == "alpha" else 1.2) * draws.lognormvariate(0.0, 0.2)
            heapq.heappush(finishing, (now + latency, call, Outcome(
                name, OutcomeKind.SUCCESS, latency, now + latency, output_tokens=200, fresh=decision.explore,
                load=decision.load)))
        picks.setdefault(second, Counter())[name] += 1
        now += 0.125
    assert picks[-1]["alpha"] >= 6, picks[-1]  # it was the faster one
    assert hung <= 10, hung
    assert sum(picks[s]["alpha"] for s in range(3, 15)) == 0, picks


def test_calls_running_long_count_by_their_cohort_when_the_failure_rate_cannot_explain_them() -> None:
    """A provider with 400 answers on its books and six calls running 2-3.5 s, far past
    its usual second. Eight others started in the same span and were answered: six in
    fifteen of that cohort are hanging, and the failures say so (before: 400 answers
    diluted them to 1.5%). With 200 answered in the span instead, six stragglers are what
    its failure rate and tail explain, and they count only as failures in progress."""
    from core.dwa.state import ProviderState
    from core.dwa.store import StoreBase

    shares = {}
    for answered in (8, 200):
        store = StoreBase([ProviderProfile("alpha")])
        state = ProviderState("alpha", store.profile("alpha"), successes=400.0, failures=4.0, latency_mean=1.0,
                              log_mean=0.0, log_sq=0.04)
        for k in range(6):
            store.start("alpha", T0 - 3.5 + 0.3 * k)
        for k in range(answered):
            at = T0 - 3.4 + 1.4 * k / answered
            store.start("alpha", at)
            store.finish("alpha", at, ok=True)
        store.mark_overdue(state, T0)
        shares[answered] = state.failures / (state.successes + state.failures + 2.0)
    assert shares[8] == pytest.approx(6 / 15, rel=0.05), shares
    assert shares[200] < 0.03, shares


def test_a_stream_that_is_answering_is_not_a_failure_in_progress_and_ends_as_itself() -> None:
    """Two calls run far past a provider's usual second: a stream whose tokens have been
    coming for 10 s, and a call with no answer for 3 s. Only the second is a failure in
    progress; when the stream ends, the one still waiting is the call that goes on
    counting."""
    from core.dwa.state import ProviderState
    from core.dwa.store import StoreBase

    store = StoreBase([ProviderProfile("alpha")])

    def suspected(now: float) -> float:
        state = ProviderState("alpha", store.profile("alpha"), successes=50.0, latency_mean=1.0,
                              log_mean=0.0, log_sq=0.04)
        store.mark_overdue(state, now)
        return state.failures

    store.start("alpha", T0 - 10.0)
    store.start("alpha", T0 - 3.0)
    assert suspected(T0) > 20.0  # neither has answered: two in two hanging, a spell by their cohort
    store.answering("alpha", T0 - 10.0 + 0.001)  # the stream's first token (a clock read later)
    assert suspected(T0) == pytest.approx(1.0, abs=0.05)
    store.finish("alpha", T0 - 10.0 + 0.002, ok=True)
    assert store.local_in_flight("alpha") == 1
    assert suspected(T0 + 5.0) == pytest.approx(1.0, abs=0.05)  # the hanging call, 8 s old now
    store.finish("alpha", T0 - 3.0)
    assert suspected(T0 + 6.0) == 0.0


async def test_every_strategy_through_pick(kv: KV, ns: str) -> None:
    for strategy in RoutingStrategy:
        router = make_router(kv, f"{ns}-{strategy.value}", strategy)
        seen = set()
        for i in range(9):
            decision = await router.pick(NAMES, T0 + i)
            assert decision is not None and 0.0 <= decision.score <= 1.0
            seen.add(decision.provider)
            await router.record(Outcome(decision.provider, OutcomeKind.SUCCESS, 1.0, T0 + i + 0.5,
                                        output_tokens=100))
        if strategy is RoutingStrategy.round_robin:
            assert seen == set(NAMES)
        if strategy is RoutingStrategy.priority:
            assert seen == {"alpha"}
        if strategy is RoutingStrategy.cost:
            assert seen == {"gamma"}  # free


async def test_explicit_provider_and_per_request_strategy(kv: KV, ns: str) -> None:
    router = make_router(kv, ns)
    decision = await router.pick(NAMES, T0, provider="gamma")
    assert (decision.provider, decision.reason) == ("gamma", "explicit_provider")
    decision = await router.pick(NAMES, T0, strategy="priority")
    assert (decision.provider, decision.reason, decision.strategy) == ("alpha", "priority_order",
                                                                       RoutingStrategy.priority)


async def test_reset_restores_priors_and_stats_report_the_seed_fields(kv: KV, ns: str) -> None:
    router = make_router(kv, ns, failure_threshold=2)
    for i in range(3):
        await serve(router, T0 + i, {"alpha": 1.0, "beta": 1.0, "gamma": 1.0})
    for i in range(2):
        router.store.start("alpha")
        await router.record(Outcome("alpha", OutcomeKind.FAILURE, 0.3, T0 + 5 + i, error="http_502"))
    stats = await router.stats(NAMES, T0 + 8)
    alpha = stats["alpha"]
    for field in ("accuracy", "speed", "cost", "availability", "consecutive_failures", "last_success_time",
                  "last_error", "weight", "circuit_state", "in_flight", "p95_latency_ms", "samples"):
        assert field in alpha
    assert alpha["circuit_state"] == "open" and alpha["consecutive_failures"] == 2
    assert alpha["last_error"] == "http_502" and alpha["availability"] > 0
    assert all(0.0 <= s["weight"] <= 1.0 and 0.0 <= s["speed"] <= 1.0 for s in stats.values())

    await router.reset(["alpha"])
    alpha = (await router.stats(NAMES, T0 + 8))["alpha"]
    assert alpha["circuit_state"] == "closed" and alpha["samples"] == 0
    assert alpha["availability"] == pytest.approx(0.95) and alpha["consecutive_failures"] == 0
    best = await router.best(NAMES, T0 + 8)
    assert best is not None and best.reason == "best_performance"


async def test_all_circuits_open_still_routes(kv: KV, ns: str) -> None:
    router = make_router(kv, ns, failure_threshold=1, cooldown_s=10.0)
    for i, name in enumerate(NAMES):
        router.store.start(name)
        await router.record(Outcome(name, OutcomeKind.FAILURE, 0.1, T0 + i, error="connection"))
    decision = await router.pick(NAMES, T0 + 3)
    assert (decision.provider, decision.reason) == ("alpha", "all_circuits_open")  # reopens first


async def test_streams_route_on_time_to_first_token(kv: KV, ns: str) -> None:
    router = make_router(kv, ns, RoutingStrategy.latency)
    # alpha: quick first token, slow overall; beta the other way round
    for i in range(5):
        for name, total, ttft in (("alpha", 3.0, 0.2), ("beta", 1.0, 0.8)):
            router.store.start(name)
            await router.record(Outcome(name, OutcomeKind.SUCCESS, total, T0 + i, output_tokens=200, ttft_s=ttft))
    assert (await router.pick(NAMES[:2], T0 + 5)).provider == "beta"
    assert (await router.pick(NAMES[:2], T0 + 5, stream=True)).provider == "alpha"
    assert (await router.stats(NAMES[:2], T0 + 5))["alpha"]["ttft_ms"] == pytest.approx(200.0)


async def test_without_redis_the_router_still_picks_on_priors() -> None:
    unreachable = RedisKV.from_url("unix:///nonexistent/orchesity-test.sock", timeout=0.2)
    router = Router(RedisDWAStore(unreachable, PROFILES), strategy=RoutingStrategy.priority)
    decision = await router.pick(NAMES, T0)
    assert decision is not None and (decision.provider, decision.reason) == ("alpha", "priority_order")
    await unreachable.close()


async def twins(kv: KV, ns: str, strategy: RoutingStrategy, seed: int,
                slowdown_at: float | None = None) -> dict[int, Counter[str]]:
    """Two identical providers (replies of 100-400 tokens, latencies log-normal with σ
    0.3), 8 calls a second for two minutes, `left` three times slower from
    `slowdown_at` s on: the calls each got, by the second they started in."""
    store = RedisDWAStore(kv, [ProviderProfile("left"), ProviderProfile("right")], namespace=f"{ns}:{seed}")
    router = Router(store, strategy=strategy, rng=random.Random(seed))
    draws = random.Random(seed + 1)
    finishing: list[tuple[float, int, Outcome]] = []
    calls: dict[int, Counter[str]] = {}
    now = T0
    for call in range(960):
        while finishing and finishing[0][0] <= now:
            await router.record(heapq.heappop(finishing)[2])
        decision = await router.pick(["left", "right"], now)
        tokens = draws.randint(100, 400)
        latency = (0.4 + 0.01 * tokens) * draws.lognormvariate(-0.045, 0.3)
        if decision.provider == "left" and slowdown_at is not None and now - T0 >= slowdown_at:
            latency *= 3.0
        heapq.heappush(finishing, (now + latency, call, Outcome(
            decision.provider, OutcomeKind.SUCCESS, latency, now + latency, output_tokens=tokens,
            fresh=decision.explore, load=decision.load)))
        calls.setdefault(int(now - T0), Counter())[decision.provider] += 1
        now += 0.125
    return calls


def window(calls: dict[int, Counter[str]], start: int, end: int) -> Counter[str]:
    return sum((calls.get(second, Counter()) for second in range(start, end)), Counter())


@pytest.mark.parametrize(("strategy", "bound"), [(RoutingStrategy.load_balanced, 0.62),
                                                 (RoutingStrategy.adaptive, 0.70)])
async def test_two_identical_providers_share_the_load_between_changes(kv: KV, ns: str, strategy: RoutingStrategy,
                                                                      bound: float) -> None:
    """The 6 s means of two identical providers wander with their noise (at four answers
    a second, ±5%). Read on them alone, the busier one's share of a 30 s window had a
    median over six runs of 71% (load_balanced) and 77% (adaptive); read on the steadier
    60 s mean while the 6 s one stays within its noise of it (scoring.settled), 58% and
    62%."""
    shares = []
    for seed in range(1, 7):
        calls = await twins(kv, ns, strategy, seed)
        windows = [window(calls, start, start + 30) for start in (30, 60, 90)]
        shares.append(max(max(c.values()) / sum(c.values()) for c in windows))
    shares.sort()
    assert (shares[2] + shares[3]) / 2 <= bound, shares


@pytest.mark.parametrize("strategy", [RoutingStrategy.load_balanced, RoutingStrategy.adaptive])
async def test_a_twin_that_slows_down_three_times_is_left_within_seconds(kv: KV, ns: str,
                                                                         strategy: RoutingStrategy) -> None:
    """After a minute of sharing, `left` turns three times slower: the steadier mean that
    kept the two sharing does not hold the traffic there. Its first slow answers come
    back after 3-13 s; from then on it gets a look now and then, not its half."""
    calls = await twins(kv, ns, strategy, seed=4, slowdown_at=60)
    before, after = window(calls, 30, 60), window(calls, 75, 120)
    assert before["left"] > 0.3 * sum(before.values()), calls
    assert after["left"] < 0.05 * sum(after.values()), calls
