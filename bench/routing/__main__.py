"""python -m bench.routing: run the routing benchmark (see bench/README.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.routing.scenario import BUILTIN, Scenario, ScenarioError, builtin, load_scenario

STRATEGIES = ("load_balanced", "round_robin", "random", "priority", "latency", "cost", "adaptive",
              "litellm_shuffle", "litellm_latency", "oracle")
DWA_STRATEGIES = STRATEGIES[:7]
HEDGED = ("load_balanced+hedge", "adaptive+hedge")  # with --hedge-after-ms: the gateway's hedge_after_ms
QUANTILED = ("load_balanced+quantile", "adaptive+quantile")  # with --latency-quantile: latency_quantile
SEED_STEP = 1000  # --seeds N runs a scenario with its seed, seed + 1000, ...


def make_policy(name: str, scenario: Scenario, world: Any, kv: Any, run_id: str,
                quantile: float | None = None) -> Any:
    from core.settings import RoutingStrategy

    from bench.routing.policies import DWAPolicy, LiteLLMLatency, LiteLLMShuffle, Oracle

    if name in DWA_STRATEGIES:
        return DWAPolicy(scenario, kv, RoutingStrategy(name), namespace=f"{run_id}:{scenario.name}:{name}",
                         quantile=quantile)
    if name == "litellm_shuffle":
        return LiteLLMShuffle(scenario, seed=scenario.seed)
    if name == "litellm_latency":
        return LiteLLMLatency(scenario, seed=scenario.seed)
    if name == "oracle":
        return Oracle(scenario, world)
    raise ValueError(name)


async def run_scenario(scenario: Scenario, strategies: tuple[str, ...], kv: Any, run_id: str,
                       hedge_after_s: float | str | None = None, quantile: float | None = None) -> dict[str, Any]:
    from bench.routing.sim import make_world, recovery_times, simulate, summary, traffic_share

    out: dict[str, Any] = {}
    order = ("oracle",) + tuple(s for s in strategies if s != "oracle")
    for name in order:
        world, requests = make_world(scenario)
        hedged = name in HEDGED
        quantiled = name in QUANTILED
        policy = make_policy(name.removesuffix("+hedge").removesuffix("+quantile"), scenario, world, kv,
                             f"{run_id}:{name}", quantile if quantiled else None)
        started = time.perf_counter()
        run = await simulate(scenario, world, requests, policy, hedge_after_s if hedged else None)
        metrics = summary(run)
        out[name] = {
            "metrics": metrics,
            "recovery": recovery_times(scenario, run),
            "share": traffic_share(scenario, run),
            "failovers": run.failovers,
            "hedges": run.hedges,
            "errors": run.errors,
            "rate_limited": run.rate_limited,
            "requests": run.requests,
            "reasons": dict(getattr(policy, "reasons", {}) or {}),
            "wall_s": time.perf_counter() - started,
            "largest_share": largest_share(run.attempts, scenario.even_after_s),
        }
    oracle_mean = out["oracle"]["metrics"]["mean_latency_ms"]
    for name in out:
        mean = out[name]["metrics"]["mean_latency_ms"]
        out[name]["metrics"]["regret_pct"] = 100.0 * (mean - oracle_mean) / oracle_mean if oracle_mean else 0.0
    if "oracle" not in strategies:
        del out["oracle"]
    return out


def largest_share(attempts: dict[str, list[float]], after_s: float | None) -> float | None:
    """The largest share of the attempts any provider had after `after_s` (None without)."""
    if after_s is None:
        return None
    late = [sum(t >= after_s for t in times) for times in attempts.values()]
    return max(late) / sum(late) if sum(late) else None


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from a scenario's runs under several seeds: each metric's mean (the
    regret too, each run's against its own oracle) and the regret's standard error
    (`regret_se_pct`: a change that moves the mean by less than about twice it is a
    seed's luck, not the change), the counts summed, the identical providers' largest
    share the worst of the runs; the recovery and the plot's shares are the first run's."""
    if len(runs) == 1:
        return runs[0]
    out: dict[str, Any] = {}
    for name, first in runs[0].items():
        entries = [run[name] for run in runs]
        shares = [e["largest_share"] for e in entries if e["largest_share"] is not None]
        metrics = {key: sum(e["metrics"][key] for e in entries) / len(entries) for key in first["metrics"]}
        metrics["regret_se_pct"] = statistics.stdev(e["metrics"]["regret_pct"] for e in entries) / math.sqrt(len(entries))
        out[name] = dict(first, metrics=metrics,
                         largest_share=max(shares) if shares else None,
                         wall_s=sum(e["wall_s"] for e in entries),
                         **{key: sum(e[key] for e in entries)
                            for key in ("failovers", "hedges", "errors", "rate_limited", "requests")})
    return out


async def run_all(scenarios: list[Scenario], strategies: tuple[str, ...],
                  hedge_after_s: float | str | None = None, seeds: int = 1,
                  quantile: float | None = None) -> dict[str, dict[str, Any]]:
    from core.embedded import start_redis
    from core.kv import RedisKV

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="orchesity-bench-") as tmp:
        server = start_redis(Path(tmp))
        kv = RedisKV.from_url(f"unix://{server.socket_path}", embedded=server)
        try:
            run_id = f"bench-{uuid.uuid4().hex[:8]}"
            for scenario in scenarios:
                started = time.perf_counter()
                runs = [await run_scenario(replace(scenario, seed=scenario.seed + SEED_STEP * k), strategies, kv,
                                           f"{run_id}:{k}", hedge_after_s, quantile) for k in range(seeds)]
                results[scenario.name] = combine(runs)
                print(report_scenario(scenario, results[scenario.name],
                                      time.perf_counter() - started, seeds), flush=True)
        finally:
            await kv.close()
    return results


def report_scenario(scenario: Scenario, result: dict[str, Any], wall: float, seeds: int = 1) -> str:
    lines = [f"\n== {scenario.name}: {scenario.description}",
             f"   {scenario.duration_s:.0f} simulated s, {scenario.rate_per_s:g} req/s, "
             f"{scenario.instances} instance(s), {len(scenario.providers)} providers; ran in {wall:.1f} s"]
    if seeds > 1:
        lines.append(f"   the mean of {seeds} runs, seeds {scenario.seed} to "
                     f"{scenario.seed + SEED_STEP * (seeds - 1)} by {SEED_STEP} (counts: their sum)")
    header = f"   {'strategy':<16}{'mean ms':>9}{'p95 ms':>9}{'success':>9}{'cost $':>9}{'regret':>9}{'failover':>9}"
    lines.append(header + (f"{'± se':>7}" if seeds > 1 else ""))
    for name, entry in result.items():
        m = entry["metrics"]
        se = m.get("regret_se_pct")
        lines.append(
            f"   {name:<16}{m['mean_latency_ms']:>9.0f}{m['p95_latency_ms']:>9.0f}"
            f"{100 * m['success_rate']:>8.2f}%{m['cost']:>9.2f}{m['regret_pct']:>+8.1f}%{entry['failovers']:>9}"
            + (f"{se:>7.1f}" if se is not None else "")
        )
    hedged = {name: entry for name, entry in result.items() if name in HEDGED}
    if hedged:
        lines.append("   hedged: " + ", ".join(f"{name} {entry['hedges']} requests "
                                               f"({100 * entry['hedges'] / max(1, entry['requests']):.1f}%)"
                                               for name, entry in hedged.items()))
    if scenario.even_after_s is not None:
        lines.append(f"   largest share of the attempts after {scenario.even_after_s:g} s (identical providers): "
                     + ", ".join(f"{name} {100 * entry['largest_share']:.0f}%" for name, entry in result.items()
                                 if entry["largest_share"] is not None))
    watched = {name: entry["recovery"] for name, entry in result.items() if entry.get("recovery")}
    if watched:
        lines.append(f"   recovery of {scenario.watch_recovery} (s after it came back: share back to half its "
                     f"pre-outage share / first success):")
        for name, rec in watched.items():
            back = "never" if rec["traffic_back_s"] is None else f"{rec['traffic_back_s']:.0f}"
            first = "never" if rec["first_success_s"] is None else f"{rec['first_success_s']:.1f}"
            if rec["share_before"] == 0:
                back = "n/a (no traffic before)"
            lines.append(f"     {name:<16}{back:>8} / {first}")
    return "\n".join(lines)


def check_targets(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["\n== targets"]

    def verdict(ok: bool) -> str:
        return "met   " if ok else "MISSED"

    for scenario, result in results.items():
        if "oracle" not in result:
            continue
        oracle = result["oracle"]["metrics"]["mean_latency_ms"]
        for name in ("load_balanced", "adaptive"):
            if name in result:
                mean = result[name]["metrics"]["mean_latency_ms"]
                ratio = mean / oracle - 1
                lines.append(f"   {verdict(ratio <= 0.05)} {scenario}: {name} mean {mean:.0f} ms vs oracle "
                             f"{oracle:.0f} ms ({100 * ratio:+.1f}%, target ≤ +5%)")
    for scenario, result in results.items():
        worst = min(result.items(), key=lambda kv: kv[1]["metrics"]["success_rate"])
        dwa = {k: v for k, v in result.items() if k in DWA_STRATEGIES}
        if dwa:
            low = min(dwa.items(), key=lambda kv: kv[1]["metrics"]["success_rate"])
            rate = low[1]["metrics"]["success_rate"]
            lines.append(f"   {verdict(rate >= 0.995)} {scenario}: lowest DWA success {100 * rate:.2f}% "
                         f"({low[0]}; target ≥ 99.5%); lowest overall {100 * worst[1]['metrics']['success_rate']:.2f}% ({worst[0]})")
    for scenario, result in results.items():  # identical providers share: neither above 60%
        for name in ("load_balanced", "adaptive"):
            share = result.get(name, {}).get("largest_share")
            if share is not None:
                lines.append(f"   {verdict(share <= 0.6)} {scenario}: {name} gives the busier of identical providers "
                             f"{100 * share:.0f}% (target ≤ 60%)")
    for scenario in ("degrade", "outage"):  # the p95 gap to the oracle: at most half of LiteLLM's
        result = results.get(scenario)
        if not result or "litellm_latency" not in result or "oracle" not in result:
            continue
        base = result["litellm_latency"]["metrics"]["p95_latency_ms"]
        best = result["oracle"]["metrics"]["p95_latency_ms"]
        for name in ("load_balanced", "adaptive"):
            if name in result:
                p95 = result[name]["metrics"]["p95_latency_ms"]
                lines.append(f"   {verdict(p95 - best <= (base - best) / 2)} {scenario}: {name} p95 {p95:.0f} ms, "
                             f"{p95 - best:+.0f} ms from the oracle's {best:.0f} (litellm_latency {base - best:+.0f}; "
                             "target: at most half of that)")
    for scenario, result in results.items():  # and no worse a p95 than LiteLLM's anywhere
        if "litellm_latency" not in result:
            continue
        base = result["litellm_latency"]["metrics"]["p95_latency_ms"]
        for name in ("load_balanced", "adaptive"):
            if name in result:
                p95 = result[name]["metrics"]["p95_latency_ms"]
                lines.append(f"   {verdict(p95 <= base)} {scenario}: {name} p95 {p95:.0f} ms vs litellm_latency "
                             f"{base:.0f} ms (target: no worse)")
    for scenario, result in results.items():
        for name in ("load_balanced", "adaptive"):
            rec = result.get(name, {}).get("recovery")
            if rec:
                back = rec["traffic_back_s"]
                lines.append(f"   {verdict(back is not None and back <= 60)} {scenario}: {name} traffic back "
                             f"{'never' if back is None else f'{back:.0f} s'} after recovery (target ≤ 60 s)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__)
    parser.add_argument("--json", metavar="OUT.json", help="write the results here")
    parser.add_argument("--plot-dir", metavar="DIR", help="PNG plots here (default: next to the JSON)")
    parser.add_argument("--scenario", metavar="FILE", action="append", default=[],
                        help="run this scenario file instead of the built-ins (repeatable)")
    parser.add_argument("--only", metavar="NAMES", help="comma-separated built-in scenarios to run")
    parser.add_argument("--strategies", metavar="NAMES", help="comma-separated strategies (default: all)")
    parser.add_argument("--quick", action="store_true", help="a quarter of the traffic, for a smoke run")
    parser.add_argument("--hedge-after-ms", metavar="MS|auto",
                        help="also run load_balanced and adaptive with requests hedged after MS "
                             "(auto: twice the picked provider's mean latency, as the gateway's)")
    parser.add_argument("--latency-quantile", type=float, metavar="Q",
                        help="also run load_balanced and adaptive with every request's latency_quantile "
                             "set to Q (0.5 to 0.999; e.g. 0.95: each call goes where its p95 is lowest)")
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="run each scenario with N seeds and report the means (one seed's luck "
                             "moves a scenario's regret by several points)")
    parser.add_argument("--micro", action="store_true",
                        help="only measure CPU per routing decision for 10 providers")
    args = parser.parse_args(argv)

    if args.micro:
        from bench.routing.micro import run_micro

        result = run_micro()
        if args.json:
            Path(args.json).write_text(json.dumps({"micro": result}, indent=2) + "\n")
        return 0

    try:
        if args.scenario:
            scenarios = [load_scenario(path) for path in args.scenario]
        else:
            names = args.only.split(",") if args.only else list(BUILTIN)
            unknown = set(names) - set(BUILTIN)
            if unknown:
                parser.error(f"unknown scenario(s) {sorted(unknown)}; built-in: {', '.join(BUILTIN)}")
            scenarios = [builtin(name) for name in names]
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.quick:
        scenarios = [s.scaled(0.25) for s in scenarios]
    strategies = tuple(args.strategies.split(",")) if args.strategies else STRATEGIES
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}; known: {', '.join(STRATEGIES)}")

    started = time.perf_counter()
    hedge: float | str | None = None
    if args.hedge_after_ms is not None:
        try:
            hedge = "auto" if args.hedge_after_ms == "auto" else float(args.hedge_after_ms) / 1000.0
        except ValueError:
            hedge = -1.0
        if hedge != "auto" and hedge <= 0:  # type: ignore[operator]
            parser.error("--hedge-after-ms is a positive number of milliseconds, or auto")
        strategies += HEDGED
    if args.latency_quantile is not None:
        if not 0.5 <= args.latency_quantile <= 0.999:
            parser.error("--latency-quantile is between 0.5 and 0.999")
        strategies += QUANTILED
    if args.seeds < 1:
        parser.error("--seeds is a positive number of runs per scenario")
    results = asyncio.run(run_all(scenarios, strategies, hedge, args.seeds, args.latency_quantile))
    print("\n".join(check_targets(results)))
    print(f"\ntotal wall time {time.perf_counter() - started:.1f} s")

    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        shaped = {"scenarios": {s: {k: {key: v["metrics"][key] for key in
                                        ("mean_latency_ms", "p95_latency_ms", "success_rate", "cost", "regret_pct",
                                         "regret_se_pct") if key in v["metrics"]}
                                    for k, v in r.items()} for s, r in results.items()}}
        out.write_text(json.dumps(shaped, indent=2) + "\n")
        details = {s: {k: {key: v[key] for key in ("recovery", "failovers", "errors", "rate_limited",
                                                    "requests", "reasons", "largest_share", "hedges")} for k, v in r.items()}
                   for s, r in results.items()}
        details_path = out.with_name(out.stem + ".details.json")
        details_path.write_text(json.dumps(details, indent=2) + "\n")
        print(f"wrote {out} and {details_path}")
    plot_dir = Path(args.plot_dir) if args.plot_dir else (Path(args.json).parent if args.json else None)
    if plot_dir is not None:
        from bench.routing.plot import write_share_plot

        plot_dir.mkdir(parents=True, exist_ok=True)
        by_name = {s.name: s for s in scenarios}
        for name, result in results.items():
            path = plot_dir / f"routing_share_{name}.png"
            write_share_plot(path, by_name[name], {k: v["share"] for k, v in result.items()})
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
