"""Reading a tools file (tools.json): every problem at once, each naming the tool and the field.

The file is `{"tools": [ {...}, ... ]}` (or just the list) of definitions in the format of
model.py. A definition is refused with a `ToolsFileError` listing every problem found:
a field the model refuses (an invalid JSON Schema, a template naming an unknown
parameter, a URL with a placeholder in its host...), a duplicate `name@version`, a
python entry point outside the allowed modules or one that does not import. A tool whose
`required_config` (or secrets) is not set is not an error: it is listed as unavailable,
with the reason, and refused when called.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.settings import Settings, SettingsError, read_json_file
from core.tools.model import Tool


class ToolsFileError(SettingsError):
    """A tools file Orchesity cannot use; the message lists every problem."""


@dataclass(frozen=True)
class Loaded:
    """A tool as the loader found it: usable now, or why not."""

    tool: Tool
    unavailable: str | None = None  # why it cannot be called (a setting it needs is not set)


def read_tools_file(path: Path, settings: Settings, environ: Mapping[str, str] | None = None) -> list[Loaded]:
    """The tools of `path`, each checked; raises ToolsFileError listing every problem."""
    where = f"tools file {path}"
    document = read_json_file(path, where, ToolsFileError)
    entries = document.get("tools") if isinstance(document, dict) else document
    if isinstance(document, dict) and set(document) - {"tools", "$schema"}:
        unknown = ", ".join(sorted(set(document) - {"tools", "$schema"}))
        raise ToolsFileError(f"{where}: unknown top-level key(s) {unknown}; expected 'tools'")
    if not isinstance(entries, list):
        raise ToolsFileError(f"{where}: expected a list of tools under 'tools'")
    loaded, problems = check_definitions(entries, settings, environ)
    if problems:
        raise ToolsFileError(f"{where}:\n  " + "\n  ".join(problems))
    return loaded


def check_definitions(entries: Sequence[Any], settings: Settings,
                      environ: Mapping[str, str] | None = None) -> tuple[list[Loaded], list[str]]:
    """(the usable definitions, every problem as "tools[i] ('name'): field: message")."""
    env = os.environ if environ is None else environ
    loaded: list[Loaded] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        label = f"tools[{index}] ({name!r})" if isinstance(name, str) else f"tools[{index}]"
        tool, errors = parse_definition(entry, settings)
        problems.extend(f"{label}: {error}" for error in errors)
        if tool is None:
            continue
        if tool.ref in seen:
            problems.append(f"{label}: name: {tool.ref} is also tools[{seen[tool.ref]}] (name@version is unique)")
            continue
        seen[tool.ref] = index
        loaded.append(Loaded(tool, unavailable_reason(tool, settings, env)))
    return loaded, problems


def parse_definition(entry: Any, settings: Settings) -> tuple[Tool | None, list[str]]:
    """A definition as a Tool, or every problem with it as "field: message"."""
    if not isinstance(entry, dict):
        return None, [f"expected an object, got {type(entry).__name__}"]
    try:
        tool = Tool.model_validate(entry)
    except ValidationError as exc:
        return None, [_describe(error) for error in exc.errors(include_url=False)]
    errors = _entry_point_problems(tool, settings)
    return (None if errors else tool), errors


def _describe(error: Mapping[str, Any]) -> str:
    loc = ".".join(str(part) for part in error.get("loc", ()))
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        message = "unknown field"
    elif error.get("type") == "missing":
        message = "required"
    if not loc and ": " in message:  # a model-level rule names its field first
        return message
    return f"{loc}: {message}" if loc else message


def _entry_point_problems(tool: Tool, settings: Settings) -> list[str]:
    if tool.python is None:
        return []
    module_name, _, function_name = tool.python.entry.partition(":")
    allowed = settings.tool_module_prefixes
    if not any(module_name == prefix or module_name.startswith(prefix + ".") for prefix in allowed):
        return [f"python.entry: {module_name} is not under an allowed module prefix "
                f"({', '.join(allowed)}; ORCHESITY_TOOL_MODULES)"]
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the definition's problem
        return [f"python.entry: {module_name} does not import ({type(exc).__name__}: {exc})"]
    if not callable(getattr(module, function_name, None)):
        return [f"python.entry: {module_name} has no function {function_name}"]
    return []


def unavailable_reason(tool: Tool, settings: Settings, environ: Mapping[str, str]) -> str | None:
    """Why the tool cannot be called here (a setting it needs is not set), or None."""
    needed = list(tool.required_config) + list(getattr(getattr(tool, tool.kind), "secrets", ()))
    missing = [name for name in dict.fromkeys(needed) if setting_value(name, settings, environ) is None]
    return f"not configured: set {', '.join(missing)}" if missing else None


def setting_value(name: str, settings: Settings, environ: Mapping[str, str]) -> str | None:
    """A setting by name: Orchesity's own, else the environment (empty means unset)."""
    value: Any = getattr(settings, name, None) if name in type(settings).model_fields else None
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    if not value:
        value = environ.get(name)
    return str(value) if value else None
