"""The seed's compatibility rule: which tool may take another's output in a pipeline.

Each tool may say what it is (`tool_type`), what it can do (`capabilities`), which
tools or tool types it accepts input from (`compatibilities`; empty: any), and which it
must never be paired with (`incompatible_with`, names or types, either direction).
`check(upstream, downstream)` says why a pair is refused, or None; a pipeline builder
calls it for every step whose input is another step's output.
"""

from __future__ import annotations

from core.tools.model import Tool


def _labels(tool: Tool) -> set[str]:
    return {tool.name, tool.ref} | ({tool.tool_type} if tool.tool_type else set())


def check(upstream: Tool, downstream: Tool) -> str | None:
    """Why `downstream` may not take `upstream`'s output, or None if it may."""
    if _labels(upstream) & set(downstream.incompatible_with):
        return f"{downstream.ref} is incompatible with {upstream.ref} (its incompatible_with)"
    if _labels(downstream) & set(upstream.incompatible_with):
        return f"{upstream.ref} is incompatible with {downstream.ref} (its incompatible_with)"
    if downstream.compatibilities and not _labels(upstream) & set(downstream.compatibilities):
        accepted = ", ".join(downstream.compatibilities)
        return (f"{downstream.ref} takes input only from {accepted}; {upstream.ref} is "
                f"{upstream.tool_type or 'of no declared type'}")
    return None
