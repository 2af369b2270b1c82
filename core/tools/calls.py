"""The tool-call log: every invocation, queued in Redis and kept in `tool_calls`.

A journal (core/journal.py) like the request log. A record says which tool
(`name@version`) was called by whom, a SHA-256 of its arguments (never the arguments:
they may hold personal data), how it ended, how long it took and how many bytes it
answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.journal import Journal
from core.kv import KEY_PREFIX

STREAM = f"{KEY_PREFIX}log:tool-calls"


@dataclass
class CallEntry:
    call_id: str
    created_at: float
    tool: str
    source: str
    arguments_sha256: str
    status: str
    latency_ms: float
    caller: str | None = None
    error_class: str | None = None
    error: str | None = None
    response_bytes: int = 0
    truncated: bool = False
    idempotency_key: str | None = None


def _table() -> Any:
    from core.models import ToolCallLog

    return ToolCallLog.__table__


JOURNAL = Journal("tool calls", STREAM, CallEntry, _table)
