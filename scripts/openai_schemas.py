"""Write tests/openai_schemas.json, the structural subset of OpenAI's spec the tests use.

The tests validate the gateway's responses against that committed file, so they run in
any clone of the project; the spec itself is needed only to regenerate or --check it.

Source: OpenAI's published OpenAPI 3.1 description of its API, `openapi.json` from the
repository openai/openai-openapi (MIT licence; the commit, date and version are in SOURCE
below), read from ../shared/openai/openapi.json beside the repository unless --spec says
otherwise.

For the schemas named in ROOTS and every schema they reference, transitively, it keeps
the JSON Schema keywords that decide a document's shape: type, properties, required,
enum, const, items, prefixItems, anyOf, oneOf, allOf, $ref and additionalProperties.

It drops prose and tooling hints: description, title, example(s), default, deprecated,
x-* extensions, format (only an annotation in JSON Schema 2020-12) and OpenAPI's
discriminator (a hint for code generators; the type constant each variant carries
already decides a union). It also drops value bounds (lengths, patterns, minimum and
maximum): the tests check shape, not limits.

Two leftovers of OpenAPI 3.0 / JSON Schema 2019-09 in the spec are translated, because a
2020-12 validator would silently ignore them: `nullable: true` becomes
`anyOf: [<schema>, {"type": "null"}]`, and `$recursiveRef: "#"` becomes a `$ref` to the
schema that holds it. Any keyword not named here stops the script, so a new one in a
spec update gets a decision instead of being dropped unnoticed.

Refs keep the form `#/components/schemas/X`. Every object's keys are sorted, except at
the top, where the header comes first; the output is stable.

    uv run python scripts/openai_schemas.py            # write the subset
    uv run python scripts/openai_schemas.py --check    # exit 1 if the committed one differs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOTS = [
    # Chat Completions, Embeddings and Models, which the gateway serves today.
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateEmbeddingResponse",
    "ListModelsResponse",
    # The Responses API, which /v1/responses serves.
    "Response",
    "ResponseStreamEvent",
]

# Where the spec came from; openapi.json itself names neither its commit nor its date.
# `info_version` is checked against the spec so that a new spec cannot pass under an
# old commit: update all three together.
SOURCE = {
    "repository": "openai/openai-openapi",
    "file": "openapi.json",
    "commit": "f85dbe2",
    "date": "2026-08-21",
    "info_version": "2.3.0",
}

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = REPO.parent / "shared" / "openai" / "openapi.json"
OUT = REPO / "tests" / "openai_schemas.json"
GENERATOR = "scripts/openai_schemas.py"
REF_PREFIX = "#/components/schemas/"

VALUE_KEYWORDS = {"type", "required", "enum", "const", "$ref"}
SCHEMA_KEYWORDS = {"items", "additionalProperties"}
SCHEMA_LIST_KEYWORDS = {"anyOf", "oneOf", "allOf", "prefixItems"}
DROPPED = {
    "description", "title", "example", "examples", "default", "deprecated", "format",
    "discriminator",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
    "pattern", "minItems", "maxItems", "minProperties", "maxProperties", "propertyNames",
}
# Read below, not copied: `nullable` wraps the node; `$recursiveAnchor` only marks the
# schema a `$recursiveRef` points back to, and that becomes a `$ref` by name.
MARKERS = {"nullable", "$recursiveAnchor"}


def _schema(node: Any, owner: str, refs: set[str]) -> Any:
    """The structural part of one node of the component schema `owner`, with the names
    of the schemas it references added to `refs`."""
    if isinstance(node, bool):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROPPED or key.startswith("x-") or key in MARKERS:
            continue
        if key == "properties":
            out[key] = {name: _schema(sub, owner, refs) for name, sub in sorted(value.items())}
        elif key in SCHEMA_KEYWORDS:
            out[key] = _schema(value, owner, refs)
        elif key in SCHEMA_LIST_KEYWORDS:
            out[key] = [_schema(sub, owner, refs) for sub in value]
        elif key in VALUE_KEYWORDS:
            out[key] = value
        elif key == "$recursiveRef" and value == "#":
            out["$ref"] = REF_PREFIX + owner
        else:
            raise ValueError(f"{owner}: keyword {key!r} = {value!r} is neither kept nor dropped")
    if "$ref" in out:
        if not out["$ref"].startswith(REF_PREFIX):
            raise ValueError(f"{owner}: $ref {out['$ref']!r} is outside components.schemas")
        refs.add(out["$ref"].removeprefix(REF_PREFIX))
    out = dict(sorted(out.items()))
    return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") is True else out


def subset(spec: dict[str, Any]) -> dict[str, Any]:
    """The document written to OUT: a header naming the source, and the ROOTS closure."""
    if spec["info"]["version"] != SOURCE["info_version"]:
        raise ValueError(f"the spec is version {spec['info']['version']}, SOURCE says "
                         f"{SOURCE['info_version']}: update SOURCE's commit, date and version")
    every = spec["components"]["schemas"]
    schemas: dict[str, Any] = {}
    pending = list(ROOTS)
    while pending:
        name = pending.pop()
        if name not in schemas:
            refs: set[str] = set()
            schemas[name] = _schema(every[name], name, refs)
            pending.extend(refs)
    header = {
        "generator": GENERATOR,
        "roots": ROOTS,
        "source": dict(sorted({**SOURCE, "openapi": spec["openapi"],
                               "licence": spec["info"]["license"]["name"]}.items())),
    }
    return {"header": header, "components": {"schemas": dict(sorted(schemas.items()))}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="OpenAI's openapi.json")
    parser.add_argument("--check", action="store_true",
                        help=f"write nothing; exit 1 if {OUT.relative_to(REPO)} is not what would be written")
    args = parser.parse_args()
    if not args.spec.is_file():
        parser.error(f"no spec at {args.spec}")
    document = subset(json.loads(args.spec.read_text(encoding="utf-8")))
    # No sort_keys: every level below the top is sorted already, and the header stays first.
    text = json.dumps(document, indent=1, ensure_ascii=False) + "\n"
    if args.check:
        if OUT.is_file() and OUT.read_text(encoding="utf-8") == text:
            return 0
        print(f"{OUT.relative_to(REPO)} is out of step with {args.spec}: run {GENERATOR}", file=sys.stderr)
        return 1
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(REPO)}: {len(document['components']['schemas'])} schemas, "
          f"{len(text.encode())} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
