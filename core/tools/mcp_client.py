"""One tool of a remote MCP server, called: what a tool of kind `mcp` does (kinds.call_mcp).

Over streamable HTTP with the SDK's own client (`mcp.Client` on `streamable_http_client`),
which settles the protocol version (2026-07-28's discover, or the initialize handshake
of an older server). It lists the server's tools before calling one: that is how a tool
the server does not have is told apart from one that failed (servers answer an unknown
name either way), and the SDK needs the listing anyway, to check a structured result
against the tool's outputSchema and to send the Mcp-Param headers a 2026 server expects.

Every request goes through the connect-time guard on user-supplied URLs (core/outbound.py:
public addresses only, unless the host is in `allow_hosts`); `transport` replaces it.
The whole exchange is bounded by `timeout`.

The answer is the result's structuredContent when it has one, else its content: a text
JSON-decoded when it parses. Anything else raises ToolFailed naming the server's host
and the tool, never the headers (they may carry a secret): "timeout", or "mcp_error" for
an isError result (with its text), an MCP error, a failed connection, an unknown tool.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from core.tools.kinds import ToolFailed

_LIST_PAGES = 20  # a server whose tools/list never ends is not waited on forever


def guarded_transport(allow_hosts: list[str]) -> httpx2.AsyncBaseTransport:
    """The transport every request to a user-supplied URL takes (core/outbound.py)."""
    from core.outbound import Outbound

    return Outbound(allow_hosts=allow_hosts).httpx_transport()


def _value(block: types.ContentBlock) -> Any:
    if isinstance(block, types.TextContent):
        try:
            return json.loads(block.text)
        except ValueError:
            return block.text
    return block.model_dump(mode="json", by_alias=True, exclude_none=True)


def _text(result: types.CallToolResult) -> str:
    texts = [block.text for block in result.content if isinstance(block, types.TextContent)]
    return " ".join(texts)[:1000] or "(no message)"


async def _listed(client: Client, tool: str) -> bool:
    cursor = None
    for _ in range(_LIST_PAGES):
        page = await client.list_tools(cursor=cursor)
        if any(listed.name == tool for listed in page.tools):
            return True
        cursor = page.next_cursor
        if cursor is None:
            return False
    return False


async def _call(url: str, tool: str, arguments: Mapping[str, Any], headers: Mapping[str, str],
                transport: httpx2.AsyncBaseTransport, timeout: float) -> types.CallToolResult | None:
    """The tool's result, or None when the server does not list it."""
    async with httpx2.AsyncClient(transport=transport, headers=dict(headers), timeout=timeout) as http:
        async with Client(streamable_http_client(url, http_client=http), read_timeout_seconds=timeout,
                          cache=None) as client:
            if not await _listed(client, tool):
                return None
            return await client.call_tool(tool, dict(arguments))


def _leaf(exc: BaseException) -> BaseException:
    """The first exception inside the SDK's task-group wrapping."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def call_remote_tool(url: str, tool: str, arguments: Mapping[str, Any], *, headers: Mapping[str, str],
                           allow_hosts: list[str], timeout: float,
                           transport: httpx2.AsyncBaseTransport | None = None) -> Any:
    """The result of `tool` on the MCP server at `url` (ToolFailed when there is none)."""
    where = f"tool {tool!r} on {urlsplit(url).hostname}"
    try:
        async with asyncio.timeout(timeout):
            result = await _call(url, tool, arguments, headers, transport or guarded_transport(allow_hosts), timeout)
    except Exception as exc:  # noqa: BLE001 - each is reported by what it says, below
        raise _failure(_leaf(exc), where, timeout) from None
    if result is None:
        raise ToolFailed("mcp_error", f"{where}: the server has no such tool")
    if result.is_error:
        raise ToolFailed("mcp_error", f"{where} failed: {_text(result)}")
    if result.structured_content is not None:
        return result.structured_content
    values = [_value(block) for block in result.content]
    return values[0] if len(values) == 1 else (values or None)


def _failure(exc: BaseException, where: str, timeout: float) -> ToolFailed:
    if isinstance(exc, TimeoutError):
        return ToolFailed("timeout", f"{where} gave no answer within {timeout:g}s")
    if isinstance(exc, MCPError):
        return ToolFailed("mcp_error", f"{where}: MCP error {exc.code}: {exc.message}")
    # a connection that failed, an answer the SDK found malformed (off its outputSchema, not MCP)
    return ToolFailed("mcp_error", f"{where}: {type(exc).__name__}: {str(exc)[:300]}")
