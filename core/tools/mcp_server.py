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

Each HTTP request gets a server bound to its caller (`build_server`) and a stateless
session manager of its own (`handle`): the manager's task group lives for that request
only, so nothing depends on the ASGI lifespan, which Mangum with lifespan="off" never runs (the SDK's documented mount,
one manager started in the lifespan, fails there with "Task group is not initialized").
Answers are whole JSON bodies (`json_response`), one per POST, which a Lambda returns as
they are. The Host check (DNS rebinding) is the SDK's, fed by `transport_security`.
"""

from __future__ import annotations

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


def build_server(registry: ToolRegistry, context: CallContext, *, kv: KV | None,
                 db: Database | None) -> Server[Any]:
    """An MCP server of `registry`'s tools, whose calls run with `context` (one caller's)."""

    async def list_tools(ctx: ServerRequestContext[Any, Any],
                         params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        entries = await registry.entries()
        return types.ListToolsResult(tools=[describe(entry.tool, ctx.protocol_version)
                                            for entry in entries if entry.unavailable is None])

    async def call_tool(ctx: ServerRequestContext[Any, Any],
                        params: types.CallToolRequestParams) -> types.CallToolResult:
        arguments = params.arguments or {}
        try:
            entry = await registry.get(params.name)
            _check_param_headers(entry.tool, arguments, ctx)
            outcome = await invoke(entry, arguments, context, kv=kv, db=db)
        except (ToolNotFound, ToolUnavailable) as exc:
            raise MCPError(types.INVALID_PARAMS, str(exc)) from None
        except ArgumentsInvalid as exc:
            return _invalid(exc)
        return _answer(entry.tool, outcome, ctx.protocol_version)

    # get_tool_input_schema: no schema for the SDK's own Mcp-Param check (see _check_param_headers)
    server: Server[Any] = Server("orchesity", version=__version__, title="Orchesity tools",
                                 on_list_tools=list_tools, on_call_tool=call_tool,
                                 get_tool_input_schema=lambda name: None)
    # Its one default middleware opens an OpenTelemetry span per message, a no-op tracer's
    # bookkeeping on every call (~35 µs here) for a deployment that installs no OpenTelemetry.
    server.middleware.clear()
    return server


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


async def handle(server: Server[Any], scope: Scope, receive: Receive, send: Send, *,
                 security: TransportSecuritySettings, max_body_bytes: int) -> None:
    """Answer one HTTP request to the MCP endpoint, with a session manager of its own."""
    manager = StreamableHTTPSessionManager(server, json_response=True, stateless=True, security_settings=security,
                                           max_request_body_size=max_body_bytes)
    async with manager.run():
        await manager.handle_request(scope, receive, send)
