"""The two servers bench.tools compares, as uvicorn app factories (`uvicorn --factory`)."""

from __future__ import annotations

from typing import Any


def orchesity() -> Any:
    """The tools and MCP functions in one app, as the gateway serves them; configured by
    the environment, as a deployment is."""
    from functions import mcp, tools
    from functions.http import create_app

    return create_app(tools.router, mcp.router, title="Orchesity tools (bench)", loads_tools=True)


def plain() -> Any:
    """core.tools.builtin.text_stats in a plain SDK server: MCPServer over stateless
    streamable HTTP with JSON answers (the mode Orchesity's /mcp answers in), with the
    SDK's own Host check for 127.0.0.1."""
    from mcp.server.mcpserver import MCPServer

    from core.tools.builtin import text_stats

    server = MCPServer("plain")
    server.tool()(text_stats)
    return server.streamable_http_app(stateless_http=True, json_response=True)
