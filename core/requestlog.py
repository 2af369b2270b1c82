"""The request log: every provider attempt and cache hit, queued in Redis, kept in Postgres.

On the hot path a record is one XADD folded into the request's final Redis round trip;
`drain` moves the stream into the `request_log` table in batches: continuously in a
long-running server (`drain_continuously`, started by the app's lifespan), and from the
cron function or `orchesity drain` where nothing runs between requests (Lambda). A batch is deleted from the stream only after Postgres committed it,
and rows are keyed by `log_id`, so a drain that dies half-way, or two drains at once,
lose and duplicate nothing. Without Redis the record goes straight to Postgres.

Rows are inserted as the JSON they were queued as: one statement expands the batch with
`jsonb_to_recordset`, so nothing is decoded into objects or compiled per row. (Building
a 1,000-row INSERT through SQLAlchemy's compiler cost 0.4 ms of CPU a row, on the
serving process's event loop; this costs a few microseconds a row there.) A batch that
Postgres refuses for its data is retried row by row, so one bad record cannot hold back
the stream: it is dropped, with a warning, and the rest go in.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field, fields
from functools import cache
from typing import TYPE_CHECKING, Any

from core import fastjson
from core.kv import KEY_PREFIX, KV
from core.outage import Outage

if TYPE_CHECKING:
    from core.db import Database

log = logging.getLogger("orchesity.requestlog")

STREAM = f"{KEY_PREFIX}log:requests"
# Bounds Redis memory if draining stops for long; at ~500 bytes a record, about 500 MB.
STREAM_MAXLEN = 1_000_000


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

    def json(self) -> str:
        # vars(), not asdict(): asdict deep-copies every field, on every request
        return fastjson.dumps(vars(self)).decode()


def append_command(entry: LogEntry) -> list[Any]:
    return ["XADD", STREAM, "MAXLEN", "~", STREAM_MAXLEN, "*", "e", entry.json()]


@cache
def _insert_statement() -> Any:
    """INSERT … SELECT FROM jsonb_to_recordset(:rows): a JSON array of LogEntry objects.

    Built on first use: SQLAlchemy is not loaded until something reaches Postgres."""
    from sqlalchemy import text
    from sqlalchemy.dialects import postgresql

    from core.models import RequestLog

    table = RequestLog.__table__
    dialect = postgresql.dialect()
    names = [f.name for f in fields(LogEntry) if f.name != "extra"]
    # created_at is queued as epoch seconds (a float), stored as a timestamp
    types = {name: "double precision" if name == "created_at" else table.c[name].type.compile(dialect)
             for name in names}
    selected = ["to_timestamp(created_at)" if name == "created_at" else name for name in names]
    return text(
        f"INSERT INTO request_log ({', '.join(names)}) SELECT {', '.join(selected)} "
        f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r({', '.join(f'{n} {types[n]}' for n in names)}) "
        "ON CONFLICT (log_id) DO NOTHING")


# \u0000 escapes, but not an escaped backslash followed by "u0000"
_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


async def write(db: Database, entries: list[LogEntry]) -> int:
    """Insert entries into `request_log`, skipping any already there; returns rows added."""
    return await _insert(db, [entry.json() for entry in entries])


async def _insert(db: Database, payloads: list[str]) -> int:
    """Insert queued records (each a LogEntry's JSON); a record Postgres refuses for its
    data (or one that is not ours) is dropped with a warning. Raises when Postgres is down."""
    from sqlalchemy.exc import DataError, IntegrityError

    if not payloads:
        return 0
    try:
        return await _insert_batch(db, payloads)
    except (DataError, IntegrityError):
        if len(payloads) == 1:
            log.warning("dropping a request-log record Postgres refuses: %.200s", payloads[0])
            return 0
    added = 0
    for payload in payloads:  # find the bad one; the others go in
        added += await _insert(db, [payload])
    return added


async def _insert_batch(db: Database, payloads: list[str]) -> int:
    rows = "[" + ",".join(payloads) + "]"
    if "\\u0000" in rows:  # text in Postgres cannot hold NUL, which JSON may (a provider's message)
        rows = _NUL.sub(r"\1", rows)
    async with db.engine.begin() as conn:
        result = await conn.execute(_insert_statement(), {"rows": rows})
    return result.rowcount or 0


async def drain(kv: KV, db: Database, *, batch: int = 500, max_batches: int | None = None) -> int:
    """Move queued records into Postgres; returns how many stream entries were moved.

    Raises (leaving the stream as it was) when Postgres or Redis fails mid-way.
    """
    moved = batches = 0
    while max_batches is None or batches < max_batches:
        items = await kv.xrange(STREAM, count=batch)
        if not items:
            break
        payloads = []
        for entry_id, queued in items:
            payload = queued.get("e")
            if payload is None or not payload.startswith("{"):  # not ours: drop it, or it blocks every drain
                log.warning("dropping undecodable request-log entry %s", entry_id)
            else:
                payloads.append(payload)
        await _insert(db, payloads)
        await kv.xdel(STREAM, *[entry_id for entry_id, _ in items])
        moved += len(items)
        batches += 1
    return moved


async def drain_continuously(kv: KV, db: Database, *, interval: float) -> None:
    """Drain every `interval` seconds until cancelled; a failing Redis or Postgres is
    logged once per outage and retried, and the records wait in the stream meanwhile."""
    outage = Outage("The request-log drain", log)
    while True:
        try:
            await drain(kv, db)
        except Exception as exc:  # noqa: BLE001 - keep draining once the store is back
            outage.failed(exc)
        else:
            outage.recovered()
        await asyncio.sleep(interval)


async def pending(kv: KV | None) -> int:
    """Records queued in Redis and not yet in Postgres."""
    return await kv.xlen(STREAM) if kv is not None else 0


async def recent(db: Database, *, limit: int, provider: str | None = None) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from core.models import RequestLog

    table = RequestLog.__table__
    query = select(table).order_by(table.c.created_at.desc(), table.c.id.desc()).limit(limit)
    if provider is not None:
        query = query.where(table.c.provider == provider)
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


def _ms(value: float | None) -> float | None:
    return round(float(value), 2) if value is not None else None


def _health(errors: int, attempts: int) -> str:
    rate = errors / attempts if attempts else 0.0
    return "healthy" if rate < 0.05 else "degraded" if rate < 0.5 else "down"
