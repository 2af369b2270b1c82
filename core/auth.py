"""Who is calling: API keys (issued, stored hashed, verified), Supabase Auth sessions, scopes.

Scopes: `llm` (completions, embeddings), `runs` (start and read runs), `tools` (list,
invoke), `admin` (DWA reset, cache clear, tool registration, keys, the request log).
An admin key may do everything the other scopes allow.

API keys look like `osk_<prefix>_<secret>`: the 8-character prefix finds the row, the
SHA-256 of the whole key proves the caller holds it (the key has 256 random bits, so a
plain hash is enough; nothing slow is needed against guessing). The key is shown once,
when it is created, and never stored.

Verifying costs no Postgres round trip on the hot path: a verdict is kept in this process
for AUTH_CACHE_SECONDS and in Redis for AUTH_REDIS_TTL_SECONDS, so Postgres is asked only
by a process that has not seen the key lately and finds no verdict in Redis (or finds
Redis down). Revoking deletes the Redis verdict: every instance sees it within
AUTH_CACHE_SECONDS.

Frontends whose users sign in with Supabase Auth send the user's session JWT instead.
Its signature is checked against the project's signing keys (JWKS, fetched and cached by
the `supabase` package's auth client), then its issuer, audience and expiry; its `role`
maps to scopes through SUPABASE_JWT_ROLE_SCOPES, and the user id goes into the request
log. The auth client is imported on the first JWT, not before.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import string
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Any

from core import fastjson
from core.kv import KEY_PREFIX, KV, KVError, KVUnavailable
from core.limits import Limits

if TYPE_CHECKING:
    from core.db import Database
    from core.settings import Settings

log = logging.getLogger("orchesity.auth")

KEY_START = "osk_"
KEY_CHECK_WAIT_SECONDS = 0.25  # the most a request waits for the once-a-second check for keys (open)
_PREFIX_LENGTH = 8
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
VERDICT_PREFIX = f"{KEY_PREFIX}auth:"


class Scope(str, Enum):
    llm = "llm"
    runs = "runs"
    tools = "tools"
    admin = "admin"


SCOPES = tuple(scope.value for scope in Scope)


class AuthError(Exception):
    """The caller is not who it claims (401) or may not do this (403); safe to show."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified caller. `id` goes into the request log; `tenant` isolates its cache."""

    id: str                       # the key's id, "user:<sub>" for a Supabase user, "open"
    kind: str                     # "key" | "user" | "open"
    name: str
    scopes: frozenset[str]
    tenant: str | None            # None: the shared cache
    limits: Limits | None = None
    expires_at: float | None = None  # epoch seconds

    def allows(self, scope: Scope) -> bool:
        return scope.value in self.scopes or Scope.admin.value in self.scopes

    def to_json(self) -> str:
        values = asdict(self)
        values["scopes"] = sorted(self.scopes)
        return fastjson.dumps(values).decode()

    @classmethod
    def from_json(cls, raw: str) -> Principal:
        values = fastjson.loads(raw)
        limits = values.pop("limits")
        return cls(**{**values, "scopes": frozenset(values["scopes"]),
                      "limits": Limits(**limits) if limits else None})


# The principal of a server running open (loopback, no key configured: core/cli.py serve).
OPEN = Principal(id="open", kind="open", name="open access (local)", scopes=frozenset(SCOPES), tenant=None)


def parse_scopes(text: str | Iterable[str]) -> list[str]:
    """`llm,runs` (or a list) as a sorted list of known scopes; ValueError names an unknown one."""
    items = text.split(",") if isinstance(text, str) else list(text)
    scopes = sorted({item.strip() for item in items if item.strip()})
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValueError(f"unknown scope {unknown[0]!r}; use any of: {', '.join(SCOPES)}" if unknown
                         else f"give at least one scope: {', '.join(SCOPES)}")
    return scopes


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh key and its lookup prefix."""
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(_PREFIX_LENGTH))
    return f"{KEY_START}{prefix}_{secrets.token_urlsafe(32)}", prefix


def _prefix_of(key: str) -> str | None:
    if not key.startswith(KEY_START):
        return None
    prefix, sep, secret = key[len(KEY_START):].partition("_")
    return prefix if sep and secret and len(prefix) == _PREFIX_LENGTH else None


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


# --- keys in Postgres --------------------------------------------------------------------------


async def create_key(db: Database, *, name: str, scopes: Sequence[str], created_by: str,
                     expires_at: datetime | None = None, shared_cache: bool = False,
                     limits: Limits | None = None) -> tuple[str, dict[str, Any]]:
    """Issue a key; returns (the key, shown once, and its row as `list_keys` shows it)."""
    from core.models import ApiKey

    key, prefix = new_key()
    limits = limits or Limits()
    row = ApiKey(prefix=prefix, key_hash=hash_key(key), name=name, scopes=parse_scopes(scopes),
                 created_by=created_by, expires_at=expires_at, shared_cache=shared_cache,
                 **asdict(limits))
    async with db.session() as session:
        session.add(row)
        await session.commit()
    return key, _describe(row)


async def list_keys(db: Database, *, include_revoked: bool = False) -> list[dict[str, Any]]:
    from sqlmodel import select

    from core.models import ApiKey

    query = select(ApiKey).order_by(ApiKey.created_at)  # type: ignore[arg-type]
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))  # type: ignore[union-attr]
    async with db.session() as session:
        return [_describe(row) for row in (await session.exec(query)).all()]


async def revoke_key(db: Database, kv: KV | None, ident: str) -> dict[str, Any] | None:
    """Revoke the key with this id or prefix; None if there is none. Its Redis verdict
    goes at once, so other instances stop accepting it within AUTH_CACHE_SECONDS."""
    from sqlmodel import or_, select

    from core.models import ApiKey

    condition = ApiKey.prefix == ident
    try:
        condition = or_(condition, ApiKey.id == uuid.UUID(ident))
    except ValueError:
        pass
    async with db.session() as session:
        row = (await session.exec(select(ApiKey).where(condition))).first()
        if row is None:
            return None
        if row.revoked_at is None:
            row.revoked_at = datetime.now(UTC)
            session.add(row)
            await session.commit()
        described = _describe(row)
        key_hash = row.key_hash
    if kv is not None:
        try:
            await kv.execute("DEL", VERDICT_PREFIX + key_hash)
        except KVError:  # Redis down: its verdicts expire within AUTH_REDIS_TTL_SECONDS
            log.warning("revoked key %s; Redis unavailable, its cached verdict expires on its own", row.prefix)
    return described


async def any_active_key(db: Database) -> bool:
    from sqlalchemy import func, or_
    from sqlmodel import select

    from core.models import ApiKey

    now = datetime.now(UTC)
    query = select(func.count()).select_from(ApiKey).where(
        ApiKey.revoked_at.is_(None), or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now))  # type: ignore[union-attr]
    async with db.session() as session:
        return (await session.exec(query)).one() > 0


def _describe(row: Any) -> dict[str, Any]:
    """A key as listed: never its hash."""
    return {
        "id": str(row.id), "prefix": row.prefix, "name": row.name, "scopes": list(row.scopes),
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "created_by": row.created_by,
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        "shared_cache": row.shared_cache,
        "limits": {k: v for k, v in asdict(_limits(row)).items() if v is not None},
    }


def _limits(row: Any) -> Limits:
    return Limits(row.requests_per_minute, row.tokens_per_minute, row.budget_usd_per_day,
                  row.budget_usd_per_month)


def _principal(row: Any) -> Principal:
    limits = _limits(row)
    return Principal(id=str(row.id), kind="key", name=row.name, scopes=frozenset(row.scopes),
                     tenant=None if row.shared_cache else str(row.id),
                     limits=limits if limits.any else None, expires_at=_epoch(row.expires_at))


# --- verifying ------------------------------------------------------------------------------------


class Authenticator:
    """Verifies a bearer token (an API key or a Supabase session JWT) into a Principal."""

    def __init__(self, settings: Settings, db: Database, kv: KV | None) -> None:
        self.settings = settings
        self.db = db
        self.kv = kv
        self._ttl = settings.AUTH_CACHE_SECONDS
        self._redis_ttl = settings.AUTH_REDIS_TTL_SECONDS
        self._seen: dict[str, tuple[Principal, float]] = {}  # token hash -> (verdict, until)
        self._supabase: Any = None
        self._no_key_yet = settings.OPEN_ACCESS_UNTIL_KEY
        self._no_key_checked = 0.0
        self._key_check_failing = False
        self._key_check: asyncio.Future[None] | None = None

    async def open(self) -> bool:
        """Whether a caller needs no key: OPEN_ACCESS, or OPEN_ACCESS_UNTIL_KEY while no
        active key exists. Postgres is asked at most once a second (a key made by the CLI
        or another instance closes the door within that); once a key exists, keys are
        required until the next start, whatever becomes of it. The request that asks
        waits for the answer at most KEY_CHECK_WAIT_SECONDS: a database that does not
        answer (frozen, a stalled pooler) answers the check later, never a caller."""
        if self.settings.OPEN_ACCESS:
            return True
        if self._no_key_yet and self._key_check is None and time.monotonic() - self._no_key_checked >= 1.0:
            self._no_key_checked = time.monotonic()
            self._key_check = asyncio.ensure_future(self._check_for_keys())
        if self._key_check is not None:
            await asyncio.wait([self._key_check], timeout=KEY_CHECK_WAIT_SECONDS)
        return self._no_key_yet

    async def _check_for_keys(self) -> None:
        try:
            self._no_key_yet = not await any_active_key(self.db)
        except Exception as exc:  # noqa: BLE001 - Postgres down: as it was, asked again in a second
            if not self._key_check_failing:  # once per spell
                log.warning("could not check for API keys: %s", type(exc).__name__)
            self._key_check_failing = True
        else:
            self._key_check_failing = False
        finally:
            self._key_check = None
            self._no_key_checked = time.monotonic()

    def key_created(self) -> None:
        """A key was just made here: keys are required from the next request on."""
        self._no_key_yet = False

    async def authenticate(self, token: str) -> Principal:
        token_hash = hash_key(token)
        now = time.time()
        seen = self._seen.get(token_hash)
        if seen is not None and seen[1] > now:
            principal = seen[0]
        elif token.startswith(KEY_START):
            principal = await self._key(token, token_hash)
        elif token.count(".") == 2:
            principal = await self._jwt(token)
        else:
            raise AuthError(401, "not an Orchesity API key (they start with osk_) nor a session JWT",
                            "invalid_api_key")
        if principal.expires_at is not None and principal.expires_at <= now:
            self._seen.pop(token_hash, None)
            raise AuthError(401, "this key has expired", "expired_api_key")
        if seen is None or seen[1] <= now:
            until = now + self._ttl
            if principal.expires_at is not None:
                until = min(until, principal.expires_at)
            if len(self._seen) > 10_000:  # bound the memory a flood of tokens can take
                self._seen.clear()
            self._seen[token_hash] = (principal, until)
        return principal

    async def _key(self, key: str, key_hash: str) -> Principal:
        prefix = _prefix_of(key)
        if prefix is None:
            raise AuthError(401, "malformed API key", "invalid_api_key")
        cached = await self._cached_verdict(key_hash)
        if cached is not None:
            return cached
        from sqlmodel import select

        from core.models import ApiKey

        async with self.db.session() as session:
            row = (await session.exec(select(ApiKey).where(ApiKey.prefix == prefix))).first()
        if row is None or not hmac.compare_digest(row.key_hash, key_hash):
            raise AuthError(401, "unknown API key", "invalid_api_key")
        if row.revoked_at is not None:
            raise AuthError(401, "this key was revoked", "revoked_api_key")
        principal = _principal(row)
        await self._remember(key_hash, principal)
        return principal

    async def _cached_verdict(self, key_hash: str) -> Principal | None:
        if self.kv is None:
            return None
        try:
            raw = await self.kv.execute("GET", VERDICT_PREFIX + key_hash)
        except KVUnavailable:  # the KV logs the outage; Postgres answers meanwhile
            return None
        except KVError as exc:
            log.warning("cannot read a key verdict from Redis: %s", exc)
            return None
        return Principal.from_json(raw) if raw else None

    async def _remember(self, key_hash: str, principal: Principal) -> None:
        if self.kv is None:
            return
        ttl = self._redis_ttl
        if principal.expires_at is not None:
            ttl = min(ttl, max(1, int(principal.expires_at - time.time())))
        try:
            await self.kv.execute("SET", VERDICT_PREFIX + key_hash, principal.to_json(), "EX", ttl)
        except KVUnavailable:
            pass
        except KVError as exc:
            log.warning("cannot keep a key verdict in Redis: %s", exc)

    async def _jwt(self, token: str) -> Principal:
        settings = self.settings
        if not settings.SUPABASE_URL:
            raise AuthError(401, "session JWTs are not accepted here (SUPABASE_URL is not set)", "invalid_api_key")
        from supabase_auth.errors import AuthError as SupabaseAuthError

        try:
            claims = (await self._auth_client().get_claims(jwt=token))["claims"]
        except SupabaseAuthError as exc:
            raise AuthError(401, f"invalid session token: {exc.message}", "invalid_session") from None
        except ValueError:
            raise AuthError(401, "invalid session token: not a JWT", "invalid_session") from None
        issuer = settings.SUPABASE_URL.rstrip("/") + "/auth/v1"
        if claims.get("iss") != issuer:
            raise AuthError(401, "invalid session token: issued by another project", "invalid_session")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if settings.SUPABASE_JWT_AUDIENCE not in audiences:
            raise AuthError(401, "invalid session token: wrong audience", "invalid_session")
        role = claims.get("role")
        scopes = settings.supabase_role_scopes.get(role) if isinstance(role, str) else None
        if not scopes:
            raise AuthError(403, f"the role {role!r} of this session has no scopes here "
                                 "(SUPABASE_JWT_ROLE_SCOPES)", "insufficient_scope")
        subject = str(claims.get("sub") or "")
        exp = claims.get("exp")
        return Principal(id=f"user:{subject}", kind="user", name=str(claims.get("email") or subject),
                         scopes=frozenset(scopes), tenant=f"user:{subject}",
                         expires_at=float(exp) if isinstance(exp, (int, float)) else None)

    def _auth_client(self) -> Any:
        if self._supabase is None:
            from supabase_auth import AsyncGoTrueClient

            headers = {}
            if self.settings.SUPABASE_ANON_KEY is not None:
                headers["apikey"] = self.settings.SUPABASE_ANON_KEY.get_secret_value()
            self._supabase = AsyncGoTrueClient(url=self.settings.SUPABASE_URL.rstrip("/") + "/auth/v1",
                                               headers=headers, auto_refresh_token=False,
                                               persist_session=False)
        return self._supabase
