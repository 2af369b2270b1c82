"""The tool registry as an MCP server: `tools/list` and `tools/call`, one HTTP request each.

Built on the SDK's low-level `Server`, not `MCPServer` (FastMCP): MCPServer makes tools
of Python functions, deriving each schema from a signature and checking arguments with
pydantic, while ours are data (JSON Schema definitions from tools.json and Postgres,
read when asked). The low-level server takes them as they are through two handlers,
and the arguments are checked once, by invoke() (core/tools/invoke.py), with every
error's path; every call is a record of the tool-call log, as through the REST route.

How a tool reads in MCP: its name; a title, the name in words (the definition has none);
its description; `inputSchema` = parameters; `outputSchema` = returns, when it has one;
annotations as readOnlyHint, destructiveHint, idempotentHint, openWorldHint. A tool that
is not configured is not listed. A call answers:
- a result: its JSON as text content (a string as it is), and as structuredContent
  when the tool declares `returns` (a result cut at max_response_bytes no longer has
  that shape, and is an error saying so);
- arguments that do not fit, or the tool's failure (a timeout, an error, a result that
  does not match `returns`): a result with isError and the message, every argument
  error with its path, so the model can correct itself;
- a tool that does not exist or is not configured: an MCP error (invalid params).

Up to protocol 2025-11-25 an outputSchema must be an object schema and structuredContent
an object, so there a tool returning anything else is given as text only.

One server per process serves every caller: what a request may use (the registry, its
caller's CallContext) reaches the handlers through a context variable set for that
request (`handle`). Its stateless session manager runs in a task of its own, started by
the first request on each event loop and kept running there: nothing depends on the
ASGI lifespan, which Mangum with lifespan="off" never runs (the SDK's documented mount,
one manager started in the lifespan, fails there with "Task group is not initialized"),
and Mangum runs every invocation of a warm container on the same loop, where the task
waits between them. Answers are whole JSON bodies (`json_response`), one per POST, which
a Lambda returns as they are. The Host check (DNS rebinding) is the SDK's, fed by
`transport_security`.
"""

from __future__ import annotations

import asyncio
import weakref
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import validate_mcp_param_headers
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.types import Receive, Scope, Send

from core import __version__, fastjson
from core.tools.invoke import ArgumentsInvalid, Outcome, ToolUnavailable, invoke
from core.tools.registry import ToolNotFound

if TYPE_CHECKING:
    from core.db import Database
    from core.kv import KV
    from core.settings import Settings
    from core.tools.kinds import CallContext
    from core.tools.model import Tool
    from core.tools.registry import ToolRegistry


def _structured(tool: Tool, protocol_version: str) -> bool:
    """Whether `tool`'s results go out as structuredContent under its outputSchema."""
    if tool.returns is None:
        return False
    return protocol_version in MODERN_PROTOCOL_VERSIONS or tool.returns.get("type") == "object"


def describe(tool: Tool, protocol_version: str) -> types.Tool:
    """`tool` as MCP's tools/list gives it."""
    hints = tool.annotations
    return types.Tool(
        name=tool.name, title=tool.name.replace("_", " ").replace("-", " ").capitalize(),
        description=tool.description, input_schema=tool.parameters,
        output_schema=tool.returns if _structured(tool, protocol_version) else None,
        annotations=types.ToolAnnotations(read_only_hint=hints.read_only, destructive_hint=hints.destructive,
                                          idempotent_hint=hints.idempotent, open_world_hint=hints.open_world))


def _failed(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


def _answer(tool: Tool, outcome: Outcome, protocol_version: str) -> types.CallToolResult:
    if outcome.status != "ok":
        error = outcome.error or {}
        return _failed(f"{error.get('type')}: {error.get('message')}")
    result = outcome.result
    text = result if isinstance(result, str) else fastjson.dumps(result).decode()
    if not _structured(tool, protocol_version):
        return types.CallToolResult(content=[types.TextContent(text=text)])
    if outcome.truncated:  # cut to a string, it no longer has the shape `returns` promises
        return _failed(f"the result is larger than {tool.ref}'s max_response_bytes "
                       f"({tool.max_response_bytes}); what fits: {text}")
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=result)


def _invalid(exc: ArgumentsInvalid) -> types.CallToolResult:
    lines = [f"- {error['path'] or '(the arguments)'}: {error['message']}" for error in exc.errors]
    return _failed("invalid arguments:\n" + "\n".join(lines))


def _check_param_headers(tool: Tool, arguments: dict[str, Any], ctx: ServerRequestContext[Any, Any]) -> None:
    """A 2026-07-28 client mirrors arguments the schema marks `x-mcp-header` into
    Mcp-Param-* headers, for proxies to route on; the two must agree (HEADER_MISMATCH).

    Here rather than in the SDK, which would run the whole tools/list handler (a
    registry read) before each call to find the schema this handler looks up anyway.
    """
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS or ctx.request is None:
        return
    rejection = validate_mcp_param_headers(tool.parameters, arguments, ctx.request.headers)
    if rejection is not None:
        raise MCPError(rejection.code, rejection.message, rejection.data)


@dataclass(frozen=True)
class Call:
    """What one request's tool calls may use."""

    registry: ToolRegistry
    context: CallContext
    kv: KV | None
    db: Database | None


_CALL: ContextVar[Call] = ContextVar("orchesity_mcp_call")


async def list_tools(ctx: ServerRequestContext[Any, Any],
                     params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    entries = await _CALL.get().registry.entries()
    return types.ListToolsResult(tools=[describe(entry.tool, ctx.protocol_version)
                                        for entry in entries if entry.unavailable is None])


async def call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    call = _CALL.get()
    arguments = params.arguments or {}
    try:
        entry = await call.registry.get(params.name)
        _check_param_headers(entry.tool, arguments, ctx)
        outcome = await invoke(entry, arguments, call.context, kv=call.kv, db=call.db)
    except (ToolNotFound, ToolUnavailable) as exc:
        raise MCPError(types.INVALID_PARAMS, str(exc)) from None
    except ArgumentsInvalid as exc:
        return _invalid(exc)
    return _answer(entry.tool, outcome, ctx.protocol_version)


@lru_cache(maxsize=1)
def server() -> Server[Any]:
    """The MCP server of the registry (one per process; see _CALL for who is calling)."""
    # get_tool_input_schema: no schema for the SDK's own Mcp-Param check (see _check_param_headers)
    built: Server[Any] = Server("orchesity", version=__version__, title="Orchesity tools",
                                on_list_tools=list_tools, on_call_tool=call_tool,
                                get_tool_input_schema=lambda name: None)
    # Its one default middleware opens an OpenTelemetry span per message, a no-op tracer's
    # bookkeeping on every call (~35 µs here) for a deployment that installs no OpenTelemetry.
    built.middleware.clear()
    return built


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """The SDK's DNS-rebinding check: the Host a request names must be one of
    settings.mcp_hosts (a name without a port: on any port), and a browser's Origin one of
    those hosts or CORS_ALLOW_ORIGINS."""
    return _security(tuple(settings.mcp_hosts), settings.CORS_ALLOW_ORIGINS)


@lru_cache(maxsize=8)  # the same settings on every request of a process
def _security(names: tuple[str, ...], cors_origins: str) -> TransportSecuritySettings:
    hosts = []
    for host in names:
        hosts += [host] if urlsplit(f"//{host}").port else [host, f"{host}:*"]
    origins = [f"{scheme}://{host}" for host in hosts for scheme in ("http", "https")]
    origins += [o.strip() for o in cors_origins.split(",") if o.strip()]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                     allowed_origins=origins)


@dataclass
class _Running:
    manager: StreamableHTTPSessionManager
    task: asyncio.Task[None]


# per event loop, per (security, body cap): the manager running there
_RUNNING: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, _Running]] = weakref.WeakKeyDictionary()
_STARTING: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


async def _manager(security: TransportSecuritySettings, max_body_bytes: int) -> StreamableHTTPSessionManager:
    """This loop's running session manager for these settings, started on first use."""
    loop = asyncio.get_running_loop()
    key = (tuple(security.allowed_hosts), tuple(security.allowed_origins), max_body_bytes)
    running = _RUNNING.setdefault(loop, {}).get(key)
    if running is not None and not running.task.done():
        return running.manager
    async with _STARTING.setdefault(loop, asyncio.Lock()):
        running = _RUNNING[loop].get(key)
        if running is None or running.task.done():
            manager = StreamableHTTPSessionManager(server(), json_response=True, stateless=True,
                                                   security_settings=security, max_request_body_size=max_body_bytes)
            started = asyncio.Event()

            async def run() -> None:
                async with manager.run():
                    started.set()
                    await asyncio.Event().wait()  # until the loop's end cancels it

            running = _RUNNING[loop][key] = _Running(manager, loop.create_task(run(), name="mcp-session-manager"))
            await started.wait()
    return running.manager


async def handle(call: Call, scope: Scope, receive: Receive, send: Send, *,
                 security: TransportSecuritySettings, max_body_bytes: int) -> None:
    """Answer one HTTP request to the MCP endpoint on behalf of `call`'s caller."""
    manager = await _manager(security, max_body_bytes)
    token = _CALL.set(call)
    try:
        await manager.handle_request(scope, receive, send)
    finally:
        _CALL.reset(token)
