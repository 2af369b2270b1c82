"""The one template syntax of tools and pipelines: `{{ path.to.value }}`, and nothing else.

A placeholder names a value by a dotted path into a context (a tool's arguments, a
run's `inputs` and its earlier `steps`); list items are reached by index
(`steps.search.output.items.0.title`). There are no expressions, filters, calls or
loops: a template cannot run code, and what it can reach is exactly the context it is
given. Whitespace inside the braces is free.

- `render(text, context)`: a string with every placeholder replaced by its value as text
  (strings as they are, anything else as JSON).
- `render_value(template, context)`: a JSON-like value (dict, list, string) with
  placeholders replaced; a string that is exactly one placeholder becomes the value
  itself, keeping its type (`"{{ count }}"` -> 3), so a body template can pass numbers
  and objects through.
- `references(template)`: every path a template uses, to check them before anything runs.

A path that names nothing raises TemplateError naming it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*)\s*\}\}")
_WHOLE = re.compile(r"^\s*" + PLACEHOLDER.pattern + r"\s*$")
_OPEN = re.compile(r"\{\{|\}\}")


class TemplateError(ValueError):
    """A template is malformed, or names a value its context does not have."""


def lookup(context: Mapping[str, Any], path: str) -> Any:
    """The value at dotted `path` in `context`; TemplateError when there is none."""
    value: Any = context
    walked = []
    for part in path.split("."):
        walked.append(part)
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise TemplateError(f"{{{{ {path} }}}}: nothing at {'.'.join(walked)!r}")
    return value


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _check_braces(text: str) -> None:
    """Every `{{` and `}}` belongs to a well-formed placeholder."""
    stripped = PLACEHOLDER.sub("", text)
    match = _OPEN.search(stripped)
    if match:
        raise TemplateError(f"malformed placeholder near {text[max(0, match.start() - 10):match.end() + 10]!r}: "
                            "use {{ name }} or {{ a.b.c }}")


def render(text: str, context: Mapping[str, Any], *, encode: Callable[[str], str] | None = None) -> str:
    """`text` with each placeholder replaced by its value as text (through `encode`)."""
    _check_braces(text)

    def replace(match: re.Match[str]) -> str:
        value = _as_text(lookup(context, match.group(1)))
        return encode(value) if encode else value

    return PLACEHOLDER.sub(replace, text)


def render_value(template: Any, context: Mapping[str, Any]) -> Any:
    """A JSON-like template rendered: a string that is one placeholder keeps its value's type."""
    if isinstance(template, str):
        whole = _WHOLE.match(template)
        return lookup(context, whole.group(1)) if whole else render(template, context)
    if isinstance(template, list):
        return [render_value(item, context) for item in template]
    if isinstance(template, dict):
        return {key: render_value(value, context) for key, value in template.items()}
    return template


def references(template: Any) -> Iterator[str]:
    """Every path `template` (a string or a JSON-like value) refers to; TemplateError if malformed."""
    if isinstance(template, str):
        _check_braces(template)
        yield from (match.group(1) for match in PLACEHOLDER.finditer(template))
    elif isinstance(template, list):
        for item in template:
            yield from references(item)
    elif isinstance(template, dict):
        for value in template.values():
            yield from references(value)
