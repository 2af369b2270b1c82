"""Short-lived read tokens for Server-Sent Event streams (the dashboard's live views).

A browser's EventSource cannot send an Authorization header, and a key must never go
into a URL (access logs, history and proxies keep URLs). So a caller holding a key asks
for a read token bound to itself and to one stream (`providers`, `run:<id>`), valid for
STREAM_TOKEN_TTL_SECONDS, and passes it as `?token=` to that stream's GET, the only
route that reads it. It grants reading that stream and nothing else: it is not a key,
and a route that needs a key refuses it.

`ost_<payload>.<mac>`: the payload is base64url JSON `{"sub", "adm", "res", "exp"}`, the
mac HMAC-SHA256 of the payload under a key derived from SECRET_KEY. It is verified with no Redis or
Postgres round trip, so any instance sharing SECRET_KEY accepts what another issued.
With SECRET_KEY unset, a random key made once per process signs them instead: a token
then works only on the instance that issued it (one `orchesity serve` is fine; several
instances behind a balancer must share a SECRET_KEY). A stream closes when its token
expires, so a revoked key's stream stops within the TTL: the page asks for a new token,
which needs the key again.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core import fastjson
from core.auth import Principal, Scope

if TYPE_CHECKING:
    from core.settings import Settings

log = logging.getLogger("orchesity.stream_tokens")

TOKEN_START = "ost_"


class TokenRefused(Exception):
    """The token is malformed, forged, expired or for another stream; safe to show."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid token lets its bearer read: one stream, as `subject` (with `admin`'s view)."""

    subject: str
    admin: bool
    resource: str
    expires_at: float


@functools.cache
def _process_key() -> bytes:
    log.warning("SECRET_KEY is not set: stream tokens are signed with a key of this process only, "
                "so another instance will not accept them (set SECRET_KEY when running several)")
    return secrets.token_bytes(32)


def _key(settings: Settings) -> bytes:
    """The signing key: derived from SECRET_KEY for this use alone (a token's mac never
    doubles as anything else SECRET_KEY may come to sign), else the process's own."""
    if settings.SECRET_KEY is not None:
        return hmac.new(settings.SECRET_KEY.get_secret_value().encode(), b"orchesity stream tokens v1",
                        hashlib.sha256).digest()
    return _process_key()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())


def issue(settings: Settings, caller: Principal, resource: str, now: float) -> tuple[str, float]:
    """A token letting `caller` read `resource` until the returned expiry (epoch seconds)."""
    expires = now + settings.STREAM_TOKEN_TTL_SECONDS
    if caller.expires_at is not None:  # never outlive the key it was issued to
        expires = min(expires, caller.expires_at)
    payload = _b64(fastjson.dumps({"sub": caller.id, "adm": caller.allows(Scope.admin),
                                   "res": resource, "exp": round(expires, 3)}))
    return f"{TOKEN_START}{payload}.{_mac(_key(settings), payload)}", expires


def verify(settings: Settings, token: str, resource: str, now: float) -> Grant:
    """The grant of `token` for `resource`; TokenRefused says why not."""
    payload, dot, mac = token.removeprefix(TOKEN_START).partition(".")
    if not token.startswith(TOKEN_START) or not dot or not payload or not mac:
        raise TokenRefused("not a stream token: ask POST …/stream-token for one")
    if not hmac.compare_digest(mac, _mac(_key(settings), payload)):
        raise TokenRefused("the stream token's signature does not match (forged, or issued by an "
                           "instance with another SECRET_KEY)")
    try:
        claims = fastjson.loads(_unb64(payload))
        grant = Grant(str(claims["sub"]), bool(claims["adm"]), str(claims["res"]), float(claims["exp"]))
    except (ValueError, KeyError, TypeError):
        raise TokenRefused("the stream token's payload is malformed") from None
    if grant.expires_at <= now:
        raise TokenRefused("the stream token has expired: ask for a new one")
    if grant.resource != resource:
        raise TokenRefused(f"the stream token is for {grant.resource!r}, not this stream")
    return grant
