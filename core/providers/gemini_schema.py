"""A tool's JSON Schema as the `Schema` Gemini's function declarations take.

Gemini's `Schema` is a subset of OpenAPI 3.0's schema object: upper-case `type`s,
`nullable` instead of a "null" type, no references, no `additionalProperties`, and
`enum` of strings only. A JSON Schema keyword is, here, one of three things:

- kept (or renamed): type, properties, required, items, anyOf (and oneOf, which Gemini
  would read as anyOf anyway), enum and const of strings, description, title, format,
  nullable, pattern, minimum, maximum, min/max Length, Items and Properties, default,
  example, propertyOrdering; a "null" branch of anyOf or of a type list becomes
  `nullable`; an integer's exclusiveMinimum/exclusiveMaximum becomes minimum/maximum
  one step in;
- inlined or stripped, where that loses nothing Gemini would enforce: a local `$ref`
  to `$defs` / `definitions` is replaced by its target, a one-element `allOf` is merged
  into its schema, `additionalProperties: true|false` and `uniqueItems: false` are
  dropped (Gemini only ever fills declared properties), and so are pure annotations
  ($schema, $id, $comment, examples, readOnly, writeOnly, deprecated);
- refused, with an `Untranslatable` naming the place and the keyword: every constraint
  Gemini could not keep (not, if/then/else, patternProperties, a schema-valued
  additionalProperties, prefixItems, uniqueItems, multipleOf, a number's exclusive
  bounds, ...), a recursive or non-local `$ref`, several non-null types, non-string
  enum values, and an object that declares no properties (Gemini refuses those).

Refusing is better than sending a looser schema silently: the caller learns that this
deployment cannot hold the tool to its contract, and can route elsewhere.
"""

from __future__ import annotations

from typing import Any

_TYPES = {"string", "number", "integer", "boolean", "array", "object", "null"}
_KEPT = frozenset({"description", "title", "format", "nullable", "pattern", "minimum", "maximum", "minLength",
                   "maxLength", "minItems", "maxItems", "minProperties", "maxProperties", "required",
                   "default", "example", "propertyOrdering"})
_ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "$defs", "definitions", "examples", "readOnly",
                          "writeOnly", "deprecated"})


class Untranslatable(ValueError):
    """The request holds something Gemini's API has no way to say; the message says what."""


def function_parameters(schema: Any, where: str) -> dict[str, Any] | None:
    """A function's `parameters` for Gemini; None when the function takes none.

    `where` names the schema in messages ("tools[0] (lookup).parameters").
    """
    if not isinstance(schema, dict):
        raise Untranslatable(f"{where}: expected a JSON Schema object")
    if schema.get("type", "object") != "object":
        raise Untranslatable(f"{where}: a function's parameters must be an object schema")
    if not schema.get("properties") and not set(schema) - _ANNOTATIONS - {
            "type", "properties", "required", "additionalProperties", "title", "description"}:
        return None  # no parameters: Gemini refuses an object schema without properties
    defs: dict[str, Any] = {}
    for key in ("definitions", "$defs"):
        if isinstance(schema.get(key), dict):
            defs.update(schema[key])
    return _convert(schema, where, defs, ())


def _convert(node: Any, where: str, defs: dict[str, Any], refs: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(node, dict) or not node:
        raise Untranslatable(f"{where}: a schema that allows any value has no Gemini equivalent")
    if "$ref" in node:
        ref = node["$ref"]
        name = _local_name(ref)
        if name is None or name not in defs:
            raise Untranslatable(f"{where}: $ref {ref!r} is not a reference to this schema's $defs")
        if name in refs:
            raise Untranslatable(f"{where}: $ref {ref!r} is recursive; Gemini takes no references and a "
                                 "recursive one cannot be inlined")
        target = defs[name]
        if not isinstance(target, dict):
            raise Untranslatable(f"{where}: $ref {ref!r} does not point to a schema")
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        return _convert({**target, **siblings}, where, defs, (*refs, name))
    if "allOf" in node:
        parts = node["allOf"]
        if not isinstance(parts, list) or len(parts) != 1 or not isinstance(parts[0], dict):
            raise Untranslatable(f"{where}: allOf with several schemas has no Gemini equivalent")
        rest = {key: value for key, value in node.items() if key != "allOf"}
        return _convert({**parts[0], **rest}, where, defs, refs)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _ANNOTATIONS:
            continue
        if key == "type":
            _type(out, value, where)
        elif key == "properties":
            if not isinstance(value, dict):
                raise Untranslatable(f"{where}.properties: expected an object of schemas")
            out["properties"] = {name: _convert(sub, f"{where}.properties.{name}", defs, refs)
                                 for name, sub in value.items()}
        elif key == "items":
            if not isinstance(value, dict):
                raise Untranslatable(f"{where}.items: only a single schema for every item has a Gemini equivalent")
            out["items"] = _convert(value, f"{where}.items", defs, refs)
        elif key in ("anyOf", "oneOf"):
            if "anyOf" in node and "oneOf" in node:
                raise Untranslatable(f"{where}: anyOf and oneOf together have no Gemini equivalent")
            _any_of(out, value, f"{where}.{key}", defs, refs)
        elif key in ("enum", "const"):
            values = value if key == "enum" else [value]
            if not isinstance(values, list):
                raise Untranslatable(f"{where}.enum: expected a list")
            if None in values:
                out["nullable"] = True
                values = [v for v in values if v is not None]
            if not all(isinstance(v, str) for v in values):
                raise Untranslatable(f"{where}.{key}: Gemini takes string values only")
            out["enum"] = values
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            if node.get("type") != "integer" or not isinstance(value, int) or isinstance(value, bool):
                raise Untranslatable(f"{where}: {key} has no Gemini equivalent except on an integer")
            if key == "exclusiveMinimum":
                out["minimum"] = value + 1
            else:
                out["maximum"] = value - 1
        elif key == "additionalProperties" and isinstance(value, bool):
            continue
        elif key == "uniqueItems" and value is False:
            continue
        elif key in _KEPT:
            out[key] = value
        else:
            raise Untranslatable(f"{where}: {key!r} has no Gemini equivalent")
    if "enum" in out and "type" not in out:
        out["type"] = "STRING"
    if out.get("type") == "OBJECT" and not out.get("properties"):
        raise Untranslatable(f"{where}: an object without declared properties (a free-form map) has no "
                             "Gemini equivalent")
    if "type" not in out and "anyOf" not in out:
        raise Untranslatable(f"{where}: a schema without a type has no Gemini equivalent")
    return out


def _type(out: dict[str, Any], value: Any, where: str) -> None:
    types = value if isinstance(value, list) else [value]
    if not types or not all(isinstance(t, str) and t in _TYPES for t in types):
        raise Untranslatable(f"{where}.type: {value!r} is not a JSON Schema type")
    concrete = [t for t in types if t != "null"]
    if len(concrete) > 1:
        raise Untranslatable(f"{where}.type: several types {concrete} have no Gemini equivalent; use anyOf")
    if len(concrete) < len(types):
        out["nullable"] = True
    out["type"] = (concrete[0] if concrete else "null").upper()


def _any_of(out: dict[str, Any], value: Any, where: str, defs: dict[str, Any], refs: tuple[str, ...]) -> None:
    if not isinstance(value, list) or not value:
        raise Untranslatable(f"{where}: expected a non-empty list of schemas")
    branches = []
    for index, branch in enumerate(value):
        if isinstance(branch, dict) and branch.get("type") == "null" and len(branch) == 1:
            out["nullable"] = True
        else:
            branches.append(_convert(branch, f"{where}[{index}]", defs, refs))
    if len(branches) == 1:  # Optional[X]: X, nullable
        for key, sub in branches[0].items():
            out.setdefault(key, sub)
    elif branches:
        out["anyOf"] = branches
    else:
        out["type"] = "NULL"


def _local_name(ref: Any) -> str | None:
    if not isinstance(ref, str):
        return None
    for prefix in ("#/$defs/", "#/definitions/"):
        if ref.startswith(prefix) and "/" not in ref[len(prefix):]:
            return ref[len(prefix):]
    return None
