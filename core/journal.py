"""Records queued in a Redis stream on the hot path and moved into a Postgres table.

A journal is a Redis stream and the table its records end up in: the request log (one
row per provider attempt, core/requestlog.py) and the tool-call log
(core/tools/calls.py). On the hot path a record is one XADD, folded into a round trip
the request makes anyway; `drain` moves the stream into the table in batches:
continuously in a long-running server (`drain_continuously`, started by the app's
lifespan), and from the cron work (core/cron.py) where nothing runs between requests
(Lambda). A batch is deleted from the stream only after Postgres committed it, and rows
are keyed (the record's first field), so a drain that dies half-way, or two drains at
once, lose and duplicate nothing. Without Redis, records go straight to Postgres
(`write`).

Rows are inserted as the JSON they were queued as: one statement expands the batch with
`jsonb_to_recordset`, so nothing is decoded into objects or compiled per row. (Building
a 1,000-row INSERT through SQLAlchemy's compiler cost 0.4 ms of CPU a row, on the
serving process's event loop; this costs a few microseconds a row there.) A batch that
Postgres refuses for its data is retried row by row, so one bad record cannot hold back
the stream: it is dropped, with a warning, and the rest go in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from core import fastjson
from core.kv import KV
from core.outage import Outage

if TYPE_CHECKING:
    from core.db import Database

log = logging.getLogger("orchesity.journal")

# Bounds Redis memory if draining stops for long; at ~500 bytes a record, about 500 MB.
STREAM_MAXLEN = 1_000_000


class Journal:
    """A stream of `entry` dataclass records and the table `table()` they are moved into.

    The entry's fields are the table's columns (but `extra`); the first one is the key
    that makes inserts idempotent, and a `created_at` field (epoch seconds) becomes a
    timestamp.
    """

    def __init__(self, name: str, stream: str, entry: type, table: Callable[[], Any]) -> None:
        self.name = name
        self.stream = stream
        self.entry = entry
        self._table = table  # called on first use: models import SQLAlchemy

    def record(self, entry: Any) -> str:
        # vars(), not asdict(): asdict deep-copies every field, on every request
        return fastjson.dumps(vars(entry)).decode()

    def append_command(self, entry: Any) -> list[Any]:
        return ["XADD", self.stream, "MAXLEN", "~", STREAM_MAXLEN, "*", "e", self.record(entry)]

    @cached_property
    def _insert(self) -> Any:
        """INSERT … SELECT FROM jsonb_to_recordset(:rows): a JSON array of entries."""
        from sqlalchemy import text
        from sqlalchemy.dialects import postgresql

        table = self._table()
        dialect = postgresql.dialect()
        names = [f.name for f in dataclasses.fields(self.entry) if f.name != "extra"]
        types = {name: "double precision" if name == "created_at" else table.c[name].type.compile(dialect)
                 for name in names}
        selected = ["to_timestamp(created_at)" if name == "created_at" else name for name in names]
        return text(
            f"INSERT INTO {table.name} ({', '.join(names)}) SELECT {', '.join(selected)} "
            f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r({', '.join(f'{n} {types[n]}' for n in names)}) "
            f"ON CONFLICT ({names[0]}) DO NOTHING")

    async def write(self, db: Database, entries: Sequence[Any]) -> int:
        """Insert entries straight into the table, skipping any already there; rows added."""
        return await self._insert_payloads(db, [self.record(entry) for entry in entries])

    async def _insert_payloads(self, db: Database, payloads: list[str]) -> int:
        """Insert queued records; one Postgres refuses for its data is dropped with a
        warning. Raises when Postgres is down."""
        from sqlalchemy.exc import DataError, IntegrityError

        if not payloads:
            return 0
        try:
            return await self._insert_batch(db, payloads)
        except (DataError, IntegrityError):
            if len(payloads) == 1:
                log.warning("dropping a %s record Postgres refuses: %.200s", self.name, payloads[0])
                return 0
        added = 0
        for payload in payloads:  # find the bad one; the others go in
            added += await self._insert_payloads(db, [payload])
        return added

    async def _insert_batch(self, db: Database, payloads: list[str]) -> int:
        rows = "[" + ",".join(payloads) + "]"
        rows = fastjson.without_nul(rows)  # a provider's message may hold NUL; Postgres cannot
        async with db.engine.begin() as conn:
            result = await conn.execute(self._insert, {"rows": rows})
        return result.rowcount or 0

    async def drain(self, kv: KV, db: Database, *, batch: int = 500, max_batches: int | None = None) -> int:
        """Move queued records into Postgres; returns how many stream entries were moved.

        Raises (leaving the stream as it was) when Postgres or Redis fails mid-way.
        """
        moved = batches = 0
        while max_batches is None or batches < max_batches:
            items = await kv.xrange(self.stream, count=batch)
            if not items:
                break
            payloads = []
            for entry_id, queued in items:
                payload = queued.get("e")
                if payload is None or not payload.startswith("{"):  # not ours: drop it, or it blocks every drain
                    log.warning("dropping undecodable %s entry %s", self.name, entry_id)
                else:
                    payloads.append(payload)
            await self._insert_payloads(db, payloads)
            await kv.xdel(self.stream, *[entry_id for entry_id, _ in items])
            moved += len(items)
            batches += 1
        return moved

    async def pending(self, kv: KV | None) -> int:
        """Records queued in Redis and not yet in Postgres."""
        return await kv.xlen(self.stream) if kv is not None else 0


def journals() -> list[Journal]:
    """Every journal Orchesity keeps: what a drain moves."""
    from core.requestlog import JOURNAL as requests
    from core.tools.calls import JOURNAL as tool_calls

    return [requests, tool_calls]


async def drain_all(kv: KV, db: Database, *, max_batches: int | None = None) -> dict[str, int]:
    """Drain every journal; {journal name: entries moved}."""
    return {journal.name: await journal.drain(kv, db, max_batches=max_batches) for journal in journals()}


async def drain_continuously(kv: KV, db: Database, *, interval: float) -> None:
    """Drain every `interval` seconds until cancelled; a failing Redis or Postgres is
    logged once per outage and retried, and the records wait in the stream meanwhile."""
    outage = Outage("The log drain", log)
    while True:
        try:
            await drain_all(kv, db)
        except Exception as exc:  # noqa: BLE001 - keep draining once the store is back
            outage.failed(exc)
        else:
            outage.recovered()
        await asyncio.sleep(interval)
