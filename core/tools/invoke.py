"""One tool call: arguments checked, the kind dispatched within the tool's limits, the call logged.

    outcome = await invoke(entry, {"text": "…"}, ctx, kv=kv, db=db)
    outcome.status, outcome.result, outcome.duration_ms, outcome.bytes

Before anything runs, the arguments are checked against the tool's JSON Schema (every
error, each with its path: ArgumentsInvalid) and against `max_argument_bytes`. A tool
that is not configured raises ToolUnavailable. Everything after that is an Outcome, not
an exception: a timeout, the tool's own failure, a result that does not match `returns`.
A result larger than `max_response_bytes` is cut, and says so (`truncated`, and a marker
at the end of the text). Every call, whatever its end, is one record of the tool-call
log (core/tools/calls.py): one XADD to Redis, or a row in Postgres without it, written
after the answer is handed back (on Lambda, whose container freezes once it answers,
before).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.tools.calls import JOURNAL, CallEntry
from core.tools.kinds import CALLS, CallContext, ToolFailed

if TYPE_CHECKING:
    from core.db import Database
    from core.kv import KV
    from core.tools.registry import Entry

log = logging.getLogger("orchesity.tools")

_ON_LAMBDA = "AWS_LAMBDA_FUNCTION_NAME" in os.environ
_PENDING: set[asyncio.Future[None]] = set()  # records being written: held so none is collected


class ArgumentsInvalid(ValueError):
    """The arguments do not fit the tool's schema; `errors` has each problem and its path."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['path'] or '(arguments)'}: {e['message']}" for e in errors))
        self.errors = errors


class ToolUnavailable(RuntimeError):
    """The tool needs a setting that is not set; the message says which."""


@dataclass
class Outcome:
    status: str                      # ok | error
    result: Any = None
    duration_ms: float = 0.0
    bytes: int = 0                   # of the result as JSON
    truncated: bool = False
    error: dict[str, str] | None = None  # {"type", "message"}

    def to_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"status": self.status, "result": self.result,
                                  "duration_ms": round(self.duration_ms, 3), "bytes": self.bytes,
                                  "truncated": self.truncated}
        if self.error is not None:
            answer["error"] = self.error
        return answer


def _path(error: Any) -> str:
    """A validation error's place in the instance: `items[0].name`."""
    return "".join(f"[{part}]" if isinstance(part, int) else (f".{part}" if i else str(part))
                   for i, part in enumerate(error.instance_path))


def check_arguments(entry: Entry, arguments: Any) -> None:
    """ArgumentsInvalid unless `arguments` is an object that fits the tool's schema and size."""
    tool = entry.tool
    if not isinstance(arguments, Mapping):
        raise ArgumentsInvalid([{"path": "", "message": "the arguments are a JSON object"}])
    size = len(json.dumps(arguments, separators=(",", ":")).encode())
    if size > tool.max_argument_bytes:
        raise ArgumentsInvalid([{"path": "", "message": f"the arguments are {size} bytes; {tool.ref} takes at "
                                                        f"most {tool.max_argument_bytes}"}])
    try:
        if tool.arguments_validator.is_valid(arguments):
            return
        errors = sorted(tool.arguments_validator.iter_errors(arguments), key=lambda e: list(map(str, e.instance_path)))
    except UnicodeEncodeError:  # JSON's "\ud800" came in: no text jsonschema-rs (or a tool) can take
        raise ArgumentsInvalid([{"path": "", "message": "the arguments hold a lone surrogate (a \\ud800-\\udfff "
                                                        "escape alone), which is not text"}]) from None
    raise ArgumentsInvalid([{"path": _path(e), "message": e.message} for e in errors])


def _fit(result: Any, truncated: bool, limit: int) -> tuple[Any, int, bool]:
    """(the result, its size as JSON, whether it was cut): over `limit` bytes, it is cut
    to a string of that many bytes with a marker saying how much was left out."""
    encoded = json.dumps(result, ensure_ascii=False, default=str).encode()
    if len(encoded) <= limit:
        if truncated and isinstance(result, str):  # cut upstream (an http body at its cap)
            result += f"\n…[truncated at {limit} bytes]"
        return result, len(encoded), truncated
    kept = encoded[:limit].decode("utf-8", "ignore")
    return f"{kept}\n…[truncated: {len(encoded) - limit} more bytes]", len(encoded), True


async def invoke(entry: Entry, arguments: Mapping[str, Any], ctx: CallContext, *,
                 kv: KV | None, db: Database | None) -> Outcome:
    """Call `entry` (arguments checked first: ArgumentsInvalid, ToolUnavailable)."""
    tool = entry.tool
    check_arguments(entry, arguments)
    if entry.unavailable is not None:
        raise ToolUnavailable(f"{tool.ref} is {entry.unavailable}")
    started = time.perf_counter()
    ctx.timeout = tool.timeout
    outcome = Outcome("error")
    try:
        async with asyncio.timeout(tool.timeout):
            result, truncated = await CALLS[tool.kind](tool, arguments, ctx)
        result, size, truncated = _fit(result, truncated, tool.max_response_bytes)
        outcome = Outcome("ok", result, bytes=size, truncated=truncated)
        if tool.result_validator is not None and not truncated:
            problem = next(iter(tool.result_validator.iter_errors(result)), None)
            if problem is not None:
                outcome = Outcome("error", error={"type": "bad_result", "message": (
                    f"the result does not match the tool's returns schema at {_path(problem) or 'the root'}: "
                    f"{problem.message}")})
    except TimeoutError:
        outcome = Outcome("error", error={"type": "timeout", "message": f"{tool.ref} gave no result within "
                                                                          f"{tool.timeout:g}s"})
    except ToolFailed as exc:
        outcome = Outcome("error", error={"type": exc.kind, "message": exc.message[:2000]})
    except Exception as exc:  # noqa: BLE001 - a bug of ours: reported by class, logged in full
        log.exception("tool %s failed unexpectedly", tool.ref)
        outcome = Outcome("error", error={"type": "internal_error", "message": type(exc).__name__})
    outcome.duration_ms = (time.perf_counter() - started) * 1000.0
    record = _record(entry, arguments, ctx, outcome, kv, db)
    if _ON_LAMBDA:  # a frozen container would hold the record back: write it before answering
        await record
    else:  # the caller need not wait for its log line; it is written a moment later
        task = asyncio.ensure_future(record)
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)
    return outcome


async def _record(entry: Entry, arguments: Mapping[str, Any], ctx: CallContext, outcome: Outcome,
                  kv: KV | None, db: Database | None) -> None:
    """The call's log record; losing it is logged, never the caller's problem."""
    digest = hashlib.sha256(json.dumps(arguments, sort_keys=True, separators=(",", ":"),
                                       default=str).encode()).hexdigest()
    error = outcome.error or {}
    record = CallEntry(call_id=uuid.uuid4().hex, created_at=time.time(), tool=entry.tool.ref, source=entry.source,
                       arguments_sha256=digest, status=outcome.status, latency_ms=round(outcome.duration_ms, 3),
                       caller=ctx.caller, error_class=error.get("type"), error=error.get("message", "")[:500] or None,
                       response_bytes=outcome.bytes, truncated=outcome.truncated,
                       idempotency_key=ctx.idempotency_key)
    from core.kv import KVError

    try:
        if kv is not None:
            try:
                await kv.pipeline([JOURNAL.append_command(record)])
                return
            except KVError:
                pass  # Redis down: straight to Postgres
        if db is not None:
            await JOURNAL.write(db, [record])
    except Exception as exc:  # noqa: BLE001
        log.warning("tool-call record lost for %s: %s", entry.tool.ref, type(exc).__name__)
