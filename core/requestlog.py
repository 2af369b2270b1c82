"""The request log: every provider attempt and cache hit, queued in Redis, kept in Postgres.

Its records are a journal (core/journal.py): one XADD folded into the request's final
Redis round trip, drained into the `request_log` table, idempotently, in batches.
`drain`, `write`, `pending` and `append_command` are the journal's. `recent`, `summary`,
`spend_by_key_day` and `traffic` read the table for the db and dashboard functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.journal import Journal
from core.kv import KEY_PREFIX

if TYPE_CHECKING:
    from datetime import datetime

    from core.db import Database

STREAM = f"{KEY_PREFIX}log:requests"


@dataclass
class LogEntry:
    """One row of `request_log`, as queued. `created_at` is epoch seconds."""

    log_id: str
    request_id: str
    endpoint: str
    status: str
    created_at: float
    provider: str | None = None
    model: str | None = None
    error_class: str | None = None
    error: str | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: float = 0.0
    cached: bool = False
    final: bool = True
    caller_key_id: str | None = None
    strategy: str | None = None
    selection_reason: str | None = None
    dwa_score: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


def _table() -> Any:
    from core.models import RequestLog

    return RequestLog.__table__


JOURNAL = Journal("request log", STREAM, LogEntry, _table)
append_command = JOURNAL.append_command
write = JOURNAL.write
drain = JOURNAL.drain
pending = JOURNAL.pending


async def recent(db: Database, *, limit: int, provider: str | None = None, status: str | None = None,
                 key: str | None = None, cached: bool | None = None) -> list[dict[str, Any]]:
    """The newest rows first, of those matching every filter given (`key`: the caller's key id)."""
    from sqlalchemy import select

    from core.models import RequestLog

    table = RequestLog.__table__
    query = select(table).order_by(table.c.created_at.desc(), table.c.id.desc()).limit(limit)
    for column, value in ((table.c.provider, provider), (table.c.status, status),
                          (table.c.caller_key_id, key), (table.c.cached, cached)):
        if value is not None:
            query = query.where(column == value)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [
        {**{k: v for k, v in row.items() if k != "id"}, "created_at": row["created_at"].isoformat()}
        for row in rows
    ]


async def summary(db: Database) -> dict[str, Any]:
    """Totals over every final row, and per provider over every attempt."""
    from sqlalchemy import func, select

    from core.models import RequestLog

    t = RequestLog.__table__
    final = t.c.final.is_(True)
    totals = select(
        func.count().label("total"),
        func.count().filter(t.c.cached.is_(True)).label("cached"),
        func.avg(t.c.latency_ms).label("avg_ms"),
        func.percentile_cont(0.95).within_group(t.c.latency_ms).label("p95_ms"),
        func.sum(t.c.cost).label("cost"),
        func.sum(t.c.total_tokens).label("tokens"),
    ).where(final)
    live = t.c.cached.is_(False)
    per_provider = (
        select(
            t.c.provider,
            func.count().label("attempts"),
            func.count().filter(t.c.status != "ok").label("errors"),
            func.avg(t.c.latency_ms).filter(t.c.status == "ok").label("avg_ms"),
            func.percentile_cont(0.95).within_group(t.c.latency_ms).label("p95_ms"),
            func.max(t.c.created_at).label("last_seen"),
        )
        .where(live, t.c.provider.is_not(None))
        .group_by(t.c.provider)
    )
    async with db.engine.connect() as conn:
        row = (await conn.execute(totals)).mappings().one()
        providers = (await conn.execute(per_provider)).mappings().all()
    total = row["total"] or 0
    return {
        "total_requests": total,
        "cache_hits": row["cached"] or 0,
        "cache_hit_rate": round((row["cached"] or 0) / total, 4) if total else 0.0,
        "avg_response_time_ms": _ms(row["avg_ms"]),
        "p95_response_time_ms": _ms(row["p95_ms"]),
        "total_cost": round(row["cost"] or 0.0, 6),
        "total_tokens": int(row["tokens"] or 0),
        "providers": {
            p["provider"]: {
                "attempts": p["attempts"],
                "errors": p["errors"],
                "error_rate": round(p["errors"] / p["attempts"], 4) if p["attempts"] else 0.0,
                "avg_response_time_ms": _ms(p["avg_ms"]),
                "p95_response_time_ms": _ms(p["p95_ms"]),
                "last_seen": p["last_seen"].isoformat() if p["last_seen"] else None,
                "health": _health(p["errors"], p["attempts"]),
            }
            for p in providers
        },
    }


async def spend_by_key_day(db: Database, *, since: datetime) -> list[dict[str, Any]]:
    """Per caller key and UTC day since `since`: what its final requests cost, newest day first."""
    from sqlalchemy import Date, cast, func, select

    from core.models import RequestLog

    t = RequestLog.__table__
    day = cast(func.timezone("UTC", t.c.created_at), Date).label("day")
    query = (select(day, t.c.caller_key_id, func.count().label("requests"), func.sum(t.c.cost).label("cost"),
                    func.sum(t.c.total_tokens).label("tokens"))
             .where(t.c.final.is_(True), t.c.created_at >= since)
             .group_by(day, t.c.caller_key_id).order_by(day.desc(), func.sum(t.c.cost).desc()))
    async with db.engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [{"day": row["day"].isoformat(), "key": row["caller_key_id"], "requests": row["requests"],
             "cost": round(row["cost"] or 0.0, 6), "tokens": int(row["tokens"] or 0)} for row in rows]


async def traffic(db: Database, *, since: datetime) -> dict[str, dict[str, Any]]:
    """Per provider since `since`: its attempts (cache hits are not traffic to it) and their cost."""
    from sqlalchemy import func, select

    from core.models import RequestLog

    t = RequestLog.__table__
    query = (select(t.c.provider, func.count().label("attempts"), func.sum(t.c.cost).label("cost"))
             .where(t.c.created_at >= since, t.c.cached.is_(False), t.c.provider.is_not(None))
             .group_by(t.c.provider))
    async with db.engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return {row["provider"]: {"attempts": row["attempts"], "cost": round(row["cost"] or 0.0, 6)} for row in rows}


def _ms(value: float | None) -> float | None:
    return round(float(value), 2) if value is not None else None


def _health(errors: int, attempts: int) -> str:
    rate = errors / attempts if attempts else 0.0
    return "healthy" if rate < 0.05 else "degraded" if rate < 0.5 else "down"
