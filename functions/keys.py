"""The keys function: API keys, issued, listed and revoked by an admin.

POST   /api/keys         {"name", "scopes", "expires_in_days", "shared_cache", "limits"}: the
                         new key, shown in this answer only
GET    /api/keys         the keys (?include_revoked=true), never a key or its hash
DELETE /api/keys/{key}   revoke a key by id or prefix; other instances stop accepting it
                         within AUTH_CACHE_SECONDS

`orchesity keys create|list|revoke` does the same from a shell.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from core.auth import Principal, Scope, create_key, list_keys, parse_scopes, revoke_key
from core.db import load_driver
from core.limits import MAX_PER_MINUTE, Limits
from core.services import Services
from functions.http import ApiError, create_app, entry_points, require, services

load_driver()  # every request here reaches Postgres: load its stack at import
ADMIN = Depends(require(Scope.admin))
router = APIRouter(prefix="/api/keys", tags=["keys"])

PerMinute = Annotated[int, Field(strict=True, ge=1, le=MAX_PER_MINUTE)]
PositiveFloat = Annotated[float, Field(strict=True, gt=0)]


class LimitsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests_per_minute: PerMinute | None = None
    tokens_per_minute: PerMinute | None = None
    budget_usd_per_day: PositiveFloat | None = None
    budget_usd_per_month: PositiveFloat | None = None


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")
    scopes: list[str] = Field(min_length=1)
    expires_in_days: Annotated[float, Field(strict=True, gt=0, le=3650)] | None = None
    shared_cache: StrictBool = False
    limits: LimitsBody | None = None

    @field_validator("scopes")
    @classmethod
    def _known(cls, scopes: list[str]) -> list[str]:
        return parse_scopes(scopes)


@router.post("", status_code=201)
async def create(body: NewKey, svc: Services = Depends(services), caller: Principal = ADMIN) -> dict[str, Any]:
    expires = datetime.now(UTC) + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    limits = Limits(**body.limits.model_dump()) if body.limits else None
    key, row = await create_key(svc.db, name=body.name, scopes=body.scopes, created_by=caller.id,
                                expires_at=expires, shared_cache=body.shared_cache, limits=limits)
    svc.authenticator.key_created()
    return {**row, "key": key, "note": "the key is shown once: keep it now"}


@router.get("", dependencies=[ADMIN])
async def listed(include_revoked: StrictBool = Query(default=False),
                 svc: Services = Depends(services)) -> dict[str, Any]:
    keys = await list_keys(svc.db, include_revoked=include_revoked)
    return {"keys": keys, "count": len(keys)}


@router.delete("/{ident}", dependencies=[ADMIN])
async def revoke(ident: str, svc: Services = Depends(services)) -> dict[str, Any]:
    row = await revoke_key(svc.db, svc.kv, ident)
    if row is None:
        raise ApiError(404, f"no key has the id or prefix {ident!r}", type="not_found", param="key",
                       code="unknown_key")
    return row


__getattr__ = entry_points(lambda: create_app(router, title="Orchesity keys"))
