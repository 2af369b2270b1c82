"""Python tools for the tests (ORCHESITY_TOOL_MODULES allows `tests.tool_functions` there)."""

from __future__ import annotations

import asyncio


async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


def big(size: int) -> str:
    return "x" * size


def broken() -> None:
    raise RuntimeError("the tool fell over")


def shout(text: str) -> dict[str, str]:
    return {"text": text.upper()}
