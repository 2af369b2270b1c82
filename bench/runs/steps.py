"""The steps the runs benchmark runs: nothing, so what is timed is the engine around them."""

from __future__ import annotations

import asyncio


async def noop() -> None:
    return None


async def pause(seconds: float) -> None:
    await asyncio.sleep(seconds)
