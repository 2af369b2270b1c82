"""A caller's JSON Schema (a tool's parameters, a structured output's schema) checked
against the JSON Schema meta-schema before the request goes anywhere.

A provider refuses a schema that is not one with a 400, after the round trip; the
simulated provider, and the translations to Anthropic's and Gemini's shapes, were handed
it as it came, and `"properties": 5` was a 500. The check is jsonschema-rs's (about a
microsecond for a small schema, so it stays on the hot path). A `$schema` naming no
known draft is checked as 2020-12: jsonschema-rs would otherwise fetch that URL, and a
caller's URL is never fetched.
"""

from __future__ import annotations

from typing import Any

_DRAFTS = frozenset(
    f"{base}{end}"
    for base in ("http://json-schema.org/draft-04/schema", "http://json-schema.org/draft-06/schema",
                 "http://json-schema.org/draft-07/schema", "https://json-schema.org/draft/2019-09/schema",
                 "https://json-schema.org/draft/2020-12/schema")
    for end in ("", "#"))


def schema_problem(schema: Any) -> str | None:
    """What makes `schema` no JSON Schema object, or None when it is one."""
    import jsonschema_rs

    if not isinstance(schema, dict):
        return f"must be a JSON Schema object, not {type(schema).__name__}"
    draft = schema.get("$schema", "")
    if not isinstance(draft, str) or (draft and draft not in _DRAFTS):
        schema = {key: value for key, value in schema.items() if key != "$schema"}
    try:
        jsonschema_rs.meta.validate(schema)
    except jsonschema_rs.ValidationError as exc:
        where = "/".join(str(part) for part in exc.instance_path) or "its root"
        return f"is not a valid JSON Schema at {where}: {exc.message[:200]}"
    except UnicodeEncodeError:  # JSON's "\ud800" came in, which is no text jsonschema-rs can take
        return "holds a lone surrogate (a \\ud800-\\udfff escape alone), which is not text"
    return None
