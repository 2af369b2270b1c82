"""The long-lived handles one process shares: settings, the database and the KV.

Opened once per process (a uvicorn worker, or a warm Lambda container) and passed
explicitly to the core functions that need them.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.db import Database
from core.kv import KV, open_kv
from core.settings import Settings


@dataclass
class Services:
    settings: Settings
    db: Database
    kv: KV | None  # None when Redis is turned off (REDIS_ENABLED=false)

    @classmethod
    async def open(cls, settings: Settings) -> "Services":
        db = Database.from_settings(settings)
        try:
            kv = open_kv(settings)
        except BaseException:
            await db.close()  # don't leave an embedded Postgres handle behind
            raise
        return cls(settings=settings, db=db, kv=kv)

    async def close(self) -> None:
        if self.kv is not None:
            await self.kv.close()
        await self.db.close()
