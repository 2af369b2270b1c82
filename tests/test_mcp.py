"""MCP: the registry served at /mcp to the SDK's own client (over uvicorn and through the
Lambda handler), and tools of kind `mcp` calling another MCP server through the SSRF
guard (core/outbound.py; the test tools allow 127.0.0.1). Real sockets, real Postgres
and Redis."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError

from core.auth import create_key
from core.settings import Settings
from core.tools import builtin, mcp_client
from core.tools.kinds import ToolFailed
from tests.conftest import Gateway
from tests.servers import serve
from tests.test_deployables import HEAVY, _v2_event

ROOT = Path(__file__).resolve().parent.parent
TEXT = "Orchesity routes calls. It logs them!\nTwo lines."
LAMBDA_HOST = "abcdefgh.lambda-url.eu-west-1.on.aws"


def _tools_file(directory: Path) -> Path:
    """The repository's tools, and text_stats again: needing a setting nobody set, with
    its argument mirrored into a header (2026), with a `returns` that is not plainly an
    object schema, and with a response cap its result does not fit."""
    tools = json.loads((ROOT / "tools.json").read_text())["tools"]
    stats = next(tool for tool in tools if tool["name"] == "text_stats")
    plain = {key: value for key, value in stats.items() if key != "returns"}
    variants = [
        {**stats, "name": "needs_setting", "required_config": ["ORCHESITY_TEST_NEVER_SET"]},
        {**plain, "name": "header_stats", "parameters": {"type": "object", "required": ["text"], "properties": {
            "text": {"type": "string", "x-mcp-header": "Text"}}}},
        {**stats, "name": "any_of_stats", "returns": {"anyOf": [stats["returns"]]}},
        {**stats, "name": "capped_stats", "max_response_bytes": 40},
    ]
    path = directory / "tools.json"
    path.write_text(json.dumps({"tools": [*tools, *variants]}))
    return path


@pytest.fixture
def mcp_settings(gateway_settings: Settings, tmp_path: Path) -> Settings:
    return gateway_settings.model_copy(update={"ORCHESITY_TOOLS_FILE": _tools_file(tmp_path)})


@asynccontextmanager
async def connect(url: str, *, key: str | None = None, mode: str = "auto",
                  transport: httpx2.AsyncBaseTransport | None = None,
                  event_hooks: dict[str, list[Any]] | None = None) -> AsyncIterator[Client]:
    """The SDK's client on `url`, sending `key` as MCP clients do (Authorization: Bearer)."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx2.AsyncClient(headers=headers, transport=transport, event_hooks=event_hooks, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode, cache=None) as client:
            yield client


async def _key(settings: Settings, scopes: list[str]) -> str:
    from core.db import Database

    db = Database.from_settings(settings)
    try:
        return (await create_key(db, name="mcp-test", scopes=scopes, created_by="test"))[0]
    finally:
        await db.close()


def test_importing_the_function_loads_no_sdk() -> None:
    code = f"import sys, functions.mcp\nprint([m for m in {['mcp', *HEAVY]!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_hosts_mcp_answers_come_from_public_url_and_the_setting() -> None:
    from core.settings import SettingsError, load_settings
    from core.tools.mcp_server import transport_security

    settings = load_settings(_env_file=None, PUBLIC_URL="https://orchesity.example.com/base",
                             MCP_ALLOWED_HOSTS=" fn.lambda-url.eu-west-1.on.aws , api.example:8443 ")
    assert settings.mcp_hosts == ["localhost", "127.0.0.1", "[::1]", "orchesity.example.com",
                                  "fn.lambda-url.eu-west-1.on.aws", "api.example:8443"]
    security = transport_security(settings)
    assert "fn.lambda-url.eu-west-1.on.aws:*" in security.allowed_hosts
    assert "api.example:8443" in security.allowed_hosts and "api.example:8443:*" not in security.allowed_hosts
    assert "https://orchesity.example.com" in security.allowed_origins
    with pytest.raises(SettingsError, match="MCP_ALLOWED_HOSTS"):
        load_settings(_env_file=None, MCP_ALLOWED_HOSTS="https://fn.lambda-url.eu-west-1.on.aws/")


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # 2026-07-28 per-request, and the initialize handshake
async def test_the_sdk_client_lists_and_calls_tools_over_uvicorn(mcp_settings: Settings, mode: str) -> None:
    from functions.mcp import build_app

    with serve(build_app(settings=mcp_settings)) as url:
        async with connect(url + "/mcp", mode=mode) as client:
            listed = {tool.name: tool for tool in (await client.list_tools()).tools}
            called = await client.call_tool("text_stats", {"text": TEXT})
            any_of = await client.call_tool("any_of_stats", {"text": TEXT})
            capped = await client.call_tool("capped_stats", {"text": TEXT})
            version = client.protocol_version
    modern = mode == "auto"
    assert version == ("2026-07-28" if modern else "2025-11-25")
    definition = next(t for t in json.loads((ROOT / "tools.json").read_text())["tools"] if t["name"] == "text_stats")
    assert "needs_setting" not in listed
    assert {"fetch_json", "summarize", "text_stats", "header_stats"} <= set(listed)
    stats = listed["text_stats"]
    assert stats.title == "Text stats" and stats.description == definition["description"]
    assert stats.input_schema == definition["parameters"] and stats.output_schema == definition["returns"]
    assert stats.annotations is not None
    assert (stats.annotations.read_only_hint, stats.annotations.destructive_hint, stats.annotations.idempotent_hint,
            stats.annotations.open_world_hint) == (True, False, True, False)
    assert listed["summarize"].output_schema is None and listed["fetch_json"].annotations.open_world_hint is True
    expected = builtin.stats(TEXT)
    assert not called.is_error and called.structured_content == expected
    assert json.loads(called.content[0].text) == expected
    # Before 2026-07-28 an outputSchema is an object schema: anything else goes as text only.
    assert (listed["any_of_stats"].output_schema is not None) is modern
    assert (any_of.structured_content == expected) if modern else (any_of.structured_content is None)
    assert json.loads(any_of.content[0].text) == expected
    assert capped.is_error and "max_response_bytes (40)" in capped.content[0].text


async def test_concurrent_calls_each_get_their_own_exchange(mcp_settings: Settings) -> None:
    from functions.mcp import build_app

    texts = [f"call number {n}. " * (n + 1) for n in range(64)]
    with serve(build_app(settings=mcp_settings)) as url:
        async with connect(url + "/mcp") as client:
            results = await asyncio.gather(*(client.call_tool("text_stats", {"text": text}) for text in texts))
    assert [result.structured_content for result in results] == [builtin.stats(text) for text in texts]


async def test_bad_arguments_an_unknown_tool_and_one_not_configured(mcp_settings: Settings) -> None:
    from functions.mcp import build_app

    with serve(build_app(settings=mcp_settings)) as url:
        async with connect(url + "/mcp") as client:
            bad = await client.call_tool("text_stats", {"text": 5, "extra": True})
            missing = await client.call_tool("text_stats", {})
            with pytest.raises(MCPError) as unknown:
                await client.call_tool("no_such_tool", {})
            with pytest.raises(MCPError) as unset:
                await client.call_tool("needs_setting", {"text": "x"})
    assert bad.is_error and bad.structured_content is None
    assert bad.content[0].text.splitlines() == [
        "invalid arguments:",
        "- (the arguments): Additional properties are not allowed ('extra' was unexpected)",
        "- text: 5 is not of type \"string\""]
    assert missing.is_error and '"text" is a required property' in missing.content[0].text
    assert unknown.value.code == -32602 and "no_such_tool" in unknown.value.message
    assert unset.value.code == -32602 and "ORCHESITY_TEST_NEVER_SET" in unset.value.message


async def test_mirrored_argument_headers_must_match_the_body(mcp_settings: Settings) -> None:
    from functions.mcp import build_app

    async def tamper(request: httpx2.Request) -> None:
        if "mcp-param-text" in request.headers:
            request.headers["mcp-param-text"] = "not what the body says"

    with serve(build_app(settings=mcp_settings)) as url:
        async with connect(url + "/mcp") as client:
            honest = await client.call_tool("header_stats", {"text": TEXT})
        async with connect(url + "/mcp", event_hooks={"request": [tamper]}) as client:
            with pytest.raises(MCPError) as tampered:
                await client.call_tool("header_stats", {"text": TEXT})
    assert not honest.is_error and json.loads(honest.content[0].text) == builtin.stats(TEXT)
    assert tampered.value.code == -32020 and "Mcp-Param-Text" in tampered.value.message  # HEADER_MISMATCH


async def test_keys_and_the_host_check(mcp_settings: Settings) -> None:
    from functions.mcp import build_app

    settings = mcp_settings.model_copy(update={"OPEN_ACCESS": False, "MCP_ALLOWED_HOSTS": "mcp.example.com"})
    tools_key, llm_key = await _key(settings, ["tools"]), await _key(settings, ["llm"])
    ping = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    accept = {"accept": "application/json, text/event-stream"}
    with serve(build_app(settings=settings)) as url:
        async with httpx2.AsyncClient(base_url=url, headers=accept) as http:
            anonymous = await http.post("/mcp", json=ping)
            wrong_scope = await http.post("/mcp", json=ping, headers={"authorization": f"Bearer {llm_key}"})
            keyed = {"authorization": f"Bearer {tools_key}"}
            elsewhere = await http.post("/mcp", json=ping, headers={**keyed, "host": "attacker.example"})
            configured = await http.post("/mcp", json=ping, headers={**keyed, "host": "mcp.example.com"})
            foreign_page = await http.post("/mcp", json=ping, headers={**keyed, "origin": "https://attacker.example"})
            stream = await http.get("/mcp", headers=keyed)
        async with connect(url + "/mcp", key=tools_key) as client:
            listed = await client.list_tools()
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    assert wrong_scope.status_code == 403 and "'tools' scope" in wrong_scope.json()["error"]["message"]
    assert elsewhere.status_code == 421 and "Host" in elsewhere.text
    assert foreign_page.status_code == 403 and "Origin" in foreign_page.text
    assert configured.status_code == 200 and configured.json()["result"]["tools"]
    assert stream.status_code == 405  # stateless: no session stream to open
    assert "text_stats" in {tool.name for tool in listed.tools}


class LambdaTransport(httpx2.AsyncBaseTransport):
    """Each HTTP request of the SDK's client, as the Function URL event Lambda hands the
    handler; the handler runs on a thread of its own, as a warm container would."""

    def __init__(self, handler: Any, worker: ThreadPoolExecutor) -> None:
        self.handler, self.worker = handler, worker
        self.replies: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = await request.aread()
        headers = {name.lower(): value for name, value in request.headers.items() if name.lower() != "host"}
        event = _v2_event(request.method, request.url.path, host=LAMBDA_HOST, body=body or None,
                          base64_body=True, headers=headers)
        reply = await asyncio.get_running_loop().run_in_executor(self.worker, self.handler, event, None)
        self.replies.append(reply)
        content = base64.b64decode(reply["body"]) if reply.get("isBase64Encoded") else reply["body"].encode()
        return httpx2.Response(reply["statusCode"], headers=reply.get("headers", {}), content=content)


@contextmanager
def lambda_handler(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, ThreadPoolExecutor]]:
    """functions.mcp.handler, configured by its environment as a deployed function is,
    on one thread (Mangum keeps that thread's event loop for every invocation)."""
    monkeypatch.setenv("DATABASE_URL", settings.DATABASE_URL.get_secret_value())
    monkeypatch.setenv("REDIS_URL", settings.REDIS_URL.get_secret_value())
    monkeypatch.setenv("REDIS_DB", "1")
    monkeypatch.setenv("ORCHESITY_TOOLS_FILE", str(settings.ORCHESITY_TOOLS_FILE))
    monkeypatch.setenv("MCP_ALLOWED_HOSTS", LAMBDA_HOST)
    worker = ThreadPoolExecutor(1, thread_name_prefix="lambda")
    import functions.mcp

    handler = worker.submit(lambda: functions.mcp.handler).result()
    try:
        yield handler, worker
    finally:
        def close() -> None:
            asyncio.get_event_loop().run_until_complete(functions.mcp.app.state.services.close())

        worker.submit(close).result()
        worker.shutdown()


async def test_the_sdk_client_through_the_lambda_handler(mcp_settings: Settings,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    key = await _key(mcp_settings, ["tools"])
    with lambda_handler(mcp_settings, monkeypatch) as (handler, worker):
        transport = LambdaTransport(handler, worker)
        async with connect(f"https://{LAMBDA_HOST}/mcp", key=key, transport=transport) as client:
            listed = await client.list_tools()
            called = await client.call_tool("text_stats", {"text": TEXT})
        anonymous = LambdaTransport(handler, worker)
        with pytest.raises(BaseExceptionGroup) as refused:  # the SDK's task groups wrap its MCPError
            async with connect(f"https://{LAMBDA_HOST}/mcp", transport=anonymous):
                pass
    # discover, tools/list, tools/call: three invocations of one warm handler
    assert [reply["statusCode"] for reply in transport.replies] == [200, 200, 200]
    assert all(reply["headers"]["content-type"] == "application/json" for reply in transport.replies)
    assert "text_stats" in {tool.name for tool in listed.tools}
    assert called.structured_content == builtin.stats(TEXT)
    assert refused.group_contains(MCPError) and {reply["statusCode"] for reply in anonymous.replies} == {401}


# --- tools of kind mcp ------------------------------------------------------------------------

@contextmanager
def remote_server() -> Iterator[str]:
    """A plain SDK server (MCPServer, stateless) on 127.0.0.1; yields its MCP endpoint."""
    remote = MCPServer("remote")

    @remote.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @remote.tool()
    def shout(text: str) -> str:
        """The text in capitals."""
        return text.upper()

    @remote.tool()
    def refuse(reason: str) -> str:
        """Fails, saying why (a ToolError's message reaches the caller)."""
        raise ToolError(f"refused: {reason}")

    @remote.tool()
    async def dawdle(seconds: float) -> str:
        """Answers after a while."""
        await asyncio.sleep(seconds)
        return "late"

    with serve(remote.streamable_http_app(stateless_http=True, json_response=True)) as url:
        yield url + "/mcp"


def _remote_tool(name: str, url: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A tool of kind mcp for `tool` on `url`, taking `arguments`' names with their JSON types."""
    kinds = {int: "integer", float: "number", str: "string"}
    properties = {key: {"type": kinds[type(value)]} for key, value in arguments.items()}
    return {"name": name, "description": f"{tool} on the remote server", "kind": "mcp",
            "mcp": {"url": url, "tool": tool, "allow_hosts": ["127.0.0.1"]},
            "parameters": {"type": "object", "properties": properties, "required": sorted(properties)}}


async def test_a_tool_of_kind_mcp_calls_another_mcp_server(
        open_gateway: Callable[..., AbstractAsyncContextManager[Gateway]], tmp_path: Path) -> None:
    calls = [("remote_add", "add", {"a": 2, "b": 40}), ("remote_shout", "shout", {"text": "hey"}),
             ("remote_refuse", "refuse", {"reason": "no thanks"}), ("remote_missing", "not_there", {}),
             ("remote_down", "add", {}), ("remote_slow", "dawdle", {"seconds": 1.5})]
    with remote_server() as url:
        tools = [_remote_tool(name, "http://127.0.0.1:1/mcp" if name == "remote_down" else url, tool, arguments)
                 for name, tool, arguments in calls]
        tools[-1]["timeout"] = 0.5
        path = tmp_path / "tools.json"
        path.write_text(json.dumps({"tools": tools}))
        replies, took = {}, {}
        async with open_gateway(ORCHESITY_TOOLS_FILE=path) as gw:
            for name, _, arguments in calls:
                started = time.perf_counter()
                reply = await gw.client.post(f"/api/tools/{name}/invoke", json={"arguments": arguments})
                took[name] = time.perf_counter() - started
                assert reply.status_code == 200, reply.text
                replies[name] = reply.json()
    assert replies["remote_add"]["status"] == "ok" and replies["remote_add"]["result"] == {"result": 42}
    assert replies["remote_shout"]["result"] == {"result": "HEY"}
    errors = {name: reply.get("error") for name, reply in replies.items()}
    assert errors["remote_refuse"] == {"type": "mcp_error", "message": "tool 'refuse' on 127.0.0.1 failed: "
                                                                       "Error executing tool refuse: refused: no thanks"}
    assert errors["remote_missing"]["message"] == "tool 'not_there' on 127.0.0.1: the server has no such tool"
    assert errors["remote_down"]["type"] == "mcp_error"
    assert errors["remote_down"]["message"].startswith("tool 'add' on 127.0.0.1: ConnectError")
    assert errors["remote_slow"]["type"] == "timeout" and took["remote_slow"] < 2.5


async def test_call_remote_tool_is_bounded_by_its_timeout() -> None:
    with remote_server() as url:
        started = time.perf_counter()
        with pytest.raises(ToolFailed) as slow:
            await mcp_client.call_remote_tool(url, "dawdle", {"seconds": 1.5}, headers={}, allow_hosts=[], timeout=0.5,
                                              transport=httpx2.AsyncHTTPTransport())
        took = time.perf_counter() - started
    assert slow.value.kind == "timeout" and took < 1.2
    assert slow.value.message == "tool 'dawdle' on 127.0.0.1 gave no answer within 0.5s"


async def test_call_remote_tool_returns_text_when_there_is_no_structured_content() -> None:
    plain = MCPServer("plain")

    @plain.tool(structured_output=False)
    def numbers() -> list[int]:
        """Three numbers, as text blocks."""
        return [1, 2, 3]

    @plain.tool(structured_output=False)
    def word() -> str:
        """One word."""
        return "hello"

    with serve(plain.streamable_http_app(stateless_http=True, json_response=True)) as url:
        call = lambda tool: mcp_client.call_remote_tool(  # noqa: E731
            url + "/mcp", tool, {}, headers={"x-secret": "s3cret"}, allow_hosts=[], timeout=10,
            transport=httpx2.AsyncHTTPTransport())
        assert await call("numbers") == [1, 2, 3]
        assert await call("word") == "hello"
        with pytest.raises(ToolFailed) as failed:
            await call("nothing")
    assert "s3cret" not in failed.value.message and failed.value.kind == "mcp_error"
