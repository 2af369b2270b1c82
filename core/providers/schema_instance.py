"""One plausible, valid instance of a JSON Schema: what the simulated provider answers
when a request asks for structured output (`response_format` json_schema, tool arguments).

Hand-written because nothing on PyPI fits: hypothesis-jsonschema, jsf and
faker-jsonschema draw random values (and bring Hypothesis or Faker with them),
jsonschema-default fills in defaults only, and sample-generator needs Python 3.12.
The simulated provider needs the same document for the same request, text that reads
as text, and no dependency beyond `jsonschema`, which the project already has.

Per subschema, in order of preference: `const`; `default` if it is valid; the first of
`examples` that is valid; the first of `enum`; then by type:

- object: every `required` property, optional ones only to reach `minProperties`;
  `additionalProperties: false` is honoured (no extra keys are ever invented);
- array: `prefixItems`, then `minItems` items (one when there is no minimum), never
  more than `maxItems`; items differ from each other (so `uniqueItems` holds);
- string: derived from the property name ("simulated summary"), padded or cut to
  `minLength`/`maxLength`; a `format` (date-time, date, time, uri, email, uuid, ...)
  gets a fixed plausible value; a `pattern` gets the shortest string its regex
  matches, built from the regex itself. A pattern this cannot satisfy (lookarounds,
  backreferences) falls back to the plain text, which may then not validate;
- integer / number: the lowest value `minimum`/`exclusiveMinimum`/`multipleOf` allow,
  else 1 (or the highest allowed when the maximum is below 1);
- boolean: false; null: null.

`$ref` (local pointers: pydantic's `#/$defs/X`), `allOf` (merged), `anyOf`/`oneOf`
(the first branch whose value validates against the whole subschema) and type lists
(the first non-null type) are supported. Inside a recursive `$ref` (a tree of nodes),
or past `max_depth` nested levels, arrays are left as short as allowed and `null`
branches are preferred, so recursive models end.
"""

from __future__ import annotations

import math
import re
import uuid
from typing import Any

__all__ = ["instance"]

_FORMATS = {
    "date-time": "2025-01-01T12:00:00Z",
    "date": "2025-01-01",
    "time": "12:00:00Z",
    "duration": "PT1H",
    "email": "simulated@example.com",
    "idn-email": "simulated@example.com",
    "hostname": "example.com",
    "idn-hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uri": "https://example.com/simulated",
    "url": "https://example.com/simulated",
    "iri": "https://example.com/simulated",
    "uri-reference": "/simulated",
    "iri-reference": "/simulated",
    "json-pointer": "/simulated",
    "regex": "^simulated$",
}
_SCALARS = ("string", "integer", "number", "boolean", "null")


def instance(schema: Any, *, name: str = "value", max_depth: int = 12) -> Any:
    """A value valid against `schema` (a JSON Schema, drafts 7 to 2020-12), deterministic."""
    return _Generator(schema, max_depth).value(schema, name, 0, 0)


class _Generator:
    def __init__(self, root: Any, max_depth: int) -> None:
        self.root = root
        self.max_depth = max_depth
        self._validator: Any = None
        self._expanding: list[str] = []  # the $refs being generated, outermost first

    # --- validation (for default, examples and branch choice) -------------------------

    def valid(self, value: Any, schema: Any) -> bool:
        """Whether `value` is valid against `schema` ($refs resolved against the root)."""
        if self._validator is None:
            from jsonschema.validators import Draft202012Validator, validator_for

            root = self.root if isinstance(self.root, (dict, bool)) else {}
            self._validator = validator_for(root, default=Draft202012Validator)(root)
        try:
            return bool(self._validator.evolve(schema=schema).is_valid(value))
        except Exception:  # a schema jsonschema cannot check (a bad regex...): trust it
            return True

    # --- dispatch ----------------------------------------------------------------------

    def value(self, schema: Any, name: str, depth: int, variant: int) -> Any:
        ref = schema.get("$ref") if isinstance(schema, dict) else None
        if not isinstance(ref, str):
            return self._value(schema, name, depth, variant)
        if ref in self._expanding:  # a recursive model: from here on, as short as allowed
            depth = max(depth, self.max_depth + 1)
        self._expanding.append(ref)
        try:
            return self._value(schema, name, depth, variant)
        finally:
            self._expanding.pop()

    def _value(self, schema: Any, name: str, depth: int, variant: int) -> Any:
        if depth > self.max_depth + 32:
            return None  # required recursion with no way out: no valid finite instance
        if schema is True or schema is None:
            return _text(name, variant)
        if schema is False or not isinstance(schema, dict):
            return None  # nothing is valid against `false`
        schema = self.resolve(schema, depth)
        if "const" in schema:
            return schema["const"]
        if "default" in schema and self.valid(schema["default"], schema):
            return schema["default"]
        for example in schema.get("examples") or ():
            if self.valid(example, schema):
                return example
        if schema.get("enum"):
            enum = schema["enum"]
            return enum[variant % len(enum)]
        if "allOf" in schema:
            return self.value(self.merge(schema, depth), name, depth, variant)
        for keyword in ("anyOf", "oneOf"):
            if keyword in schema:
                return self.branch(schema, keyword, name, depth, variant)
        kind = _kind(schema, depth > self.max_depth)
        if kind == "object":
            return self.object(schema, name, depth)
        if kind == "array":
            return self.array(schema, name, depth)
        if kind == "string":
            return self.string(schema, name, variant)
        if kind in ("integer", "number"):
            return _number(schema, kind == "integer", variant)
        if kind == "boolean":
            return False
        return None

    def resolve(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        """`schema` with its local `$ref` followed; sibling keywords override the target."""
        seen = 0
        while "$ref" in schema and seen < 32:
            target = _pointer(self.root, schema["$ref"])
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **siblings} if isinstance(target, dict) else siblings
            seen += 1
        return schema

    def merge(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        """`allOf` folded into one schema: properties joined, required united, bounds tightest."""
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            if not isinstance(part, dict):
                continue
            part = self.resolve(part, depth)
            if "allOf" in part:
                part = self.merge(part, depth)
            for key, value in part.items():
                if key not in merged:
                    merged[key] = value
                elif key == "properties":
                    merged[key] = {**value, **merged[key]}
                elif key == "required":
                    merged[key] = list(dict.fromkeys([*merged[key], *value]))
                elif key in ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"):
                    merged[key] = max(merged[key], value)
                elif key in ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"):
                    merged[key] = min(merged[key], value)
        return merged

    def branch(self, schema: dict[str, Any], keyword: str, name: str, depth: int, variant: int) -> Any:
        base = {k: v for k, v in schema.items() if k not in (keyword, "default", "examples")}
        branches = list(schema[keyword])
        if depth > self.max_depth:  # deep in a recursive model: end it with null if allowed
            branches.sort(key=lambda b: not (isinstance(b, dict) and b.get("type") == "null"))
        first: Any = None
        for index, option in enumerate(branches):
            if not isinstance(option, dict):
                option = {} if option is True else {"not": {}}
            merged = {**base, "allOf": [*base.get("allOf", ()), option]} if base else option
            candidate = self.value(merged, name, depth, variant)
            if self.valid(candidate, schema):
                return candidate
            if index == 0:
                first = candidate
        return first

    # --- by type -----------------------------------------------------------------------

    def object(self, schema: dict[str, Any], name: str, depth: int) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties", True)
        names = list(dict.fromkeys(schema.get("required") or ()))
        wanted = schema.get("minProperties", 0)
        for optional in properties:
            if len(names) >= wanted:
                break
            if optional not in names:
                names.append(optional)
        result: dict[str, Any] = {}
        for key in names:
            sub = properties.get(key, extra if isinstance(extra, dict) else True)
            result[key] = self.value(sub, key, depth + 1, 0)
        index = 1
        while len(result) < wanted and extra is not False:
            key = f"{_singular(name)}_{index}"
            if key not in result:
                result[key] = self.value(extra if isinstance(extra, dict) else True, key, depth + 1, 0)
            index += 1
        return result

    def array(self, schema: dict[str, Any], name: str, depth: int) -> list[Any]:
        prefix = list(schema.get("prefixItems") or ())
        items = schema.get("items", True)
        if isinstance(items, list):  # draft 7 tuple form
            prefix, items = items, schema.get("additionalItems", True)
        item_name = _singular(name)
        result = [self.value(sub, item_name, depth + 1, i) for i, sub in enumerate(prefix)]
        minimum = schema.get("minItems", 0)
        count = max(minimum, len(result) + (0 if prefix or depth > self.max_depth else 1))
        if "maxItems" in schema:
            count = min(count, schema["maxItems"])
        while len(result) < count and items is not False:
            result.append(self.value(items, item_name, depth + 1, len(result)))
        return result[:count] if len(result) > count else result

    def string(self, schema: dict[str, Any], name: str, variant: int) -> str:
        fmt = schema.get("format")
        if fmt == "uuid":
            return str(uuid.uuid5(uuid.NAMESPACE_URL, f"orchesity-simulated:{name}:{variant}"))
        if fmt in _FORMATS:
            value = _FORMATS[fmt]
            if variant and fmt in ("uri", "url", "iri", "uri-reference", "iri-reference"):
                value += f"/{variant + 1}"
            return value
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            matched = _from_pattern(pattern, schema.get("minLength", 0), variant)
            if matched is not None:
                return matched
        return _fit(_text(name, variant), schema.get("minLength", 0), schema.get("maxLength"))


# --- helpers ----------------------------------------------------------------------------


def _kind(schema: dict[str, Any], deep: bool) -> str:
    declared = schema.get("type")
    if isinstance(declared, list):
        types = [t for t in declared if t != "null"]
        if not types or (deep and "null" in declared):
            return "null"
        return types[0]
    if isinstance(declared, str):
        return declared
    keys = schema.keys()
    if keys & {"properties", "required", "additionalProperties", "minProperties", "patternProperties"}:
        return "object"
    if keys & {"items", "prefixItems", "minItems", "maxItems", "contains"}:
        return "array"
    if keys & {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}:
        return "number"
    return "string"


def _pointer(root: Any, ref: str) -> Any:
    """The target of a local JSON pointer (`#/$defs/X`); `{}` (anything) if not local."""
    if not ref.startswith("#"):
        return {}
    node = root
    for token in ref[1:].split("/")[1:] if ref != "#" else ():
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return {}
    return node


def _words(name: str) -> str:
    """`due_date`, `dueDate`, `Due-Date` -> `due date`."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    return " ".join(re.split(r"[\W_]+", spaced)).strip().lower() or "value"


def _singular(name: str) -> str:
    if name.endswith("ies") and len(name) > 4:
        return name[:-3] + "y"
    if name.endswith("s") and not name.endswith("ss") and len(name) > 3:
        return name[:-1]
    return name


def _text(name: str, variant: int) -> str:
    text = f"simulated {_words(name)}"
    return f"{text} {variant + 1}" if variant else text


def _fit(text: str, minimum: int, maximum: int | None) -> str:
    filler = " " + text
    while len(text) < minimum:
        text += filler
    if maximum is not None and len(text) > maximum:
        text = text[:maximum].rstrip() if maximum else ""
        if len(text) < minimum:
            text = text.ljust(minimum, "x")
    return text


def _number(schema: dict[str, Any], integer: bool, variant: int) -> int | float:
    low, high = schema.get("minimum"), schema.get("maximum")
    low_open, high_open = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(low_open, bool):  # draft 4: a flag on minimum
        low_open, low = (low if low_open else None), (None if low_open else low)
    if isinstance(high_open, bool):
        high_open, high = (high if high_open else None), (None if high_open else high)
    step = schema.get("multipleOf") or (1 if integer else None)
    if integer and isinstance(step, float) and step.is_integer():
        step = int(step)

    def allowed(v: float) -> bool:
        return ((low is None or v >= low) and (low_open is None or v > low_open)
                and (high is None or v <= high) and (high_open is None or v < high_open))

    bottom = max([b for b in (low, low_open) if b is not None], default=None)
    top = min([b for b in (high, high_open) if b is not None], default=None)
    if bottom is None:
        start: float = 1 if top is None or top > 1 else top
    else:
        start = bottom
    candidate = math.ceil(start / step) * step if step else start
    # nudge into range: past an exclusive bound, or down below a maximum
    increment = step or (1 if integer else 0.5)
    for _ in range(4):
        if allowed(candidate):
            break
        if (bottom is not None and candidate <= bottom) or top is None:
            candidate += increment
        else:
            candidate -= increment
    if not allowed(candidate) and not step and bottom is not None and top is not None:
        candidate = (bottom + top) / 2
    for _ in range(variant):  # distinct items in an array, while the range allows
        if allowed(candidate + increment):
            candidate += increment
    if integer:
        return int(round(candidate))
    if step and isinstance(step, float):
        candidate = round(candidate, 10)
    return float(candidate)


# --- the shortest string a regex matches (sre parse tree) ---------------------------------

_CATEGORY = {"CATEGORY_DIGIT": "0", "CATEGORY_WORD": "a", "CATEGORY_SPACE": " ",
             "CATEGORY_NOT_DIGIT": "a", "CATEGORY_NOT_WORD": "-", "CATEGORY_NOT_SPACE": "a"}


def _from_pattern(pattern: str, min_length: int, variant: int) -> str | None:
    """A string matching `pattern` (search semantics, as JSON Schema uses), or None."""
    try:
        import re._parser as sre  # type: ignore[import-not-found]

        tree = sre.parse(pattern)
        built = _build(tree)
    except Exception:
        return None
    try:
        if re.search(pattern, built) is None:
            return None
        if variant:
            varied = built + str(variant + 1) if not re.search(r"\$\s*$", pattern) else built
            if re.search(pattern, varied):
                built = varied
        if len(built) < min_length:
            padded = built + "x" * (min_length - len(built))
            if re.search(pattern, padded):
                built = padded
    except re.error:
        return None
    return built


def _build(tree: Any) -> str:
    out = []
    for op, arg in tree:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(arg))
        elif name == "NOT_LITERAL":
            out.append("a" if arg != ord("a") else "b")
        elif name == "ANY":
            out.append("a")
        elif name == "IN":
            out.append(_in(arg))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, _high, sub = arg
            out.append(_build(sub) * low)
        elif name == "SUBPATTERN":
            out.append(_build(arg[-1]))
        elif name == "ATOMIC_GROUP":
            out.append(_build(arg))
        elif name == "BRANCH":
            out.append(_build(arg[1][0]))
        elif name in ("AT", "ASSERT", "ASSERT_NOT"):
            continue  # anchors need nothing; lookarounds are checked by the final search
        elif name == "CATEGORY":
            out.append(_CATEGORY.get(str(arg), "a"))
        else:  # GROUPREF and friends: let the final check decide
            raise ValueError(name)
    return "".join(out)


def _in(items: Any) -> str:
    negate = False
    for op, arg in items:
        name = str(op)
        if name == "NEGATE":
            negate = True
        elif negate:
            break
        elif name == "LITERAL":
            return chr(arg)
        elif name == "RANGE":
            return chr(arg[0])
        elif name == "CATEGORY":
            return _CATEGORY.get(str(arg), "a")
    if negate:
        excluded = {chr(a) for op, a in items if str(op) == "LITERAL"}
        for option in "ax0-_ ":
            if option not in excluded:
                return option
    return "a"
