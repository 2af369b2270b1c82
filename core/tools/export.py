"""One definition, exported: OpenAI's `tools` array and LangChain StructuredTools.

OpenAI: each tool as `{"type": "function", "function": {name, description, parameters}}`.
With `strict`, a tool whose schema meets OpenAI's strict-mode rules (every object closed
with `additionalProperties: false`, every property required, only the keywords strict
mode supports) is marked `strict: true`; one that does not is exported as it is, not
silently changed, and named in `not_strict` with the reasons.

LangChain: a StructuredTool per tool whose calls go through `invoke.invoke`, so the
arguments are checked against the schema (LangChain does not check a dict schema) and
the call is logged like any other. langchain_core is imported here, on first use only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from core.tools.registry import Entry

# Keywords OpenAI's strict mode accepts (Structured Outputs' supported subset).
_STRICT_KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf", "$ref",
    "$defs", "definitions", "description", "title", "pattern", "format", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minItems", "maxItems",
})


def openai_tool(entry: Entry, strict: bool = False) -> dict[str, Any]:
    tool = entry.tool
    function: dict[str, Any] = {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
    if strict:
        function["strict"] = True
    return {"type": "function", "function": function}


def strict_problems(schema: Any, path: str = "parameters") -> Iterator[str]:
    """Why `schema` cannot be used in OpenAI's strict mode (nothing: it can)."""
    if not isinstance(schema, dict):
        return
    for key in schema:
        if key not in _STRICT_KEYWORDS:
            yield f"{path}: {key!r} is not supported in strict mode"
    kinds = schema.get("type")
    if kinds == "object" or (isinstance(kinds, list) and "object" in kinds):
        if schema.get("additionalProperties") is not False:
            yield f"{path}: an object needs additionalProperties: false"
        properties = schema.get("properties", {})
        missing = sorted(set(properties) - set(schema.get("required", [])))
        if missing:
            yield f"{path}: every property must be required (not: {', '.join(missing)})"
        for name, sub in properties.items():
            yield from strict_problems(sub, f"{path}.properties.{name}")
    if "items" in schema:
        yield from strict_problems(schema["items"], f"{path}.items")
    for index, sub in enumerate(schema.get("anyOf", [])):
        yield from strict_problems(sub, f"{path}.anyOf[{index}]")
    for name, sub in (schema.get("$defs") or schema.get("definitions") or {}).items():
        yield from strict_problems(sub, f"{path}.$defs.{name}")


def openai_tools(entries: Sequence[Entry], *, strict: bool = False) -> dict[str, Any]:
    """{"tools": [...], "not_strict": {ref: [reasons]}} of the available entries."""
    tools, not_strict = [], {}
    for entry in entries:
        if entry.unavailable is not None:
            continue
        problems = list(strict_problems(entry.tool.parameters)) if strict else []
        if problems:
            not_strict[entry.tool.ref] = problems
        tools.append(openai_tool(entry, strict=strict and not problems))
    return {"tools": tools, "not_strict": not_strict} if strict else {"tools": tools}


Call = Callable[[Entry, dict[str, Any]], Awaitable[Any]]


def langchain_tools(entries: Sequence[Entry], call: Call) -> list[Any]:
    """StructuredTools whose coroutine is `call(entry, arguments)` (e.g. one that runs
    invoke.invoke and raises on an error), for LangChain agents."""
    from langchain_core.tools import StructuredTool

    def make(entry: Entry) -> Any:
        async def run(**arguments: Any) -> Any:
            return await call(entry, arguments)

        return StructuredTool(name=entry.tool.name, description=entry.tool.description,
                              args_schema=entry.tool.parameters, coroutine=run)

    return [make(entry) for entry in entries if entry.unavailable is None]
