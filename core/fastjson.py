"""JSON on the hot path: orjson, with the standard library for what orjson refuses.

orjson encodes and decodes several times faster than `json`; under load the standard
library's encoder was ~6% of a gateway request's CPU (py-spy, bench/overhead). `dumps`
gives what `json.dumps(obj, separators=(",", ":"), ensure_ascii=False)` gives, except
that NaN and infinities become null (which keeps the output valid JSON). What orjson
cannot encode falls back to `json` with ASCII escapes: integers beyond 64 bits (a
caller's pass-through parameters may hold one), and strings with a lone surrogate
(JSON may carry "\ud800"; UTF-8 cannot), which go out escaped as they came in.

`without_nul` is for JSON going into Postgres, whose text and jsonb cannot hold NUL
(JSON may: a provider's reply, a tool's result, a caller's input).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

loads = orjson.loads
# a \u0000 escape, but not an escaped backslash followed by "u0000"
_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":")).encode()


def without_nul(text: str) -> str:
    """JSON text with its NUL characters (its \\u0000 escapes) removed."""
    return _NUL.sub(r"\1", text) if "\\u0000" in text else text
