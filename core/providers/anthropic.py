"""The native Anthropic adapter: `POST {base_url}/v1/messages`, Anthropic's Messages API.

Anthropic's OpenAI-compatible layer has no prompt caching controls, no extended thinking
and partial tool support, so a deployment of kind `anthropic` speaks the native API.
The translation both ways is `core.anthropic_format`; this module holds the HTTP:

- No SDK: one httpx2 transport per deployment, the shared pool of `http_pool.py` (or a
  proxy's, `transport_for`), or the transport passed in (tests: httpx2's stock one,
  which pytest-httpx answers for; used as it is and not closed here). Every call, plain
  or streamed, is one request sent straight to it, as the OpenAI adapter's direct path.
- Streams are Anthropic's SSE events; `message_stop` (or a stop_reason in
  `message_delta`, when only the tail is lost) ends one, anything else is a cut.
- Every failure becomes a `ProviderError` subclass, with the key scrubbed from any
  message the provider sent: 429 -> rate limited (retry-after), 529 overloaded and 5xx
  -> unavailable, 401/403/404 -> auth, other 4xx -> client error with Anthropic's message.
- A request the Messages API cannot express is refused with a ProviderClientError that
  names the field, before anything is sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, cast

import httpx2

from core import __version__, anthropic_format, fastjson
from core.anthropic_format import MalformedReply, StreamReader, Untranslatable
from core.providers import tokens
from core.providers.base import (
    ChatRequest,
    Chunk,
    Completion,
    EmbeddingRequest,
    Embeddings,
    ProviderAuthError,
    ProviderBadResponse,
    ProviderClientError,
    ProviderError,
    ProviderRateLimited,
    ProviderStreamCut,
    ProviderTimeout,
    ProviderUnsupported,
    ProviderUnavailable,
    call_budget,
)
from core.providers.native import NativeAdapter, redirected
from core.providers.openai_compat import _json_or_text, _tool_call_text, limit_reset, parse_retry_after
from core.providers.replies import read_body, sse_data

if TYPE_CHECKING:
    from core.providers.config import DeploymentSpec

MESSAGES_PATH = "/v1/messages"
_REQUEST_FIELDS = {f.name for f in dataclasses.fields(ChatRequest)} - {"messages", "extra"}


class AnthropicAdapter(NativeAdapter):
    """Calls one deployment over Anthropic's Messages API. Safe to share across tasks."""

    def __init__(self, spec: DeploymentSpec, *, transport: httpx2.AsyncBaseTransport | None = None) -> None:
        base = cast(str, spec.base_url).rstrip("/")  # set for every non-simulated spec (its validator)
        self._url = httpx2.URL(base + MESSAGES_PATH)
        super().__init__(spec, self._url, transport=transport)
        self._headers = httpx2.Headers({"content-type": "application/json", "accept": "application/json",
                                        "anthropic-version": anthropic_format.VERSION,
                                        "user-agent": f"orchesity/{__version__}"})
        if spec.api_key is not None:
            self._headers["x-api-key"] = spec.api_key.get_secret_value()

    def _body(self, request: ChatRequest, stream: bool) -> bytes:
        spec = self.spec
        if spec.drop_params:  # what the operator chose to serve without (e.g. seed)
            drop = set(spec.drop_params)
            request = dataclasses.replace(
                request, **{name: None for name in drop & _REQUEST_FIELDS},
                extra={k: v for k, v in request.extra.items() if k not in drop})
        try:
            body = anthropic_format.request_body(request, model=spec.model, max_tokens=spec.default_max_tokens,
                                                 stream=stream)
        except Untranslatable as exc:
            raise ProviderUnsupported(f"cannot be sent to Anthropic's Messages API: {exc}", deployment=spec.name,
                                      status=400, provider_message=f"{exc}") from None
        if spec.params:
            body = {**spec.params, **body}
        return fastjson.dumps(body)

    async def _send(self, body: bytes, budget: float) -> httpx2.Response:
        """The reply's head (its body still to read), or the ProviderError of its status."""
        response = await self._get_direct().open(self._url, body, budget)
        if response.status_code >= 300:
            try:
                content = await read_body(response, self.spec.max_reply_bytes, self.spec.name)
            finally:
                await response.aclose()
            raise self._status_error(response.status_code, _json_or_text(content), response.headers)
        return response

    async def complete(self, request: ChatRequest, *, timeout: float | None = None) -> Completion:
        spec = self.spec
        body = self._body(request, stream=False)
        budget = call_budget(spec, timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        await self._slots.acquire(budget, spec.name)
        try:
            remaining = deadline - loop.time()
            async with asyncio.timeout(remaining):
                reply = await self._get_direct()(self._url, body, remaining)
            if reply.status >= 300:
                raise self._status_error(reply.status, _json_or_text(reply.content), reply.headers)
            data = fastjson.loads(reply.content)
            if isinstance(data, dict) and data.get("type") == "error":
                raise self._event_error(data.get("error"))
            completion = anthropic_format.completion(data)
        except TimeoutError:
            raise ProviderTimeout(f"no reply within {budget:g}s", deployment=spec.name) from None
        except ProviderError:
            raise
        except MalformedReply as exc:
            raise ProviderBadResponse(str(exc), deployment=spec.name) from None
        except Exception as exc:
            raise self._error(exc) from None
        finally:
            self._slots.release()
        completion.model = completion.model or spec.model
        completion.limit_reset_s = limit_reset(reply.headers)
        if completion.usage.counted:
            completion.usage = tokens.counted_usage(request.messages, completion.text, spec.model,
                                                    tool_calls=completion.tool_calls)
        return completion

    async def embed(self, request: EmbeddingRequest, *, timeout: float | None = None) -> Embeddings:
        """Never called: Anthropic has no embeddings endpoint, and config refuses `serves`
        embeddings for this kind."""
        raise ProviderClientError("Anthropic's API serves no embeddings", deployment=self.spec.name, status=400)

    async def stream(self, request: ChatRequest, *, timeout: float | None = None) -> AsyncIterator[Chunk]:
        """Content chunks as they arrive, then one final chunk with usage.

        Nothing is sent until the first `__anext__`. Every failure, including a cut
        after some chunks were yielded, is raised from the iterator as a ProviderError.
        """
        spec = self.spec
        body = self._body(request, stream=True)
        budget = call_budget(spec, timeout)
        await self._slots.acquire(budget, spec.name)
        try:
            try:
                async with asyncio.timeout(budget):  # the first byte; each gap after is the read timeout's
                    response = await self._send(body, budget)
            except TimeoutError:
                raise ProviderTimeout(f"no reply within {budget:g}s", deployment=spec.name) from None
            except ProviderError:
                raise
            except Exception as exc:
                raise self._error(exc) from None
            try:
                async with aclosing(self._read_stream(response, request)) as chunks:
                    async for chunk in chunks:
                        if chunk.is_final:
                            chunk.limit_reset_s = limit_reset(response.headers)
                        yield chunk
            finally:
                await response.aclose()
        finally:
            self._slots.release()

    async def _read_stream(self, response: httpx2.Response, request: ChatRequest) -> AsyncIterator[Chunk]:
        spec = self.spec
        reader = StreamReader()
        parts: list[str] = []
        calls: list[dict[str, Any]] = []
        try:
            async for payload in sse_data(response, spec.max_reply_bytes, spec.name):
                try:
                    event = fastjson.loads(payload)
                except ValueError:
                    raise ProviderBadResponse(f"malformed JSON in stream event {reader.events + 1}",
                                              deployment=spec.name) from None
                if isinstance(event, dict) and event.get("type") == "error":
                    raise self._event_error(event.get("error"))
                chunk = reader.feed(event)
                if chunk is not None:
                    parts.append(chunk.text)
                    calls.extend(chunk.tool_calls or ())
                    yield chunk
                if reader.done:
                    break
        except ProviderError:
            raise
        except MalformedReply as exc:
            raise ProviderBadResponse(str(exc), deployment=spec.name) from None
        except Exception as exc:
            if reader.stop_reason is None:
                error = self._error(exc)
                if isinstance(error, ProviderUnavailable) and not isinstance(error, ProviderStreamCut):
                    error = ProviderStreamCut(f"stream broke after {reader.events} events: {error.message}",
                                              deployment=spec.name)
                raise error from None
            # The reply was complete (stop_reason seen); only message_stop was lost.
        if not reader.done and reader.stop_reason is None:
            raise ProviderStreamCut(f"stream ended after {reader.events} events without a stop_reason",
                                    deployment=spec.name)
        usage = reader.usage
        if usage is None:
            usage = tokens.counted_usage(request.messages, "".join(parts) + "".join(_tool_call_text(calls)),
                                         spec.model)
        yield Chunk(finish_reason=anthropic_format.finish_reason(reader.stop_reason), usage=usage,
                    model=reader.model or spec.model, id=reader.id, stop_sequence=reader.stop_sequence)

    # --- errors ----------------------------------------------------------------------------

    def _status_error(self, status: int, body: object, headers: Mapping[str, str]) -> ProviderError:
        if status < 400:
            return redirected(self.spec, status, headers)
        provider_message = self._scrub(_message(body))
        message = f"HTTP {status}" + (f": {provider_message}" if provider_message else "")
        common: dict[str, Any] = {"deployment": self.spec.name, "status": status,
                                  "retry_after": parse_retry_after(headers),
                                  "provider_message": provider_message or None}
        if status == 429:
            return ProviderRateLimited(message, **common)
        if status == 408:
            return ProviderTimeout(message, **common)
        if status >= 500 or status == 409:  # 529: overloaded
            return ProviderUnavailable(message, **common)
        if status in (401, 403, 404):
            return ProviderAuthError(message, **common)
        return ProviderClientError(message, **common)

    def _event_error(self, error: object) -> ProviderError:
        """An error Anthropic sent as data (an `error` stream event, or a 200 body)."""
        name = self.spec.name
        provider_message = self._scrub(_message({"error": error})) or "error reported by the provider"
        kind = error.get("type") if isinstance(error, dict) else None
        common: dict[str, Any] = {"deployment": name, "provider_message": provider_message}
        if kind == "rate_limit_error":
            return ProviderRateLimited(provider_message, **common)
        if kind in ("invalid_request_error", "request_too_large"):
            return ProviderClientError(provider_message, **common)
        if kind in ("authentication_error", "permission_error", "not_found_error"):
            return ProviderAuthError(provider_message, **common)
        return ProviderUnavailable(provider_message, **common)  # overloaded_error, api_error


def _message(body: object) -> str:
    """Anthropic's own message from an error body: {"type": "error", "error": {"type", "message"}}."""
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        return ""
    return body.strip() if isinstance(body, str) else ""
