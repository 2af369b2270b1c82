"""Per-key rate limits and budgets, in Redis, inside the gateway's two round trips.

A key may set any of: requests per minute, LLM tokens per minute, USD per UTC day, USD
per UTC month. One script checks them all in the request's first round trip (with the
cache read and the DWA state); one script records what the request used in its second.

Requests and tokens use GCRA, the generic cell rate algorithm: per key and kind, one
number, the "theoretical arrival time" (TAT). Each unit pushes TAT forward by 60 s / the
limit; a request is refused while TAT is more than a minute ahead of now, and the refusal
says exactly when it would pass (Retry-After). That allows a burst up to the limit and
then the limit per minute, with no window edges and no per-request list to keep.
- requests: the check debits one request;
- tokens are only known after the call: the check refuses while the tokens already used
  are over the limit, and the record debits the tokens the request used.

Budgets are spend counters per key per day and month, added to in the record round
trip; the check refuses once one reaches its budget. They count integer nanodollars
with INCRBY: Redis 6.2 (the embedded one) rewrites an INCRBYFLOAT called from Lua into a
SET for its append-only file, in the script's own argument array, and corrupts its heap
(it crashed here, a few requests later). With Redis down the limits are not
enforced (they fail open, and /api/health says so); spend recorded meanwhile is in the
request log, and `reconcile` (the cron tick) brings the counters up to it.

Time is an argument (milliseconds), never Redis TIME, as in the DWA scripts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from core.kv import KEY_PREFIX, KV, Command, Script

if TYPE_CHECKING:
    from core.db import Database

WINDOW_MS = 60_000
NANO = 1_000_000_000  # spend counters are in nanodollars


MAX_PER_MINUTE = 2**31 - 1  # the largest a per-minute limit can be: its column is a Postgres integer


@dataclass(frozen=True, slots=True)
class Limits:
    """A key's limits; None means no limit of that kind."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    budget_usd_per_day: float | None = None
    budget_usd_per_month: float | None = None

    @property
    def any(self) -> bool:
        return any(value is not None for value in asdict(self).values())

    @property
    def budgets(self) -> bool:
        return self.budget_usd_per_day is not None or self.budget_usd_per_month is not None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the check found. `limit` names the one that refused (None: allowed)."""

    limit: str | None
    retry_after_s: float = 0.0
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    spent_usd: float | None = None

    @property
    def allowed(self) -> bool:
        return self.limit is None


class LimitExceeded(Exception):
    """A key is over one of its limits; the message names it and when it clears."""

    def __init__(self, verdict: Verdict, limits: Limits) -> None:
        self.verdict, self.limits = verdict, limits
        super().__init__(_refusal(verdict, limits))


CHECK = Script(r"""
local now = tonumber(ARGV[1])
local rpm, tpm = tonumber(ARGV[2]), tonumber(ARGV[3])
local per_day, per_month = tonumber(ARGV[4]), tonumber(ARGV[5])  -- nanodollars
local window = 60000
-- budgets first: a refusal there spends none of the request allowance
if per_day > 0 then
  local spent = redis.call('GET', KEYS[3]) or '0'
  if tonumber(spent) >= per_day then return {0, 'budget_usd_per_day', 0, -1, -1, spent} end
end
if per_month > 0 then
  local spent = redis.call('GET', KEYS[4]) or '0'
  if tonumber(spent) >= per_month then return {0, 'budget_usd_per_month', 0, -1, -1, spent} end
end
local tokens_left = -1
if tpm > 0 then
  local tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
  if tat - now > window then return {0, 'tokens_per_minute', math.ceil(tat - now - window), -1, 0, ''} end
  tokens_left = math.floor((window - (tat - now)) * tpm / window)
end
local requests_left = -1
if rpm > 0 then
  local interval = window / rpm
  local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now) + interval
  if tat - now > window then return {0, 'requests_per_minute', math.ceil(tat - now - window), 0, -1, ''} end
  redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
  requests_left = math.floor((window - (tat - now)) / interval)
end
return {1, '', 0, requests_left, tokens_left, ''}
""")

RECORD = Script(r"""
local now, tpm, tokens, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if tpm > 0 and tokens > 0 then
  local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now) + tokens * 60000 / tpm
  redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
end
if cost > 0 and ARGV[5] == '1' then  -- cost in nanodollars
  redis.call('INCRBY', KEYS[2], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
  redis.call('INCRBY', KEYS[3], ARGV[4])
  redis.call('EXPIRE', KEYS[3], ARGV[7])
end
return 1
""")

SCRIPTS = {CHECK.sha: CHECK, RECORD.sha: RECORD}


def _keys(key_id: str, now: datetime) -> tuple[str, str, str, str]:
    base = f"{KEY_PREFIX}limit:{{{key_id}}}"  # one hash tag: one cluster slot per key
    return (f"{base}:rq", f"{base}:tk", f"{base}:d:{now:%Y%m%d}", f"{base}:m:{now:%Y%m}")


def _limit_arg(value: float | None) -> str:
    return repr(float(value)) if value else "0"


def _nano(usd: float | None) -> int:
    return round(usd * NANO) if usd else 0


def check_command(key_id: str, limits: Limits, now: float) -> Command:
    """The command that checks `limits` and debits one request (round trip 1)."""
    when = datetime.fromtimestamp(now, UTC)
    return CHECK.command(_keys(key_id, when), (
        repr(now * 1000.0), _limit_arg(limits.requests_per_minute), _limit_arg(limits.tokens_per_minute),
        _nano(limits.budget_usd_per_day), _nano(limits.budget_usd_per_month)))


def parse_check(reply: Any, now: float) -> Verdict:
    allowed, limit, retry_ms, requests_left, tokens_left, spent = reply
    remaining = (int(requests_left) if int(requests_left) >= 0 else None,
                 int(tokens_left) if int(tokens_left) >= 0 else None)
    if int(allowed):
        return Verdict(None, 0.0, *remaining)
    retry = int(retry_ms) / 1000.0
    if limit.startswith("budget"):
        retry = _until_next(limit, now)
    return Verdict(limit, retry, *remaining, spent_usd=int(spent) / NANO if spent else None)


def record_command(key_id: str, limits: Limits, now: float, tokens: int, cost: float) -> Command:
    """The command that debits what a request used (round trip 2)."""
    when = datetime.fromtimestamp(now, UTC)
    _, tk, day, month = _keys(key_id, when)
    return RECORD.command((tk, day, month), (
        repr(now * 1000.0), _limit_arg(limits.tokens_per_minute), int(tokens), _nano(cost),
        "1" if limits.budgets else "0", 2 * 24 * 3600, 32 * 24 * 3600))


def _until_next(limit: str, now: float) -> float:
    """Seconds until the budget's period ends (UTC midnight, or the first of next month)."""
    when = datetime.fromtimestamp(now, UTC)
    start = when.replace(hour=0, minute=0, second=0, microsecond=0)
    if limit == "budget_usd_per_day":
        end = start + timedelta(days=1)
    else:
        end = (start.replace(day=1) + timedelta(days=32)).replace(day=1)
    return max(1.0, (end - when).total_seconds())


def _refusal(verdict: Verdict, limits: Limits) -> str:
    limit = verdict.limit
    if limit == "requests_per_minute":
        return (f"rate limit reached: {limits.requests_per_minute} requests per minute for this key; "
                f"retry in {verdict.retry_after_s:.1f}s")
    if limit == "tokens_per_minute":
        return (f"rate limit reached: {limits.tokens_per_minute} tokens per minute for this key; "
                f"retry in {verdict.retry_after_s:.1f}s")
    budget = limits.budget_usd_per_day if limit == "budget_usd_per_day" else limits.budget_usd_per_month
    period = "daily" if limit == "budget_usd_per_day" else "monthly"
    spent = f" (spent ${verdict.spent_usd:.4f})" if verdict.spent_usd is not None else ""
    return f"this key's {period} budget of ${budget:g} is used up{spent}; it resets in {verdict.retry_after_s:.0f}s"


def headers(verdict: Verdict, limits: Limits) -> dict[str, str]:
    """The x-ratelimit-* headers the OpenAI SDK reads (and Retry-After when refused)."""
    out: dict[str, str] = {}
    if limits.requests_per_minute:
        out["x-ratelimit-limit-requests"] = str(limits.requests_per_minute)
        if verdict.remaining_requests is not None:
            out["x-ratelimit-remaining-requests"] = str(verdict.remaining_requests)
    if limits.tokens_per_minute:
        out["x-ratelimit-limit-tokens"] = str(limits.tokens_per_minute)
        if verdict.remaining_tokens is not None:
            out["x-ratelimit-remaining-tokens"] = str(verdict.remaining_tokens)
    if not verdict.allowed:
        out["retry-after"] = str(max(1, math.ceil(verdict.retry_after_s)))
        out["retry-after-ms"] = str(max(1, math.ceil(verdict.retry_after_s * 1000)))
        if verdict.limit == "requests_per_minute":
            out["x-ratelimit-reset-requests"] = f"{verdict.retry_after_s:.3f}s"
        elif verdict.limit == "tokens_per_minute":
            out["x-ratelimit-reset-tokens"] = f"{verdict.retry_after_s:.3f}s"
    return out


async def reconcile(db: Database, kv: KV, now: float | None = None) -> int:
    """Raise each budgeted key's spend counters to what the request log says it spent
    this day and month (spend logged while Redis was down never reached them). Returns
    how many counters were raised."""
    from sqlalchemy import text

    when = datetime.fromtimestamp(now if now is not None else datetime.now(UTC).timestamp(), UTC)
    day = when.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    query = text("""
        SELECT k.id::text AS key_id,
               coalesce(sum(l.cost) FILTER (WHERE l.created_at >= :day), 0) AS day_cost,
               coalesce(sum(l.cost), 0) AS month_cost
        FROM api_keys k LEFT JOIN request_log l
          ON l.caller_key_id = k.id::text AND l.created_at >= :month AND l.final
        WHERE k.revoked_at IS NULL
          AND (k.budget_usd_per_day IS NOT NULL OR k.budget_usd_per_month IS NOT NULL)
        GROUP BY k.id""")
    async with db.engine.connect() as conn:
        rows = (await conn.execute(query, {"day": day, "month": month})).all()
    raised = 0
    for row in rows:
        _, _, day_key, month_key = _keys(row.key_id, when)
        for key, logged, ttl in ((day_key, row.day_cost, 2 * 24 * 3600), (month_key, row.month_cost, 32 * 24 * 3600)):
            current = int(await kv.execute("GET", key) or 0)
            if _nano(float(logged)) > current:
                await kv.pipeline([["SET", key, _nano(float(logged)), "EX", ttl]])
                raised += 1
    return raised
