"""What a scheduler runs every minute or so: the cron function's routes and `orchesity
cron tick` call these, so an HTTP call and a shell run do the same work.

- `drain`: the request log queued in Redis into Postgres (where nothing drains it in
  the background: Lambda; `orchesity serve` also drains continuously).
- `recompute_weights`: the request log's recent figures into DWA baseline weights, kept
  in Postgres and published to Redis (core/dwa/recompute.py).
- `tick`: both, then the per-key budget counters reconciled with the log
  (core/limits.py). Each part answers as it went: with Redis down the drain and the
  budgets say so, and the weights still reach Postgres.

Every part is idempotent and safe to overlap with itself.
"""

from __future__ import annotations

from typing import Any

from core import requestlog
from core.kv import KVUnavailable
from core.services import Services


async def drain(svc: Services) -> dict[str, Any]:
    """Raises KVUnavailable when Redis is down (the records wait there)."""
    if svc.kv is None:
        return {"moved": 0, "pending": 0, "note": "no Redis: requests are logged straight to Postgres"}
    moved = await requestlog.drain(svc.kv, svc.db)
    return {"moved": moved, "pending": await requestlog.pending(svc.kv)}


async def recompute_weights(svc: Services, window_seconds: int) -> dict[str, Any]:
    from core.dwa.recompute import publish, recompute

    weights = await recompute(svc.db, None, window_seconds=window_seconds)
    answer: dict[str, Any] = {"window_seconds": window_seconds, "providers": weights,
                              "baselines_published": False}
    if svc.kv is not None:
        try:
            await publish(svc.kv, weights, window_seconds)
            answer["baselines_published"] = True
        except KVUnavailable as exc:
            answer["note"] = f"Redis is unavailable ({exc}): weights kept in Postgres only"
    return answer


async def tick(svc: Services, window_seconds: int) -> dict[str, Any]:
    # Drain first, so the recompute and the budgets see the requests that were still queued.
    try:
        drained = await drain(svc)
    except KVUnavailable as exc:
        drained = {"moved": 0, "pending": None, "error": f"Redis is unavailable ({exc})"}
    answer = {"drain": drained, "recompute": await recompute_weights(svc, window_seconds)}
    if svc.kv is not None:
        from core.limits import reconcile

        try:
            answer["budgets"] = {"counters_raised": await reconcile(svc.db, svc.kv)}
        except KVUnavailable as exc:
            answer["budgets"] = {"error": f"Redis is unavailable ({exc})"}
    return answer
