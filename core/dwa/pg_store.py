"""The live DWA state in Postgres, for deployments without Redis (REDIS_ENABLED=false).

The same semantics as RedisDWAStore, at a few Postgres round trips instead of one Redis
round trip:

- State: a row per provider in `dwa_provider_state`, whose JSONB object holds the fields
  of scripts.FIELDS (and "ec") as the same strings the Lua writes, so `decode_state`
  reads both stores identically, decay included.
- record: one transaction: INSERT … ON CONFLICT DO NOTHING (the row exists), SELECT …
  FOR UPDATE (concurrent recorders of a provider queue on the row lock), then
  update.apply_outcome (the Lua's twin) and UPDATE. No update is lost, however many
  instances record at once.
- read: one statement for every candidate: their states, each one's latest
  `provider_weights` row (the baseline, while fresh: BASELINE_TTL_WINDOWS windows, as the
  Redis hash expires), and, for round_robin, the candidate set's counter in
  `dwa_counters`, advanced by an upsert in the same statement (a data-modifying CTE).
- claim_probe: the probe rule of scripts.CLAIM_PROBE_SOURCE under the row lock, so
  exactly one claimer wins.
- In-flight counts are this process's only: unlike the Redis store, other instances'
  calls are not counted (the load penalty then works per instance).
- Expiry: Redis drops a provider's state after `state_ttl_s` unused, and a round-robin
  counter likewise; here such rows read as absent (the priors, a counter from 1) and are
  started afresh by the next write, by the database clock like Redis's TTLs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from core.db import Database
from core.dwa.config import DWAConfig
from core.dwa.profile import ProviderProfile
from core.dwa.state import Outcome, Snapshot
from core.dwa.store import (
    BASELINE_TTL_WINDOWS,
    HOT_FIELDS,
    StoreBase,
    attach_details,
    decode_state,
    rotation_id,
)
from core.dwa.update import apply_outcome
from core.kv import Script

_NEVER = (None,) * len(HOT_FIELDS)

# Every candidate's state (None when absent or expired) and fresh baseline, in one query.
_READ = """
SELECT c.name, s.state, w.weight{rr_column}
FROM unnest(CAST(:names AS text[])) AS c(name)
LEFT JOIN dwa_provider_state AS s
  ON s.provider = c.name AND s.updated_at > now() - make_interval(secs => :ttl)
LEFT JOIN LATERAL (
  SELECT pw.weight, pw.window_end, pw.window_seconds FROM provider_weights AS pw
  WHERE pw.provider = c.name ORDER BY pw.window_end DESC LIMIT 1
) AS w ON w.window_end > now() - make_interval(secs => w.window_seconds * :baseline_windows)
"""
_ROTATE = """
WITH rr AS (
  INSERT INTO dwa_counters AS k (key, value) VALUES (:rr_key, 1)
  ON CONFLICT (key) DO UPDATE
    SET value = CASE WHEN k.updated_at > now() - make_interval(secs => :ttl) THEN k.value + 1 ELSE 1 END,
        updated_at = now()
  RETURNING k.value
)
"""
READ = text(_READ.format(rr_column=""))
READ_ROTATING = text(_ROTATE + _READ.format(rr_column=", (SELECT value FROM rr) AS rr"))

ENSURE_ROW = text("INSERT INTO dwa_provider_state (provider, state) VALUES (:name, '{}'::jsonb) "
                  "ON CONFLICT (provider) DO NOTHING")
LOCK_ROW = text("SELECT state, updated_at <= now() - make_interval(secs => :ttl) AS expired "
                "FROM dwa_provider_state WHERE provider = :name FOR UPDATE")
WRITE_ROW = text("UPDATE dwa_provider_state SET state = :state, updated_at = now() "
                 "WHERE provider = :name").bindparams(bindparam("state", type_=JSONB))
RESET = text("DELETE FROM dwa_provider_state WHERE provider = ANY(CAST(:names AS text[]))")


def claim_probe_update(fields: Mapping[str, Any], now: float, timeout: float) -> tuple[bool, str | None]:
    """scripts.CLAIM_PROBE_SOURCE in Python: (may this caller probe, the new `pu` to store
    or None). Closed: nothing to claim, allowed. Reopened, probed by someone else or rate
    limited: refused."""
    def number(field: str) -> float:  # apply_outcome writes numbers as strings
        return float(fields.get(field) or 0)

    if number("ho") != 1:
        return True, None
    if number("ou") > now or number("pu") > now or number("rl") > now:
        return False, None
    return True, "%.17g" % (now + timeout)


class PostgresDWAStore(StoreBase):
    """DWA state in Postgres (see the module docstring for how it matches Redis)."""

    # No scripts to send: callers that pass `scripts=store.scripts` work with either store.
    scripts: Mapping[str, Script] = MappingProxyType({})

    def __init__(
        self,
        db: Database,
        profiles: Mapping[str, ProviderProfile] | Sequence[ProviderProfile] = (),
        config: DWAConfig | None = None,
        *,
        instance_id: str | None = None,
    ) -> None:
        super().__init__(profiles, config, instance_id)
        self.db = db
        self._ttl = float(self.config.state_ttl_s)

    # -- reading ------------------------------------------------------------------------
    async def _fetch(self, names: Sequence[str], round_robin: bool) -> tuple[Sequence[Any], int | None]:
        params: dict[str, Any] = {"names": list(names), "ttl": self._ttl,
                                  "baseline_windows": BASELINE_TTL_WINDOWS}
        if round_robin:
            params["rr_key"] = "rr:" + rotation_id(names)
        async with self.db.engine.begin() as conn:
            rows = (await conn.execute(READ_ROTATING if round_robin else READ, params)).all()
        return rows, (int(rows[0].rr) if round_robin and rows else None)

    def _snapshot(self, rows: Sequence[Any], names: Sequence[str], now: float, rr: int | None) -> Snapshot:
        k_av, k_ev, local = self._k_av, self._k_ev, self._local
        states = {}
        for name, fields, baseline, *_ in rows:
            hot = tuple(fields.get(field) for field in HOT_FIELDS) if fields else _NEVER
            states[name] = decode_state(name, self.profile(name), hot, local.get(name, 0), baseline,
                                        now, k_av, k_ev)
            self.mark_overdue(states[name], now)
        return Snapshot(now=now, order=tuple(names), states=states, rr_counter=rr)

    async def read(self, names: Sequence[str], now: float, *, round_robin: bool = False) -> Snapshot:
        if not names:
            return Snapshot(now=now, order=())
        rows, rr = await self._fetch(names, round_robin)
        return self._snapshot(rows, names, now, rr)

    async def read_details(self, names: Sequence[str], now: float) -> Snapshot:
        if not names:
            return Snapshot(now=now, order=())
        rows, _ = await self._fetch(names, False)
        snapshot = self._snapshot(rows, names, now, None)
        for name, fields, *_ in rows:
            attach_details(snapshot.states[name], dict(fields or {}))
        return snapshot

    # -- writing ------------------------------------------------------------------------
    async def _locked(self, conn: AsyncConnection, name: str) -> dict[str, Any] | None:
        """The row of `name`, locked until the transaction ends (None if absent); an
        expired row's state reads as empty."""
        row = (await conn.execute(LOCK_ROW, {"name": name, "ttl": self._ttl})).first()
        if row is None:
            return None
        return {} if row.expired else dict(row.state)

    async def record(self, outcome: Outcome) -> None:
        name = outcome.provider
        self.ended(outcome)
        cost = self.profile(name).cost(outcome.input_tokens, outcome.output_tokens)
        async with self.db.engine.begin() as conn:
            await conn.execute(ENSURE_ROW, {"name": name})
            fields = await self._locked(conn, name) or {}
            state = apply_outcome(fields, outcome, cost, self.config)
            await conn.execute(WRITE_ROW, {"name": name, "state": state})

    async def claim_probe(self, name: str, now: float) -> bool:
        async with self.db.engine.begin() as conn:
            fields = await self._locked(conn, name)
            if not fields:
                return True  # never recorded: closed, nothing to claim
            allowed, probe_until = claim_probe_update(fields, now, self.config.probe_timeout_s)
            if probe_until is not None:
                await conn.execute(WRITE_ROW, {"name": name, "state": {**fields, "pu": probe_until}})
            return allowed

    async def reset(self, names: Sequence[str]) -> None:
        """Delete the live state of `names` (back to the priors). Baselines and round-robin
        counters stay, as in RedisDWAStore.reset."""
        if names:
            async with self.db.engine.begin() as conn:
                await conn.execute(RESET, {"names": list(names)})

