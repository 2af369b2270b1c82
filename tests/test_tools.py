"""The tool registry end to end: loading, the registry, invocation through the HTTP
function (real Postgres and Redis), exports, and the compatibility rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.settings import load_settings
from core.tools import compat
from core.tools.loader import ToolsFileError, read_tools_file
from core.tools.model import SCHEMA_FILE, Tool, _render_schema

ROOT = Path(__file__).resolve().parents[1]
TEST_MODULES = "core.tools.builtin,tests.tool_functions"


def python_tool(name: str, entry: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "description": f"the {name} test tool", "kind": "python",
            "python": {"entry": f"tests.tool_functions:{entry}"},
            "parameters": {"type": "object", "properties": properties, "required": sorted(properties),
                           "additionalProperties": False}, **extra}


TEST_TOOLS = [
    python_tool("slow", "slow", {"seconds": {"type": "number"}}, timeout=0.3),
    python_tool("big", "big", {"size": {"type": "integer"}}, max_response_bytes=1000),
    python_tool("broken", "broken", {}),
    python_tool("shout", "shout", {"text": {"type": "string"}},
                returns={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
    {**python_tool("needs_key", "shout", {"text": {"type": "string"}}), "required_config": ["SOME_SERVICE_KEY"]},
]


@pytest.fixture
def tools_file(tmp_path: Path) -> Path:
    """The sample tools.json plus the test tools."""
    sample = json.loads((ROOT / "tools.json").read_text())["tools"]
    path = tmp_path / "tools.json"
    path.write_text(json.dumps({"tools": sample + TEST_TOOLS}))
    return path


@pytest.fixture
def tools_gateway(open_gateway: Any, tools_file: Path) -> Any:
    return lambda **overrides: open_gateway(ORCHESITY_TOOLS_FILE=tools_file, ORCHESITY_TOOL_MODULES=TEST_MODULES,
                                            **overrides)


def test_the_checked_in_json_schema_is_the_models() -> None:
    assert SCHEMA_FILE.read_text() == _render_schema(), "run: uv run python -m core.tools.model"


def test_the_sample_tools_file_loads() -> None:
    loaded = read_tools_file(ROOT / "tools.json", load_settings(_env_file=None))
    assert [item.tool.ref for item in loaded] == ["text_stats@1", "fetch_json@1", "summarize@1"]
    assert all(item.unavailable is None for item in loaded)


def test_every_problem_of_a_tools_file_at_once(tmp_path: Path) -> None:
    good = python_tool("fine", "shout", {"text": {"type": "string"}})
    definitions = [
        good, dict(good),  # a duplicate name@version
        {**good, "name": "bad_schema", "parameters": {"type": "object", "properties": {"a": {"type": "bogus"}}}},
        {**good, "name": "not_importing", "python": {"entry": "tests.tool_functions.missing:x"}},
        {**good, "name": "no_function", "python": {"entry": "tests.tool_functions:nothing_here"}},
        {**good, "name": "outside", "python": {"entry": "os:system"}},
        {"name": "templated", "description": "d", "kind": "llm", "llm": {"prompt": "Say {{ missing }}"},
         "parameters": {"type": "object", "properties": {"text": {"type": "string"}}}},
        {"name": "hosty", "description": "d", "kind": "http", "http": {"url": "https://{{ host }}/x"},
         "parameters": {"type": "object", "properties": {"host": {"type": "string"}}}},
        {**good, "name": "two configs", "llm": {"prompt": "hi"}},
        {**good, "name": "unknown_field", "colour": "blue"},
    ]
    path = tmp_path / "tools.json"
    path.write_text(json.dumps({"tools": definitions}))
    settings = load_settings(_env_file=None, ORCHESITY_TOOL_MODULES="tests.tool_functions")
    with pytest.raises(ToolsFileError) as info:
        read_tools_file(path, settings)
    message = str(info.value)
    expected = [
        "tools[1] ('fine'): name: fine@1 is also tools[0]",
        "tools[2] ('bad_schema'): parameters: not a valid JSON Schema at properties/a/type",
        "tools[3] ('not_importing'): python.entry: tests.tool_functions.missing does not import",
        "tools[4] ('no_function'): python.entry: tests.tool_functions has no function nothing_here",
        "tools[5] ('outside'): python.entry: os is not under an allowed module prefix",
        "tools[6] ('templated'): llm.prompt: {{ missing }} names no parameter (declared: text)",
        "tools[7] ('hosty'): http.url:",
        "tools[8] ('two configs'): name: String should match pattern",
        "tools[9] ('unknown_field'): colour: unknown field",
    ]
    for line in expected:
        assert line in message, (line, message)


def test_validate_on_the_command_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    orchesity = str(Path(sys.executable).parent / "orchesity")
    path = tmp_path / "tools.json"
    path.write_text(json.dumps({"tools": [{"name": "x", "kind": "python", "description": "d",
                                           "python": {"entry": "core.tools.builtin:none"}}]}))
    bad = subprocess.run([orchesity, "tools", "validate", str(path)], capture_output=True, text=True, timeout=60)
    good = subprocess.run([orchesity, "tools", "validate", str(ROOT / "tools.json")], capture_output=True,
                          text=True, timeout=60)
    assert bad.returncode == 1 and "tools[0] ('x'): python.entry" in bad.stderr
    assert good.returncode == 0 and "3 tools, no problems" in good.stdout


# --- invoking, through the HTTP function -------------------------------------------------------


async def test_a_python_tool_is_invoked_and_logged(tools_gateway: Any) -> None:
    from core import journal

    async with tools_gateway() as gw:
        reply = await gw.client.post("/api/tools/text_stats/invoke",
                                     json={"arguments": {"text": "One two three. Four five!"}})
        await journal.drain_all(gw.services.kv, gw.services.db)
        async with gw.services.db.engine.connect() as conn:
            from sqlalchemy import text

            logged = (await conn.execute(text(
                "SELECT tool, status, arguments_sha256, response_bytes FROM tool_calls "
                "ORDER BY created_at DESC LIMIT 1"))).one()
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["status"] == "ok" and body["tool"] == "text_stats@1"
    assert body["result"]["words"] == 5 and body["result"]["sentences"] == 2
    assert body["duration_ms"] >= 0 and body["bytes"] > 0
    assert logged.tool == "text_stats@1" and logged.status == "ok" and len(logged.arguments_sha256) == 64
    assert "One two three" not in str(logged)  # a hash, never the arguments


async def test_bad_arguments_get_every_error_with_its_path(tools_gateway: Any) -> None:
    async with tools_gateway() as gw:
        reply = await gw.client.post("/api/tools/summarize/invoke",
                                     json={"arguments": {"text": "", "sentences": 50, "colour": 1}})
        missing = await gw.client.post("/api/tools/summarize/invoke", json={"arguments": {}})
        surrogate = await gw.client.post("/api/tools/summarize/invoke", content=b'{"arguments": {"text": "\\ud800"}}',
                                         headers={"content-type": "application/json"})
    assert surrogate.status_code == 422 and "lone surrogate" in surrogate.json()["error"]["details"][0]["message"]
    assert reply.status_code == 422
    details = reply.json()["error"]["details"]
    paths = {d["path"] for d in details}
    assert paths == {"", "text", "sentences"}  # the extra property is reported at the root
    assert any("colour" in d["message"] for d in details)
    assert missing.status_code == 422 and len(missing.json()["error"]["details"]) == 2


async def test_an_llm_tool_goes_through_the_gateway(tools_gateway: Any) -> None:
    async with tools_gateway() as gw:
        args = {"arguments": {"text": "Routing sends each call to the provider serving best.", "sentences": 1}}
        first = await gw.client.post("/api/tools/summarize/invoke", json=args)
        again = await gw.client.post("/api/tools/summarize/invoke", json=args)
        recent = (await gw.client.get("/api/db/requests/recent")).json()["requests"]
    result = first.json()["result"]
    assert first.json()["status"] == "ok" and result["text"] and result["provider"] == "simulated"
    assert again.json()["result"]["cached"] is True  # temperature 0: the cache serves it
    assert any(r["endpoint"] == "tool" for r in recent)


async def test_limits_failures_and_unavailable_tools(tools_gateway: Any) -> None:
    async with tools_gateway() as gw:
        slow = await gw.client.post("/api/tools/slow/invoke", json={"arguments": {"seconds": 5}})
        big = await gw.client.post("/api/tools/big/invoke", json={"arguments": {"size": 5000}})
        broken = await gw.client.post("/api/tools/broken/invoke", json={"arguments": {}})
        listed = {t["ref"]: t for t in (await gw.client.get("/api/tools")).json()["tools"]}
        unavailable = await gw.client.post("/api/tools/needs_key/invoke", json={"arguments": {"text": "a"}})
        unknown = await gw.client.post("/api/tools/nope/invoke", json={"arguments": {}})
        huge = await gw.client.post("/api/tools/shout/invoke", json={"arguments": {"text": "y" * 70_000}})
    assert slow.json()["status"] == "error" and slow.json()["error"]["type"] == "timeout"
    assert "0.3s" in slow.json()["error"]["message"]
    assert big.json()["status"] == "ok" and big.json()["truncated"] is True
    assert big.json()["result"].endswith("more bytes]") and len(big.json()["result"]) < 1100
    assert broken.json()["error"] == {"type": "tool_error", "message": "RuntimeError: the tool fell over"}
    assert listed["needs_key@1"]["available"] is False
    assert "SOME_SERVICE_KEY" in listed["needs_key@1"]["unavailable_reason"]
    assert unavailable.status_code == 503 and "SOME_SERVICE_KEY" in unavailable.json()["error"]["message"]
    assert unknown.status_code == 404
    assert huge.status_code == 422 and "bytes" in huge.json()["error"]["message"]


async def test_registering_versions_and_the_file_wins(tools_gateway: Any) -> None:
    v1 = python_tool("api_shout", "shout", {"text": {"type": "string"}})
    v2 = {**v1, "version": "2", "description": "louder"}
    async with tools_gateway() as gw:
        client = gw.client
        created = await client.post("/api/tools", json=v1)
        again = await client.post("/api/tools", json=v1)
        clash = await client.post("/api/tools", json={**v1, "description": "changed, same version"})
        over_file = await client.post("/api/tools", json={**v1, "name": "text_stats"})
        invalid = await client.post("/api/tools", json={**v1, "name": "bad", "parameters": {"type": "string"}})
        second = await client.post("/api/tools", json=v2)
        newest = (await client.get("/api/tools/api_shout")).json()
        old = await client.post("/api/tools/api_shout@1/invoke", json={"arguments": {"text": "hi"}})
        deleted = await client.delete("/api/tools/api_shout")
        gone = await client.post("/api/tools/api_shout/invoke", json={"arguments": {"text": "hi"}})
        file_delete = await client.delete("/api/tools/text_stats")
        nul = await client.post("/api/tools", json={**v1, "name": "nul_shout", "description": "a\x00b"})
        nul_read = (await client.get("/api/tools/nul_shout")).json()
    assert created.status_code == 201 and created.json()["source"] == "api"
    assert again.status_code == 200 and again.json()["etag"] == created.json()["etag"]
    assert clash.status_code == 409 and "new version" in clash.json()["error"]["message"]
    assert over_file.status_code == 409 and "tools file" in over_file.json()["error"]["message"]
    assert invalid.status_code == 422 and invalid.json()["error"]["details"]
    assert second.status_code == 201
    assert newest["ref"] == "api_shout@2" and newest["versions"] == ["2", "1"]
    assert old.json()["tool"] == "api_shout@1" and old.json()["result"] == {"text": "HI"}
    assert sorted(deleted.json()["deleted"]) == ["api_shout@1", "api_shout@2"] and gone.status_code == 404
    assert file_delete.status_code == 409
    assert nul.status_code == 201 and nul_read["definition"]["description"] == "ab"  # Postgres holds no NUL


async def test_export_to_openai_lints_strict_mode(tools_gateway: Any) -> None:
    async with tools_gateway() as gw:
        plain = (await gw.client.get("/api/tools/export", params={"format": "openai"})).json()
        strict = (await gw.client.get("/api/tools/export", params={"format": "openai", "strict": "true"})).json()
    names = [t["function"]["name"] for t in plain["tools"]]
    assert "text_stats" in names and "needs_key" not in names  # unavailable tools are not offered
    assert all(t["type"] == "function" and "strict" not in t["function"] for t in plain["tools"])
    by_name = {t["function"]["name"]: t["function"] for t in strict["tools"]}
    assert by_name["shout"]["strict"] is True  # closed, every property required
    assert "strict" not in by_name["summarize"]  # left as it is, and named with the reasons:
    assert any("minimum" in reason or "minLength" in reason for reason in strict["not_strict"]["summarize@1"])


async def test_a_langchain_agent_tool_goes_through_our_validation(tools_gateway: Any) -> None:
    from core.tools.export import langchain_tools
    from core.tools.invoke import invoke
    from core.tools.kinds import CallContext

    async with tools_gateway() as gw:
        svc = gw.services

        async def call(entry: Any, arguments: dict[str, Any]) -> Any:
            ctx = CallContext(settings=svc.settings, environ={}, orchestrator=svc.orchestrator, caller="langchain")
            outcome = await invoke(entry, arguments, ctx, kv=svc.kv, db=svc.db)
            if outcome.status != "ok":
                raise RuntimeError(outcome.error)
            return outcome.result

        tools = {t.name: t for t in langchain_tools(await svc.tools.entries(), call)}
        stats = tools["text_stats"]
        answer = await stats.ainvoke({"text": "Hello there. General Kenobi."})
        with pytest.raises(Exception) as info:
            await stats.ainvoke({"text": 42})
    assert answer["sentences"] == 2 and answer["words"] == 4
    assert "text" in str(info.value) and "string" in str(info.value)


def test_the_compatibility_rule() -> None:
    def tool(name: str, **fields: Any) -> Tool:
        return Tool.model_validate({**python_tool(name, "shout", {"text": {"type": "string"}}), **fields})

    fetch = tool("fetcher", tool_type="fetch")
    summary = tool("summarizer", tool_type="generate", compatibilities=["fetch", "analysis"])
    picky = tool("picky", incompatible_with=["fetcher"])
    assert compat.check(fetch, summary) is None
    assert "takes input only from fetch, analysis" in compat.check(tool("x", tool_type="other"), summary)
    assert "incompatible" in compat.check(fetch, picky)
    assert "incompatible" in compat.check(picky, fetch)  # either direction


# --- http tools, against a local server the tool allows explicitly -----------------------------


@pytest.fixture
def echo_server() -> Any:
    """A local HTTP server that answers each request with what it received, as JSON."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from tests.servers import serve

    seen: list[dict[str, Any]] = []

    async def echo(request: Request) -> Any:
        body = await request.body()
        record = {"method": request.method, "path": request.url.path, "raw_path": request.scope["raw_path"].decode(),
                  "query": request.url.query, "headers": dict(request.headers),
                  "body": json.loads(body) if body else None}
        seen.append(record)
        if request.url.path.startswith("/fail"):
            return PlainTextResponse(f"nope, {request.headers.get('authorization')}", status_code=500)
        return JSONResponse(record)

    app = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])
    with serve(app) as url:
        yield url, seen


def http_tool(name: str, url: str, **http: Any) -> dict[str, Any]:
    return {"name": name, "description": "an http test tool", "kind": "http", "http": {"url": url, **http},
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}, "q": {"type": "string"},
                                                            "n": {"type": "integer"}}}}


async def test_an_http_tool_encodes_values_sends_secrets_and_stays_inside_its_hosts(
        open_gateway: Any, echo_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen = echo_server
    port = url.rsplit(":", 1)[1]
    monkeypatch.setenv("ECHO_TOKEN", "s3cret-token-value")
    local = f"http://localhost:{port}"
    definitions = [
        http_tool("echo", local + "/items/{{ id }}?q={{ q }}", method="POST", allow_hosts=["localhost"],
                  headers={"Authorization": "Bearer {{ secrets.ECHO_TOKEN }}"}, secrets=["ECHO_TOKEN"],
                  body={"count": "{{ n }}", "note": "id={{ id }}"}),
        http_tool("fail", local + "/fail", allow_hosts=["localhost"],
                  headers={"Authorization": "Bearer {{ secrets.ECHO_TOKEN }}"}, secrets=["ECHO_TOKEN"]),
        http_tool("no_allow", local + "/items"),  # the same server, not allowed: a private address
        http_tool("metadata", "http://169.254.169.254/latest/meta-data/"),
    ]
    path = tmp_path / "tools.json"
    path.write_text(json.dumps({"tools": definitions}))
    async with open_gateway(ORCHESITY_TOOLS_FILE=path) as gw:
        def call(name: str, **arguments: Any) -> Any:
            return gw.client.post(f"/api/tools/{name}/invoke", json={"arguments": arguments})

        echoed = (await call("echo", id="a/b c?", q="x&y=z", n=3)).json()
        failed = (await call("fail")).json()
        refused = (await call("no_allow")).json()
        metadata = (await call("metadata")).json()
    assert echoed["status"] == "ok", echoed
    request = echoed["result"]
    assert request["raw_path"] == "/items/a%2Fb%20c%3F" and request["query"] == "q=x%26y%3Dz"
    assert request["headers"]["authorization"] == "Bearer s3cret-token-value"
    assert request["body"] == {"count": 3, "note": "id=a/b c?"}  # a whole placeholder keeps its type
    assert failed["status"] == "error" and failed["error"]["type"] == "http_error"
    assert "s3cret-token-value" not in json.dumps(failed) and "[redacted]" in failed["error"]["message"]
    for answer in (refused, metadata):
        assert answer["status"] == "error" and answer["error"]["type"] == "refused", answer
    assert len(seen) == 2  # the refused calls never reached the server
