"""The routing benchmark's scenarios and simulated providers (bench/routing)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.routing.scenario import BUILTIN, ScenarioError, builtin, parse_scenario
from bench.routing.world import Request, World


def test_every_builtin_scenario_loads_and_an_unknown_key_is_named() -> None:
    assert [builtin(name).name for name in BUILTIN] == list(BUILTIN)
    with pytest.raises(ScenarioError, match=r"providers\[0\]: unknown field\(s\) \['cold_start'\]"):
        parse_scenario({"name": "x", "providers": [{"name": "a", "ttft_ms": 1, "ms_per_token": 1,
                                                    "cold_start": 3}]})


def test_a_cold_start_slows_a_providers_first_answers_and_the_oracle_knows() -> None:
    scenario = parse_scenario({"name": "cold", "seed": 1, "providers": [
        {"name": "a", "ttft_ms": 100, "ms_per_token": 1, "jitter": 0.0, "cold_calls": 2, "cold_ms": 880}]})
    world = World(scenario)
    request = Request(rid=0, arrival=0.0, instance=0, input_tokens=10, output_tokens=100)
    assert world.mean_latency("a", 0.0, 100) == pytest.approx(1.08)  # what the oracle sees before the call
    latencies = [world.call("a", 0.0, request).latency for _ in range(3)]
    assert latencies == pytest.approx([1.08, 1.08, 0.2])
    assert world.mean_latency("a", 0.0, 100) == pytest.approx(0.2)


def test_identical_providers_report_the_split_after_the_given_time() -> None:
    from bench.routing.__main__ import largest_share

    assert builtin("twins").even_after_s == 30
    assert largest_share({"a": [1.0, 31.0, 32.0, 33.0], "b": [2.0, 34.0]}, 30.0) == pytest.approx(0.75)
    assert largest_share({"a": [1.0]}, None) is None


def test_a_streamed_request_counts_its_first_token_and_the_oracle_routes_it_on_that() -> None:
    import asyncio

    from bench.routing.policies import Oracle
    from bench.routing.sim import simulate, summary
    from bench.routing.world import requests_for

    scenario = parse_scenario({"name": "s", "seed": 2, "duration_s": 30, "rate_per_s": 2, "stream_share": 1.0,
                               "output_tokens": [400, 400], "providers": [
                                   {"name": "early", "ttft_ms": 100, "ms_per_token": 10, "jitter": 0.0},
                                   {"name": "late", "ttft_ms": 900, "ms_per_token": 1, "jitter": 0.0}]})
    requests = requests_for(scenario)
    assert requests and all(r.stream for r in requests)
    world = World(scenario)
    run = asyncio.run(simulate(scenario, world, requests, Oracle(scenario, world)))
    assert summary(run)["mean_latency_ms"] == pytest.approx(100.0)  # the first token, from `early`
    assert len(run.attempts["early"]) == len(requests) and not run.attempts["late"]
    with pytest.raises(ScenarioError, match="stream_share"):
        parse_scenario({"name": "x", "stream_share": 1.5, "providers": [{"name": "a", "ttft_ms": 1, "ms_per_token": 1}]})


async def test_a_hedged_request_is_answered_by_the_second_provider_and_the_first_is_not_blamed(kv: Any) -> None:
    """As the gateway's hedge_after_ms: `slow` (first by priority) has not answered after
    0.5 s, so `quick` is asked too and answers; `slow`'s call is cancelled: no failure,
    but a call slower than 0.5 s, so its mean says how slow it is."""
    import uuid

    from bench.routing.policies import DWAPolicy
    from bench.routing.sim import simulate, summary
    from bench.routing.world import requests_for
    from core.settings import RoutingStrategy

    scenario = parse_scenario({"name": "h", "seed": 5, "duration_s": 20, "rate_per_s": 1, "output_tokens": [10, 10],
                               "providers": [
                                   {"name": "slow", "ttft_ms": 3000, "ms_per_token": 0, "jitter": 0.0, "priority": 1},
                                   {"name": "quick", "ttft_ms": 100, "ms_per_token": 0, "jitter": 0.0, "priority": 2}]})
    requests = requests_for(scenario)
    world = World(scenario)
    policy = DWAPolicy(scenario, kv, RoutingStrategy.priority, namespace=f"hedge-{uuid.uuid4().hex[:8]}")
    run = await simulate(scenario, world, requests, policy, hedge_after_s=0.5)
    assert summary(run)["mean_latency_ms"] == pytest.approx(600.0)  # 0.5 s, then quick's 0.1 s
    assert len(run.attempts["slow"]) == len(run.attempts["quick"]) == len(requests)
    assert run.errors == 0 and world.in_flight == {"slow": 0, "quick": 0}
    stats = await policy.routers[0].stats(["slow", "quick"], scenario.duration_s + 10)
    slow = stats["slow"]
    assert slow["in_flight"] == 0 and slow["failures"] == slow["successes"] == 0
    assert slow["samples"] == len(requests) and slow["mean_latency_ms"] > 500.0


async def test_an_auto_hedge_follows_the_picked_providers_mean_latency(kv: Any) -> None:
    """`usual` answers in 100 ms until it slows 30-fold at 20 s; hedged "auto" (twice its
    mean) under `priority`, the first of those requests go to `other` after 0.2 s and are
    answered by 0.4 s. Each call of usual's cancelled so counts as a call slower than it
    ran (censored_latency), so its mean, and the hedge's delay with it, climb to its new
    3 s: a provider slow all along is not hedged on every call, and none fails."""
    import uuid

    from bench.routing.policies import DWAPolicy
    from bench.routing.sim import simulate
    from bench.routing.world import requests_for
    from core.settings import RoutingStrategy

    scenario = parse_scenario({"name": "auto", "seed": 9, "duration_s": 40, "rate_per_s": 1, "output_tokens": [10, 10],
                               "providers": [
                                   {"name": "usual", "ttft_ms": 100, "ms_per_token": 0, "jitter": 0.0, "priority": 1,
                                    "phases": [{"start_s": 20, "end_s": 40, "latency_factor": 30}]},
                                   {"name": "other", "ttft_ms": 200, "ms_per_token": 0, "jitter": 0.0, "priority": 2}]})
    requests = requests_for(scenario)
    world = World(scenario)
    policy = DWAPolicy(scenario, kv, RoutingStrategy.priority, namespace=f"auto-{uuid.uuid4().hex[:8]}")
    run = await simulate(scenario, world, requests, policy, hedge_after_s="auto")
    before = sum(r.arrival < 20 for r in requests)
    slowed = [round(x, 3) for x in run.latencies[before:]]
    assert run.errors == 0 and [round(x, 3) for x in run.latencies[:before]] == [0.1] * before
    assert slowed[:3] == [0.4] * 3 and slowed == sorted(slowed) and slowed[-1] == 3.0, slowed
    assert 0 < run.hedges < len(slowed)



def test_seeds_average_a_scenarios_runs_under_different_luck(tmp_path: Any) -> None:
    """`--seeds 2` reports, per strategy, the mean of the runs with the scenario's seed and
    with seed + 1000: what each gives alone, and the standard error of that mean."""
    import json

    from bench.routing.__main__ import main
    from bench.routing.scenario import SCENARIO_DIR

    source = json.loads((SCENARIO_DIR / "steady.json").read_text())

    def run(seed: int, *extra: str) -> dict[str, float]:
        scenario, out = tmp_path / f"steady-{seed}.json", tmp_path / f"out-{seed}-{len(extra)}.json"
        scenario.write_text(json.dumps(dict(source, seed=seed)))
        assert main(["--quick", "--scenario", str(scenario), "--strategies", "oracle,random", "--json", str(out),
                     *extra]) == 0
        return json.loads(out.read_text())["scenarios"]["steady"]["random"]

    seed = source["seed"]
    first, second = run(seed), run(seed + 1000)
    assert first["mean_latency_ms"] != second["mean_latency_ms"]  # another seed, other luck
    both = run(seed, "--seeds", "2")
    assert both["mean_latency_ms"] == pytest.approx((first["mean_latency_ms"] + second["mean_latency_ms"]) / 2)
    # and how far the two runs' regrets lie apart: the standard error of their mean
    assert both["regret_se_pct"] == pytest.approx(abs(first["regret_pct"] - second["regret_pct"]) / 2)
    assert "regret_se_pct" not in first
