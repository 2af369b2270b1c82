"""What each kind of tool does with arguments that have already been checked.

Each `call_<kind>` returns (result, truncated) or raises ToolFailed with a message fit
to show the caller: secrets are scrubbed from it, and it never carries the request's
headers. Limits (the timeout, the response cap) are passed in by invoke.py.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

from core import templates
from core.tools.loader import setting_value
from core.tools.model import Tool

if TYPE_CHECKING:
    from core.limits import Limits
    from core.orchestrator import Orchestrator
    from core.settings import Settings


class ToolFailed(Exception):
    """The tool ran and failed; `kind` is a short class (http_error, tool_error, …)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message


@dataclass
class CallContext:
    """What a call may use besides its arguments."""

    settings: Settings
    environ: Mapping[str, str]
    orchestrator: Orchestrator | None = None  # for llm tools
    caller: str | None = None                 # who called: the request log of llm tools
    tenant: str | None = None                 # whose cache llm tools read
    limits: Limits | None = None              # the caller's, which llm tools count against
    idempotency_key: str | None = None        # sent by http tools as Idempotency-Key
    timeout: float = 30.0                     # seconds left for the call


def _secrets(names: list[str], ctx: CallContext) -> dict[str, str]:
    values = {name: setting_value(name, ctx.settings, ctx.environ) for name in names}
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise ToolFailed("not_configured", f"not configured: set {', '.join(missing)}")
    return values  # type: ignore[return-value]


def _scrub(text: str, secrets: Mapping[str, str]) -> str:
    for value in secrets.values():
        if value:
            text = text.replace(value, "[redacted]")
    return text


def _url(template: str, arguments: Mapping[str, Any]) -> str:
    """The URL template with values percent-encoded into its path and query (the host
    is fixed: the model refuses a placeholder there)."""
    parts = urlsplit(template)
    encode = lambda value: quote(value, safe="")  # noqa: E731 - one value, one encoding
    path = templates.render(parts.path, arguments, encode=encode)
    query = templates.render(parts.query, arguments, encode=encode)
    return urlunsplit((parts.scheme, parts.netloc, path, query, parts.fragment))


async def call_http(tool: Tool, arguments: Mapping[str, Any], ctx: CallContext) -> tuple[Any, bool]:
    from core.outbound import Outbound, OutboundError, OutboundRefused, OutboundTimeout

    config = tool.http
    assert config is not None
    secrets = _secrets(config.secrets, ctx)
    context = {**arguments, "secrets": secrets}
    headers = {name: templates.render(value, context) for name, value in config.headers.items()}
    if ctx.idempotency_key is not None:
        headers.setdefault("Idempotency-Key", ctx.idempotency_key)
    content = None
    if config.body is not None:
        content = json.dumps(templates.render_value(config.body, arguments)).encode()
        headers.setdefault("Content-Type", "application/json")
    outbound = Outbound(allow_hosts=config.allow_hosts)
    try:
        response = await outbound.request(config.method, _url(config.url, arguments), headers=headers,
                                          content=content, timeout=ctx.timeout,
                                          max_bytes=tool.max_response_bytes)
    except OutboundError as exc:
        kind = "refused" if isinstance(exc, OutboundRefused) else "timeout" if isinstance(exc, OutboundTimeout) \
            else "unreachable"
        raise ToolFailed(kind, _scrub(str(exc), secrets)) from None
    finally:
        await outbound.aclose()
    text = response.body.decode("utf-8", "replace")
    if response.status >= 400:
        raise ToolFailed("http_error", _scrub(f"HTTP {response.status} from {urlsplit(response.url).hostname}: "
                                              f"{text[:500]}", secrets))
    content_type = response.header("content-type") or ""
    if "json" in content_type and not response.truncated:
        try:
            return json.loads(text), False
        except ValueError:
            pass
    return _scrub(text, secrets), response.truncated


_ENTRIES: dict[str, Any] = {}


async def call_entry(entry: str, arguments: Mapping[str, Any]) -> Any:
    """Call the python entry point `module:function` (allow-listed by its caller) with
    `arguments`: an async one on the loop, a sync one in a thread. ToolFailed if it raises."""
    function = _ENTRIES.get(entry)
    if function is None:
        module, _, name = entry.partition(":")
        function = _ENTRIES[entry] = getattr(importlib.import_module(module), name)
    try:
        if inspect.iscoroutinefunction(function):
            return await function(**arguments)
        # a sync function runs in a thread: it cannot stall the event loop
        return await asyncio.to_thread(function, **arguments)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - the tool's own failure, reported to the caller
        raise ToolFailed("tool_error", f"{type(exc).__name__}: {exc}") from None


async def call_python(tool: Tool, arguments: Mapping[str, Any], ctx: CallContext) -> tuple[Any, bool]:
    assert tool.python is not None
    return await call_entry(tool.python.entry, arguments), False


async def complete(orchestrator: Orchestrator, prompt: list[dict[str, str]], values: Mapping[str, Any], *,
                   model: str, max_tokens: int | None, temperature: float | None, endpoint: str,
                   caller: str | None, tenant: str | None, limits: Limits | None, timeout: float,
                   tools: list[dict[str, Any]] | None = None,
                   response_format: dict[str, Any] | None = None) -> Any:
    """One chat completion of the messages `prompt` (templates over `values`: see `chat`)."""
    messages = [{**m, "content": templates.render(m.get("content", ""), values)} for m in prompt]
    return await chat(orchestrator, messages, model=model, max_tokens=max_tokens, temperature=temperature,
                      endpoint=endpoint, caller=caller, tenant=tenant, limits=limits, timeout=timeout,
                      tools=tools, response_format=response_format)


async def chat(orchestrator: Orchestrator, messages: list[dict[str, Any]], *, model: str,
               max_tokens: int | None, temperature: float | None, endpoint: str, caller: str | None,
               tenant: str | None, limits: Limits | None, timeout: float,
               tools: list[dict[str, Any]] | None = None, response_format: dict[str, Any] | None = None) -> Any:
    """One chat completion of `messages` through the orchestrator, so the DWA routes it
    and the cache serves it, counted against `limits`: its first result, or ToolFailed (a
    limit reached, every provider failing). The llm tools and the model-calling steps of
    runs (llm, agent, aggregate, evaluate) all call this."""
    from core.limits import LimitExceeded
    from core.orchestrator import LLMRequest
    from core.providers.base import ChatRequest

    request = LLMRequest(chat=ChatRequest(messages=messages, max_tokens=max_tokens, temperature=temperature,
                                          tools=tools, response_format=response_format),
                         targets=None if model == "auto" else [model], endpoint=endpoint, caller=caller,
                         tenant=tenant, limits=limits, timeout=timeout)
    try:
        orchestration = await orchestrator.complete(request)
    except LimitExceeded as exc:
        raise ToolFailed(exc.verdict.limit or "rate_limited", str(exc)) from None
    result = orchestration.results[0]
    if not result.ok:
        error = result.error or {}
        raise ToolFailed("llm_error", f"{error.get('type')}: {error.get('message')}")
    return result


async def call_llm(tool: Tool, arguments: Mapping[str, Any], ctx: CallContext) -> tuple[Any, bool]:
    config = tool.llm
    assert config is not None and ctx.orchestrator is not None
    prompt = [{"role": "user", "content": config.prompt}] if isinstance(config.prompt, str) else config.prompt
    result = await complete(ctx.orchestrator, prompt, arguments, model=config.model, max_tokens=config.max_tokens,
                            temperature=config.temperature, endpoint="tool", caller=ctx.caller, tenant=ctx.tenant,
                            limits=ctx.limits, timeout=ctx.timeout)
    usage = result.usage
    return {"text": result.text, "provider": result.provider, "model": result.model,
            "cached": result.cached, "tokens": usage.total_tokens if usage else 0}, False


async def call_mcp(tool: Tool, arguments: Mapping[str, Any], ctx: CallContext) -> tuple[Any, bool]:
    from core.tools.mcp_client import call_remote_tool

    config = tool.mcp
    assert config is not None
    secrets = _secrets(config.secrets, ctx)
    headers = {name: templates.render(value, {**arguments, "secrets": secrets})
               for name, value in config.headers.items()}
    try:
        return await call_remote_tool(config.url, config.tool, dict(arguments), headers=headers,
                                      allow_hosts=config.allow_hosts, timeout=ctx.timeout), False
    except ToolFailed as exc:
        raise ToolFailed(exc.kind, _scrub(exc.message, secrets)) from None


CALLS = {"http": call_http, "python": call_python, "llm": call_llm, "mcp": call_mcp}
