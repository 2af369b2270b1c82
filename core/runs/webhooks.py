"""Signed webhooks (Standard Webhooks, https://www.standardwebhooks.com): checking the
ones that start runs, signing the callbacks runs send back.

A delivery carries `webhook-id`, `webhook-timestamp` (seconds; accepted within 5
minutes of now either way) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of
"id.timestamp.body">`, several space-separated). It is checked against every secret of
WEBHOOK_SECRETS (comma-separated `whsec_…`), so a secret can be rotated by adding the
new one before removing the old. The checking is the `standardwebhooks` library's.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from core.settings import Settings

HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


class WebhookRefused(Exception):
    """The delivery is not signed by one of our secrets (or is too old, or too new)."""


def signed(headers: Mapping[str, str]) -> bool:
    """Whether a request presents itself as a signed webhook."""
    return "webhook-signature" in headers


def verify(settings: Settings, headers: Mapping[str, str], body: bytes) -> str:
    """The delivery's `webhook-id` once its signature checks out; WebhookRefused saying
    what is wrong (never which secret, or what the signature should have been)."""
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    secrets = settings.webhook_secrets
    if not secrets:
        raise WebhookRefused("this deployment takes no signed webhooks: WEBHOOK_SECRETS is not set")
    missing = [name for name in HEADERS if not headers.get(name)]
    if missing:
        raise WebhookRefused(f"a signed webhook needs the headers {', '.join(HEADERS)}; missing: {', '.join(missing)}")
    wanted = {name: headers[name] for name in HEADERS}
    reason = "webhook-signature matches none of the secrets (WEBHOOK_SECRETS)"
    for secret in secrets:
        try:
            Webhook(secret).verify(body, wanted, json_parse=False)
            return wanted["webhook-id"]
        except WebhookVerificationError as exc:
            text = str(exc)
            if "timestamp" in text or "Invalid Signature Headers" in text:
                raise WebhookRefused(_timestamp_problem(wanted["webhook-timestamp"])) from None
        except ValueError:  # a malformed signature (no "v1,", bad base64) or a body that is not UTF-8
            reason = "webhook-signature is malformed: expected space-separated v1,<base64> signatures"
    raise WebhookRefused(reason)


def _timestamp_problem(value: str) -> str:
    try:
        skew = float(value) - datetime.now(UTC).timestamp()
    except ValueError:
        return "webhook-timestamp must be the sending time in seconds since the epoch"
    return (f"webhook-timestamp is {abs(skew):.0f} s in the {'future' if skew > 0 else 'past'}: "
            "a delivery is accepted within 5 minutes of its timestamp (a replay, or a clock to fix)")


def signed_headers(secret: str, message_id: str, body: str) -> dict[str, str]:
    """The Standard Webhooks headers that sign `body` as message `message_id`."""
    from standardwebhooks.webhooks import Webhook

    now = datetime.now(UTC)
    return {"webhook-id": message_id, "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(message_id, now, body), "content-type": "application/json"}
