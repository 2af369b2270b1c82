"""--micro: CPU time of one routing decision for 10 providers, excluding I/O.

The state is read once from a real Redis (after some recorded outcomes), then
`Router.decide` runs many times on that snapshot, timed with time.process_time. Parsing
the raw replies (`RedisDWAStore.parse`, also on the hot path) is timed separately.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

PROVIDERS = 10
DECISIONS = 20000
REPEATS = 3
TARGET_US = 50.0


async def _prepare() -> tuple[Any, Any, list[str], list[Any], float]:
    from core.dwa import Outcome, OutcomeKind, ProviderProfile, RedisDWAStore, Router
    from core.embedded import start_redis
    from core.kv import RedisKV

    tmp = tempfile.mkdtemp(prefix="orchesity-micro-")
    server = start_redis(Path(tmp))
    kv = RedisKV.from_url(f"unix://{server.socket_path}", embedded=server)
    rng = random.Random(3)
    names = [f"provider-{i}" for i in range(PROVIDERS)]
    profiles = [ProviderProfile(n, priority=i, input_price_per_1k=0.0005 * (i + 1),
                                output_price_per_1k=0.0015 * (i + 1)) for i, n in enumerate(names)]
    store = RedisDWAStore(kv, profiles, namespace="micro", instance_id="micro")
    now = 1000.0
    for step in range(400):  # some history: successes, failures, a 429, an open circuit
        name = names[step % PROVIDERS]
        store.start(name)
        if name == names[3] and step > 300:
            kind = OutcomeKind.FAILURE
        elif step == 123:
            kind = OutcomeKind.RATE_LIMITED
        else:
            kind = OutcomeKind.SUCCESS if rng.random() > 0.02 else OutcomeKind.FAILURE
        await store.record(Outcome(name, kind, 0.5 + rng.random() * 2, now, input_tokens=300,
                                   output_tokens=rng.randint(50, 400), retry_after_s=2.0, load=rng.randint(1, 12)))
        now += 0.05
    commands = store.read_commands(names, round_robin=True)
    replies = await kv.pipeline(commands)
    await kv.close()
    return store, Router, names, replies, now


def _per_call_us(fn: Any) -> float:
    """CPU µs per call: the best of REPEATS runs of DECISIONS calls (the machine's noise
    only ever adds time)."""
    for _ in range(200):  # warm up
        fn()
    best = float("inf")
    for _ in range(REPEATS):
        started = time.process_time()
        for _ in range(DECISIONS):
            fn()
        best = min(best, time.process_time() - started)
    return best / DECISIONS * 1e6


def run_micro() -> dict[str, float]:
    from core.settings import RoutingStrategy

    store, Router, names, replies, now = asyncio.run(_prepare())
    results: dict[str, float] = {}
    results["parse"] = _per_call_us(lambda: store.parse(names, replies, now, round_robin=True))
    snapshot = store.parse(names, replies, now, round_robin=True)
    router = Router(store, rng=random.Random(1))
    for strategy in RoutingStrategy:
        results[strategy.value] = _per_call_us(lambda: router.decide(snapshot, strategy=strategy))
    results["load_balanced+exclude"] = _per_call_us(lambda: router.decide(snapshot, exclude=(names[0], names[1])))
    results["load_balanced+quantile"] = _per_call_us(lambda: router.decide(snapshot, quantile=0.95))

    print(f"CPU per routing decision, {PROVIDERS} providers, best of {REPEATS} × {DECISIONS} calls "
          f"(time.process_time; no I/O):")
    for name, micros in results.items():
        label = "parse (replies → snapshot)" if name == "parse" else f"decide: {name}"
        print(f"  {label:<34}{micros:>7.1f} µs")
    worst = max(v for k, v in results.items() if k != "parse")
    verdict = "met" if worst <= TARGET_US else "MISSED"
    print(f"  {verdict}: slowest decision {worst:.1f} µs (target ≤ {TARGET_US:.0f} µs); "
          f"parse + slowest decision {worst + results['parse']:.1f} µs")
    return results
