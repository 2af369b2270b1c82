"""A run's completion callback: its final status POSTed to the `callback_url` it was given.

Signed like the webhooks that start runs (Standard Webhooks: `webhook-id`, stable for a
run so a receiver can drop repeats, `webhook-timestamp`, `webhook-signature` v1 with the
first of WEBHOOK_SECRETS), sent through the outbound guard (never to a private address),
and retried with exponential backoff (from 5 s, doubling, 6 attempts in all) by whoever
finishes the run and then by the cron sweep. A callback is due when `callback_status`
is `pending` and `callback_next_at` has passed.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from core import fastjson

if TYPE_CHECKING:
    from core.services import Services

log = logging.getLogger("orchesity.runs")

ATTEMPTS = 6
FIRST_DELAY_S = 5.0


# Takes the due callbacks for CLAIM_S (so two sweeps never send the same one at once),
# then each is sent outside any transaction and its outcome written.
_CLAIM = """
UPDATE runs SET callback_next_at = now() + make_interval(secs => :claim)
WHERE id IN (SELECT id FROM runs WHERE callback_status = 'pending' AND callback_next_at <= now() {one}
             ORDER BY callback_next_at LIMIT :limit FOR UPDATE SKIP LOCKED)
RETURNING id, status, result, error, callback_url, callback_attempts"""
CLAIM_S = 60


async def deliver_due(svc: Services, *, run_id: uuid.UUID | None = None, limit: int = 20) -> int:
    """Send the callbacks that are due (one run's, or any); how many were delivered."""
    from sqlalchemy import text

    from core.outbound import Outbound, OutboundError
    from core.runs.webhooks import signed_headers

    async with svc.db.engine.begin() as conn:
        rows = (await conn.execute(text(_CLAIM.format(one="AND id = :run" if run_id is not None else "")),
                                   {"run": run_id, "limit": limit, "claim": CLAIM_S})).all()
    if not rows:
        return 0
    secrets = svc.settings.webhook_secrets
    delivered = 0
    outbound = Outbound(allow_hosts=svc.settings.callback_allow_hosts)
    try:
        for row in rows:
            body = fastjson.dumps({"type": f"run.{row.status}", "data": _payload(row)}).decode()
            attempts = row.callback_attempts + 1
            outcome = "no WEBHOOK_SECRETS to sign it with"
            if secrets:
                try:
                    answer = await outbound.request("POST", row.callback_url, content=body.encode(), timeout=10.0,
                                                    headers=signed_headers(secrets[0], f"run_{row.id}", body),
                                                    max_bytes=4096)
                    outcome = "delivered" if 200 <= answer.status < 300 else f"HTTP {answer.status}"
                except OutboundError as exc:
                    outcome = str(exc)[:200]
            if outcome == "delivered":
                delivered += 1
                status, next_at = "delivered", None
            elif attempts >= ATTEMPTS or not secrets:
                status, next_at = "failed", None
                log.warning("callback of run %s given up after %d attempt(s): %s", row.id, attempts, outcome)
            else:
                status = "pending"
                next_at = datetime.now(UTC) + timedelta(seconds=FIRST_DELAY_S * 2 ** (attempts - 1))
            async with svc.db.engine.begin() as conn:
                await conn.execute(text("UPDATE runs SET callback_status = :status, callback_attempts = :attempts, "
                                        "callback_next_at = :next, callback_error = :error WHERE id = :id"),
                                   {"status": status, "attempts": attempts, "next": next_at, "id": row.id,
                                    "error": None if status == "delivered" else outcome})
    finally:
        await outbound.aclose()
    return delivered


def _payload(row: Any) -> dict[str, Any]:
    return {"id": str(row.id), "status": row.status, "result": row.result, "error": row.error}
