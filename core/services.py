"""The long-lived handles one process shares: settings, the database and the KV.

Opened once per process (a uvicorn worker, or a warm Lambda container) and passed
explicitly to the core functions that need them. The orchestrator (providers, DWA
router), the key verifier, the tool registry, the named pipelines and the run watcher
are built on first use, so a function that never routes (or never sees a tool) never
loads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.kv import KV, open_kv
from core.settings import Settings

if TYPE_CHECKING:
    import httpx2

    from core.db import Database

    from core.auth import Authenticator
    from core.orchestrator import Orchestrator
    from core.progress import Watcher
    from core.runs.pipeline import Pipeline
    from core.tools.registry import ToolRegistry


@dataclass
class Services:
    settings: Settings
    db: Database
    kv: KV | None  # None when Redis is turned off (REDIS_ENABLED=false)
    # Carries every provider call when set (tests: httpx2's stock transport, which
    # pytest-httpx answers); owned by whoever set it. None: each deployment builds its own.
    provider_transport: "httpx2.AsyncBaseTransport | None" = None
    _orchestrator: "Orchestrator | None" = field(default=None, repr=False)
    _authenticator: "Authenticator | None" = field(default=None, repr=False)
    _tools: "ToolRegistry | None" = field(default=None, repr=False)
    _watcher: "Watcher | None" = field(default=None, repr=False)
    _pipelines: "dict[str, Pipeline] | None" = field(default=None, repr=False)

    @classmethod
    async def open(cls, settings: Settings, *,
                   provider_transport: "httpx2.AsyncBaseTransport | None" = None) -> "Services":
        from core.db import Database

        db = Database.from_settings(settings)
        try:
            kv = open_kv(settings)
        except BaseException:
            await db.close()
            raise
        return cls(settings=settings, db=db, kv=kv, provider_transport=provider_transport)

    @property
    def orchestrator(self) -> "Orchestrator":
        if self._orchestrator is None:
            from core.orchestrator import build_orchestrator

            self._orchestrator = build_orchestrator(self.settings, self.db, self.kv,
                                                    provider_transport=self.provider_transport)
        return self._orchestrator

    @property
    def authenticator(self) -> "Authenticator":
        if self._authenticator is None:
            from core.auth import Authenticator

            self._authenticator = Authenticator(self.settings, self.db, self.kv)
        return self._authenticator

    @property
    def tools(self) -> "ToolRegistry":
        """The tool registry; built on first use (a tools file it cannot use raises here)."""
        if self._tools is None:
            from core.tools.registry import ToolRegistry

            self._tools = ToolRegistry.from_settings(self.settings, self.db)
        return self._tools

    @property
    def pipelines(self) -> "dict[str, Pipeline]":
        """The named pipelines (read on first use: a pipelines file it cannot use raises here)."""
        if self._pipelines is None:
            from core.runs.pipelines_file import named_pipelines

            self._pipelines = named_pipelines(self.settings)
        return self._pipelines

    @property
    def watcher(self) -> "Watcher | None":
        """What wakes this process's run readers when a run's Redis stream grows (None
        without Redis: readers poll Postgres)."""
        if self._watcher is None and self.kv is not None:
            from core.progress import Watcher

            self._watcher = Watcher(self.kv)
        return self._watcher

    async def close(self) -> None:
        if self._watcher is not None:
            await self._watcher.close()
        if self._orchestrator is not None:
            await self._orchestrator.registry.aclose()
        if self.kv is not None:
            await self.kv.close()
        await self.db.close()
