"""What a scheduler runs every minute or so: the cron function's routes and `orchesity
cron tick` call these, so an HTTP call and a shell run do the same work.

- `drain`: the journals queued in Redis (the request log, tool calls) into Postgres
  (where nothing drains them in the background: Lambda; `orchesity serve` also drains
  continuously).
- `recompute_weights`: the request log's recent figures into DWA baseline weights, kept
  in Postgres and published to Redis (core/dwa/recompute.py).
- `sweep_runs`: every run that is ready and held by nobody advanced for a while (the
  leases of owners that died taken over, runs past their deadline ended), and the due
  run callbacks sent (core/runs/worker.py).
- `tick`: all three, then the per-key budget counters reconciled with the log
  (core/limits.py), and the stored responses past their expiry deleted from Postgres
  (core/response_store.py; Redis expires its own). Each part answers as it went: with
  Redis down the drain and the budgets say so, and the weights still reach Postgres.

Every part is idempotent and safe to overlap with itself.
"""

from __future__ import annotations

from typing import Any

from core import journal
from core.kv import KVUnavailable
from core.services import Services


async def drain(svc: Services) -> dict[str, Any]:
    """Every journal (the request log, tool calls) into Postgres; {"moved", "pending",
    "journals": {name: moved}}. Raises KVUnavailable when Redis is down (the records wait)."""
    if svc.kv is None:
        return {"moved": 0, "pending": 0, "note": "no Redis: records are written straight to Postgres"}
    moved = await journal.drain_all(svc.kv, svc.db)
    pending = sum([await j.pending(svc.kv) for j in journal.journals()])
    return {"moved": sum(moved.values()), "pending": pending, "journals": moved}


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


async def sweep_runs(svc: Services, budget_seconds: float) -> dict[str, Any]:
    from core.runs.worker import sweep

    return await sweep(svc, budget=budget_seconds)


async def tick(svc: Services, window_seconds: int) -> dict[str, Any]:
    # Drain first, so the recompute and the budgets see the requests that were still queued.
    try:
        drained = await drain(svc)
    except KVUnavailable as exc:
        drained = {"moved": 0, "pending": None, "error": f"Redis is unavailable ({exc})"}
    answer = {"drain": drained, "recompute": await recompute_weights(svc, window_seconds)}
    answer["runs"] = await sweep_runs(svc, svc.settings.RUN_SWEEP_BUDGET_SECONDS)
    from core.response_store import purge

    answer["responses"] = {"expired_deleted": await purge(svc.db)}
    if svc.kv is not None:
        from core.limits import reconcile

        try:
            answer["budgets"] = {"counters_raised": await reconcile(svc.db, svc.kv)}
        except KVUnavailable as exc:
            answer["budgets"] = {"error": f"Redis is unavailable ({exc})"}
    return answer
