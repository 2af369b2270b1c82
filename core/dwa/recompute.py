"""The weight recompute (the cron function, `orchesity dwa recompute`): the request log's
recent figures → a baseline weight per provider, which the live score blends with.

Per provider, over the last `window_seconds` of `request_log` (up to `now`):

    attempts   rows of provider attempts, leaving out cache hits (no provider was
               called), client errors (the request's fault) and a failed request's
               final row (it repeats the error of its last attempt, already a row)
    error      e = failed attempts / attempts      (429s count: the caller failed over)
    latency    p50, p95 of successful attempts; L = √(p50 · p95), so the tail counts
    price      P = cost / tokens × 1000 over successful attempts (None if no tokens)

    weight     w = quality(1 − e, min(L) / L, price factor of P)               ∈ [0, 1]

the live score's own formula (scoring.quality: a² · v · c^0.02), with the window's
success rate for the availability, speed relative to the fastest provider of the
window, and the price factor against the cheapest (scoring.price_factor). A provider
with no successful attempt gets 0.
Latency is per request, not per token as in the live score: over a window the providers
see much the same mix of requests.

Fewer than `min_samples` attempts: no weight (None). Routing then uses the live state
alone for it, as for a provider never seen, rather than a "neutral" number that would
rank it against providers whose weights mean something.

Idempotent: a row is keyed by (provider, window_end), window_end being `now` rounded
down to BUCKET_SECONDS, so every invocation within a bucket upserts the same rows: two
overlapping runs leave one row per provider, with the same figures unless requests were
logged between them (then the last writer's, a few seconds apart). The figures reach up
to `now` itself, so a request logged a moment ago counts. In Redis the baseline hash is
replaced as a whole (MULTI: DEL, HSET, EXPIRE), so a provider without traffic loses its
baseline, and the hash expires after BASELINE_TTL_WINDOWS windows if the cron job stops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, text
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import select

from core.db import Database
from core.dwa.config import DWAConfig
from core.dwa.scoring import price_factor, quality
from core.dwa.store import BASELINE_TTL_WINDOWS, baseline_key
from core.kv import KV
from core.models import ProviderWeight

BUCKET_SECONDS = 60
MIN_SAMPLES = 5

_AGGREGATE = text("""
SELECT provider,
  count(*) AS samples,
  count(*) FILTER (WHERE status <> 'ok') AS errors,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) FILTER (WHERE status = 'ok') AS p50,
  percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) FILTER (WHERE status = 'ok') AS p95,
  sum(cost) FILTER (WHERE status = 'ok') AS cost,
  sum(total_tokens) FILTER (WHERE status = 'ok') AS tokens
FROM request_log
WHERE created_at > :start AND created_at <= :end
  AND provider IS NOT NULL AND NOT cached
  AND error_class IS DISTINCT FROM 'client_error'
  AND NOT (status <> 'ok' AND final)
GROUP BY provider
ORDER BY provider
""")


def _instant(now: datetime | float | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return datetime.fromtimestamp(now, UTC) if isinstance(now, (int, float)) else now


def window_end(now: datetime | float | None = None) -> datetime:
    """`now` (default: the current time) rounded down to the bucket: the rows' key."""
    seconds = _instant(now).timestamp()
    return datetime.fromtimestamp(seconds // BUCKET_SECONDS * BUCKET_SECONDS, UTC)


def baseline_weights(figures: Sequence[dict[str, Any]], *, min_samples: int = MIN_SAMPLES,
                     config: DWAConfig = DWAConfig()) -> list[float | None]:
    """The formula of the module docstring, for each provider's figures (samples, errors,
    p50/p95 latency in ms, cost per 1k tokens); None below `min_samples`."""
    eligible = [f for f in figures if f["samples"] >= min_samples]
    latencies = [_latency(f) for f in eligible if f["p50_latency_ms"] is not None]
    prices = [f["cost_per_1k_tokens"] for f in eligible if f["cost_per_1k_tokens"] is not None]
    fastest = min(latencies, default=None)
    cheapest = min(prices, default=None)
    weights: list[float | None] = []
    for f in figures:
        if f["samples"] < min_samples:
            weights.append(None)
            continue
        if f["p50_latency_ms"] is None or fastest is None:
            weights.append(0.0)
            continue
        speed = fastest / _latency(f) if fastest > 0 else 1.0
        price = 1.0
        if f["cost_per_1k_tokens"] is not None and cheapest is not None:
            price = price_factor(f["cost_per_1k_tokens"], cheapest, config)
        weights.append(min(1.0, max(0.0, quality(1.0 - f["error_rate"], speed, price, config))))
    return weights


def _latency(figures: dict[str, Any]) -> float:
    return math.sqrt(figures["p50_latency_ms"] * figures["p95_latency_ms"])


async def recompute(db: Database, kv: KV | None, *, window_seconds: int = 3600,
                    now: datetime | float | None = None, namespace: str = "",
                    min_samples: int = MIN_SAMPLES) -> list[dict[str, Any]]:
    """Aggregate the `window_seconds` before `now` (default: the current time), upsert a
    provider_weights row per provider for `now`'s bucket and, with `kv`, replace the
    Redis baseline hash. Returns the rows (provider, window_end, window_seconds, samples,
    p50/p95_latency_ms, error_rate, cost_per_1k_tokens, weight). `namespace` isolates
    the Redis hash (tests, benchmarks), as RedisDWAStore's does."""
    end = _instant(now)
    start = end - timedelta(seconds=window_seconds)
    async with db.engine.connect() as conn:
        aggregates = (await conn.execute(_AGGREGATE, {"start": start, "end": end})).all()
    rows = [{
        "provider": a.provider, "window_end": window_end(end), "window_seconds": window_seconds,
        "samples": a.samples,
        "p50_latency_ms": a.p50, "p95_latency_ms": a.p95,
        "error_rate": a.errors / a.samples,
        "cost_per_1k_tokens": a.cost / a.tokens * 1000.0 if a.tokens else None,
    } for a in aggregates]
    for row, weight in zip(rows, baseline_weights(rows, min_samples=min_samples)):
        row["weight"] = weight
    if rows:
        statement = insert(ProviderWeight).values(rows)  # sorted by provider: no deadlock
        updated = {name: statement.excluded[name] for name in rows[0] if name not in ("provider", "window_end")}
        statement = statement.on_conflict_do_update(constraint="uq_provider_weights_window",
                                                    set_={**updated, "computed_at": func.now()})
        async with db.engine.begin() as conn:
            await conn.execute(statement)
    if kv is not None:
        await publish(kv, rows, window_seconds, namespace)
    return rows


async def publish(kv: KV, rows: Sequence[dict[str, Any]], window_seconds: int, namespace: str = "") -> None:
    """Replace the Redis baseline hash with the weights of `rows` (recompute's result)."""
    key = baseline_key(namespace)
    weights = [item for row in rows if row["weight"] is not None for item in (row["provider"], repr(row["weight"]))]
    commands: list[list[Any]] = [["DEL", key]]
    if weights:
        commands += [["HSET", key, *weights], ["EXPIRE", key, BASELINE_TTL_WINDOWS * window_seconds]]
    await kv.pipeline(commands, transaction=True)


async def history(db: Database, provider: str | None = None, limit: int = 500,
                  since: datetime | None = None) -> list[dict[str, Any]]:
    """provider_weights rows for charts, newest window first (of one provider, or all;
    with `since`, of the windows ending after it)."""
    query = select(ProviderWeight).order_by(ProviderWeight.window_end.desc(),  # type: ignore[attr-defined]
                                            ProviderWeight.provider).limit(limit)
    if provider is not None:
        query = query.where(ProviderWeight.provider == provider)
    if since is not None:
        query = query.where(ProviderWeight.window_end > since)  # type: ignore[operator]
    async with db.session() as session:
        found = (await session.exec(query)).all()
    return [row.model_dump(exclude={"id"}) for row in found]
