"""Every function in one app: what `orchesity serve` runs, and small deployments use."""

from __future__ import annotations

from fastapi import FastAPI

from core.services import Services
from core.settings import Settings
from functions import cron, dashboard, db, dwa, health, keys, mcp, messages, orchestrate, responses, runs, tools
from functions.http import create_app, entry_points

ROUTERS = (health.router, orchestrate.router, messages.router, responses.router, dwa.router, db.router, cron.router,
           keys.router, tools.router, runs.router, mcp.router, dashboard.router)


def build_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    return create_app(*ROUTERS, title="Orchesity", settings=settings, services=services,
                      routes_llm=True, drains_log=True, loads_tools=True, advances_runs=True)


__getattr__ = entry_points(build_app)
