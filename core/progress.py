"""Run progress: events, numbered per run, written with their checkpoint and read back live.

Event types: run.queued, run.started, step.started, step.progress, step.completed,
step.failed, step.retrying, run.succeeded, run.failed, run.cancelled, run.timed_out, log.

Where they live (seed `004_…`):
- Postgres `events` is the source of truth. An event is inserted in the same
  transaction as the checkpoint it reports (core/runs/executor.py), so a crash loses
  neither or both, and its `seq` is the run's next number.
- Then it is copied to the run's Redis stream (`orchesity:run:{id}:events`, entry id
  `<seq>-1`, capped and expiring) and the run's latest status key
  (`orchesity:run:{id}:status`: status, progress, last seq; for dashboards that read
  Redis), in one script that adds only what the stream does not have yet: a retried or
  repeated publish is harmless.

Readers (`events_after`) want every event after the `seq` they have, once, in order.
They read the Redis stream, and take its answer only when it continues exactly from
that seq; otherwise (Redis down, restarted, or missing an event whose publish failed)
they read Postgres. A reader switching between the two mid-run therefore sees no gap
and no repeat. Readers that wait (`wait_events`: long polls, SSE) are woken by the
process's Watcher the moment the stream grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core import fastjson
from core.kv import KEY_PREFIX, KV, KVError, Script

if TYPE_CHECKING:
    from core.db import Database

log = logging.getLogger("orchesity.progress")

EVENT_TYPES = ("run.queued", "run.started", "step.started", "step.progress", "step.completed", "step.failed",
               "step.retrying", "run.succeeded", "run.failed", "run.cancelled", "run.timed_out", "log")
FINAL = frozenset({"run.succeeded", "run.failed", "run.cancelled", "run.timed_out"})
STREAM_MAXLEN = 10_000
TTL_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class Event:
    """One event as readers get it."""

    seq: int
    type: str
    message: str
    at: float                      # epoch seconds
    progress: float | None = None  # percent of the run's steps done
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "type": self.type, "message": self.message, "at": self.at,
                "progress": self.progress, "data": self.data}

    @property
    def final(self) -> bool:
        return self.type in FINAL


def now() -> float:
    """An event's time: epoch seconds to the microsecond, what Postgres keeps, so an event
    read from Redis and the same one read from Postgres are equal."""
    return round(time.time(), 6)


def stream_key(run_id: uuid.UUID | str) -> str:
    return f"{KEY_PREFIX}run:{{{run_id}}}:events"


def status_key(run_id: uuid.UUID | str) -> str:
    return f"{KEY_PREFIX}run:{{{run_id}}}:status"


# KEYS: stream, status. ARGV: stream cap, ttl, status JSON, then seq, event JSON pairs.
# Adds the events the stream does not have yet (its last id says which), in order, and
# the status with them (a late, repeated publish changes nothing).
PUBLISH = Script(r"""
local last = 0
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if top[1] then last = tonumber(string.match(top[1][1], '^(%d+)')) end
local added = 0
for i = 4, #ARGV, 2 do
  local seq = tonumber(ARGV[i])
  if seq > last then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], seq .. '-1', 'e', ARGV[i + 1])
    last = seq
    added = added + 1
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
if added > 0 and ARGV[3] ~= '' then redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[2]) end
return added
""")
SCRIPTS = {PUBLISH.sha: PUBLISH}


async def publish(kv: KV | None, run_id: uuid.UUID | str, events: Sequence[Event],
                  status: dict[str, Any] | None = None) -> bool:
    """Copy committed events (and the run's latest status) to Redis; False if that failed
    (readers then find them in Postgres)."""
    if kv is None or not events:
        return False
    status_json = fastjson.dumps({**status, "seq": events[-1].seq}).decode() if status else ""
    args: list[Any] = [STREAM_MAXLEN, TTL_SECONDS, status_json]
    for event in events:
        args += [event.seq, fastjson.dumps(event.to_json()).decode()]
    try:
        await kv.pipeline([PUBLISH.command((stream_key(run_id), status_key(run_id)), args)], scripts=SCRIPTS)
    except KVError as exc:
        log.debug("events of run %s not published to Redis: %s", run_id, exc)
        return False
    return True


async def events_after(db: Database, kv: KV | None, run_id: uuid.UUID | str, after: int = 0,
                       limit: int = 500) -> list[Event]:
    """The run's events after `after`, in order, each once: Redis's when they continue
    exactly from `after`, else Postgres's (which has every committed one)."""
    if kv is not None:
        try:
            entries = await kv.xrange(stream_key(run_id), start=f"{after + 1}-0", count=limit)
        except KVError:
            entries = []
        events = [_from_stream(fields) for _, fields in entries]
        if events and events[0].seq == after + 1 and all(b.seq == a.seq + 1 for a, b in zip(events, events[1:])):
            return events
    return await _from_postgres(db, run_id, after, limit)


async def wait_events(db: Database, kv: KV | None, watcher: Watcher | None, run_id: uuid.UUID | str,
                      after: int, timeout: float, limit: int = 500) -> list[Event]:
    """The run's events after `after`, waiting up to `timeout` seconds for one: woken by
    the watcher as soon as Redis has it, and reading Postgres at least every
    POSTGRES_POLL_S (more often while Redis is failing), so an event whose publish failed
    is found all the same."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    with watcher.watching(run_id, after) if watcher is not None else _no_wake() as woken:
        while True:
            woken.clear()  # before reading: a wake during the read is kept
            events = await events_after(db, kv, run_id, after, limit)
            left = end - loop.time()
            if events or left <= 0:
                return events
            poll = POSTGRES_POLL_S if kv is not None and kv.available and watcher is not None else DEGRADED_POLL_S
            try:
                await asyncio.wait_for(woken.wait(), min(left, poll))
            except TimeoutError:
                pass


POSTGRES_POLL_S = 2.0
DEGRADED_POLL_S = 0.5


@contextlib.contextmanager
def _no_wake() -> Iterator[asyncio.Event]:
    yield asyncio.Event()


class Watcher:
    """One per process: wakes the readers of a run as soon as its Redis stream grows.

    A single loop reads every watched stream with one `XREAD … BLOCK` (a connection of its
    own, core/kv.py), however many readers wait, and sets each reader's asyncio.Event.
    It runs only while someone watches. On a backend that cannot block (Upstash's REST
    API) it reads every NONBLOCKING_POLL_S instead; with Redis failing, every second.
    """

    BLOCK_MS = 200
    NONBLOCKING_POLL_S = 0.1

    def __init__(self, kv: KV) -> None:
        self.kv = kv
        self._last: dict[str, str] = {}  # stream key -> the id to read after
        self._readers: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def watching(self, run_id: uuid.UUID | str, after: int) -> Iterator[asyncio.Event]:
        key = stream_key(run_id)
        woken = asyncio.Event()
        self._readers.setdefault(key, set()).add(woken)
        self._last.setdefault(key, f"{after}-1")
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
        try:
            yield woken
        finally:
            readers = self._readers.get(key)
            if readers is not None:
                readers.discard(woken)
                if not readers:
                    del self._readers[key]
                    self._last.pop(key, None)

    async def _loop(self) -> None:
        while self._readers:
            streams = {key: self._last[key] for key in self._readers}
            try:
                found = await self.kv.xread(streams, count=STREAM_MAXLEN, block_ms=self.BLOCK_MS)
            except KVError:
                await asyncio.sleep(1.0)
                continue
            for key, entries in found.items():
                if entries and key in self._readers:
                    self._last[key] = entries[-1][0]
                    for woken in self._readers[key]:
                        woken.set()
            if not self.kv.blocks:
                await asyncio.sleep(self.NONBLOCKING_POLL_S)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _from_stream(fields: dict[str, str]) -> Event:
    raw = fastjson.loads(fields["e"])
    return Event(raw["seq"], raw["type"], raw["message"], raw["at"], raw.get("progress"), raw.get("data") or {})


async def _from_postgres(db: Database, run_id: uuid.UUID | str, after: int, limit: int) -> list[Event]:
    from sqlalchemy import text

    query = text("SELECT seq, event_type, message, extract(epoch FROM timestamp) AS at, progress_percentage, data "
                 "FROM events WHERE run_id = :run AND seq > :after ORDER BY seq LIMIT :limit")
    async with db.engine.connect() as conn:
        rows = (await conn.execute(query, {"run": str(run_id), "after": after, "limit": limit})).all()
    return [Event(row.seq, row.event_type, row.message, float(row.at), row.progress_percentage,
                  row.data if isinstance(row.data, dict) else json.loads(row.data or "{}")) for row in rows]
