"""The adapter for Gemini's own API (kind "gemini").

    POST {base_url}/v1beta/models/{model}:generateContent                 complete
    POST {base_url}/v1beta/models/{model}:streamGenerateContent?alt=sse   stream
    POST {base_url}/v1beta/models/{model}:batchEmbedContents              embed

The key travels in the `x-goog-api-key` header only, never in the URL (which proxies and
access logs record), and is scrubbed from every error message. Requests are translated
by `gemini_request.py` (tool schemas by `gemini_schema.py`); what cannot be translated is
refused with a ProviderClientError before anything is sent.

HTTP goes straight to one transport per deployment, as on the OpenAI-compatible
adapter's direct path: `http_pool.transport_for` (the providers' pool, or httpx2's own
transport through a proxy the environment names), or the transport passed in (tests:
httpx2's stock one, which pytest-httpx answers for), used as it is and not closed here.

Replies: the first candidate's text parts are the text (thought summaries left out), its
functionCall parts the OpenAI-shaped `tool_calls` (ids `call_…` made here, arguments as
JSON text); finishReason STOP is "stop" ("tool_calls" when the model called a function),
MAX_TOKENS "length", the safety family "content_filter"; usageMetadata gives the usage,
thinking tokens counted as completion tokens. A prompt Gemini blocked is a
ProviderClientError with the block reason.

Streams are server-sent events, each a whole GenerateContentResponse; the one with a
finishReason ends the reply (Gemini sends no [DONE]). A stream that stops before it, or
breaks, is a ProviderStreamCut, whether or not chunks were yielded: the orchestrator
fails over only while no chunk reached the caller. A break after the finishReason loses
nothing, and the stream ends normally.

Gemini's errors are `{"error": {"code", "message", "status", "details"}}`: 429 /
RESOURCE_EXHAUSTED is ProviderRateLimited (Retry-After, else the RetryInfo detail's
retryDelay), 408 / DEADLINE_EXCEEDED ProviderTimeout, other 5xx (and 409, or an error
sent with no code) ProviderUnavailable, 401/403/404 and a rejected key (which Gemini
answers with 400) or FAILED_PRECONDITION (e.g. a region the key may not use)
ProviderAuthError, other 4xx ProviderClientError with Gemini's message.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

import httpx2

from core import fastjson
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
    Usage,
    call_budget,
)
from core.providers.gemini_request import generate_body
from core.providers.gemini_schema import Untranslatable
from core.providers.native import NativeAdapter, redirected
from core.providers.openai_compat import _json_or_text, parse_retry_after
from core.providers.replies import read_body, sse_data

if TYPE_CHECKING:
    from core.providers.config import DeploymentSpec

API_VERSION = "v1beta"
EMBED_BATCH = 100  # batchEmbedContents takes at most 100 requests
_FILTERED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
                       "LANGUAGE"})


class GeminiAdapter(NativeAdapter):
    """Calls one deployment of Gemini's own API. Safe to share across tasks."""

    def __init__(self, spec: DeploymentSpec, *, transport: httpx2.AsyncBaseTransport | None = None) -> None:
        base = cast(str, spec.base_url).rstrip("/")  # every gemini spec has one (its family's default)
        self._model_name = spec.model if "/" in spec.model else f"models/{spec.model}"
        prefix = f"{base}/{API_VERSION}/{quote(self._model_name, safe='/')}"
        self._generate_url = httpx2.URL(prefix + ":generateContent")
        self._stream_url = httpx2.URL(prefix + ":streamGenerateContent?alt=sse")
        self._embed_url = httpx2.URL(prefix + ":batchEmbedContents")
        super().__init__(spec, self._generate_url, transport=transport)
        headers = {"Content-Type": "application/json", "Accept-Encoding": "gzip", "User-Agent": "orchesity"}
        if spec.api_key is not None:
            headers["x-goog-api-key"] = spec.api_key.get_secret_value()
        self._headers = httpx2.Headers({**headers, "Accept": "application/json"})
        self._stream_headers = httpx2.Headers({**headers, "Accept": "text/event-stream"})

    # --- calls -----------------------------------------------------------------------------

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        try:
            return generate_body(request, self.spec)
        except Untranslatable as exc:
            message = f"cannot be sent to Gemini: {exc}"
            raise ProviderUnsupported(message, deployment=self.spec.name, status=400, provider_message=message) from None

    async def complete(self, request: ChatRequest, *, timeout: float | None = None) -> Completion:
        body = self._body(request)
        (data,) = await self._post([(self._generate_url, body)], timeout)
        return self._completion(data, request)

    async def embed(self, request: EmbeddingRequest, *, timeout: float | None = None) -> Embeddings:
        """`:batchEmbedContents`, in batches of EMBED_BATCH texts one after another, within
        one slot and the call's deadline. Gemini reports no usage, so it is counted."""
        spec = self.spec
        common: dict[str, Any] = {"model": self._model_name}
        if request.dimensions is not None:
            common["outputDimensionality"] = request.dimensions
        batches = [request.input[i:i + EMBED_BATCH] for i in range(0, len(request.input), EMBED_BATCH)]
        replies = await self._post([(self._embed_url, {"requests": [
            {**common, "content": {"parts": [{"text": text}]}} for text in batch]}) for batch in batches], timeout)
        vectors: list[list[float]] = []
        for batch, data in zip(batches, replies, strict=True):
            vectors.extend(self._vectors(data, len(batch)))
        return Embeddings(vectors=vectors, model=spec.model, usage=tokens.counted_input(request.input, spec.model))

    async def _post(self, calls: list[tuple[httpx2.URL, dict[str, Any]]], timeout: float | None) -> list[Any]:
        """JSON POSTs, one after another, in one slot, within the call's budget: the decoded
        replies, or a ProviderError."""
        spec = self.spec
        budget = call_budget(spec, timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        await self._slots.acquire(budget, spec.name)
        try:
            direct = self._get_direct()
            replies = []
            async with asyncio.timeout_at(deadline):
                for url, payload in calls:
                    reply = await direct(url, fastjson.dumps(payload), deadline - loop.time())
                    if reply.status >= 300:
                        raise self._status_error(reply.status, _json_or_text(reply.content), reply.headers)
                    replies.append(fastjson.loads(reply.content))
            return replies
        except TimeoutError:
            raise ProviderTimeout(f"no reply within {budget:g}s", deployment=spec.name) from None
        except ProviderError:
            raise
        except Exception as exc:
            raise self._error(exc) from None
        finally:
            self._slots.release()

    def _stream_request(self, payload: dict[str, Any], timeout: float) -> httpx2.Request:
        # The timeout extension bounds each phase (connect, each read): the wait for the
        # first byte and every gap after it.
        phases = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        return httpx2.Request("POST", self._stream_url, headers=self._stream_headers,
                              content=fastjson.dumps(payload), extensions={"timeout": phases})

    async def stream(self, request: ChatRequest, *, timeout: float | None = None) -> AsyncIterator[Chunk]:
        """Content chunks as they arrive, then one final chunk with usage.

        Nothing is sent until the first `__anext__`. Every failure, including a cut
        after some chunks were yielded, is raised from the iterator as a ProviderError.
        """
        spec = self.spec
        body = self._body(request)
        budget = call_budget(spec, timeout)
        await self._slots.acquire(budget, spec.name)
        try:
            try:
                response = await self._get_transport().handle_async_request(
                    self._stream_request(body, budget))
            except Exception as exc:
                raise self._error(exc) from None
            try:
                if response.status_code >= 300:
                    try:
                        content = await read_body(response, spec.max_reply_bytes, spec.name)
                    except Exception as exc:
                        raise self._error(exc) from None
                    raise self._status_error(response.status_code, _json_or_text(content), response.headers)
                async with aclosing(self._read_stream(response, request)) as chunks:
                    async for chunk in chunks:
                        yield chunk
            finally:
                await response.aclose()
        finally:
            self._slots.release()

    async def _read_stream(self, response: httpx2.Response, request: ChatRequest) -> AsyncIterator[Chunk]:
        spec = self.spec
        text_parts: list[str] = []
        calls: list[dict[str, Any]] = []
        finish: str | None = None
        usage: Usage | None = None
        model: str | None = None
        reply_id: str | None = None
        events = 0
        try:
            async for payload in sse_data(response, spec.max_reply_bytes, spec.name):
                try:
                    data = fastjson.loads(payload)
                except ValueError:
                    raise ProviderBadResponse(f"malformed JSON in stream event {events + 1}",
                                              deployment=spec.name) from None
                events += 1
                if not isinstance(data, dict):
                    raise ProviderBadResponse("stream event is not a JSON object", deployment=spec.name)
                candidate = self._candidate(data, required=False)
                model = data.get("modelVersion") or model
                reply_id = data.get("responseId") or reply_id
                usage = _usage(data.get("usageMetadata")) or usage
                if candidate is None:
                    continue
                text, new_calls = self._parts(candidate)
                if text or new_calls:
                    deltas = [{"index": len(calls) + i, **call} for i, call in enumerate(new_calls)]
                    text_parts.append(text)
                    calls.extend(new_calls)
                    yield Chunk(text=text, tool_calls=deltas or None)
                if candidate.get("finishReason"):
                    finish = self._finish(candidate["finishReason"], bool(calls))
        except ProviderError:
            raise
        except Exception as exc:
            if finish is None:
                error = self._error(exc)
                if isinstance(error, ProviderUnavailable) and not isinstance(error, ProviderStreamCut):
                    error = ProviderStreamCut(f"stream broke after {events} events: {error.message}",
                                              deployment=spec.name)
                raise error from None
            # The reply was complete (finishReason seen): nothing the caller needs is lost.
        if finish is None:
            raise ProviderStreamCut(f"stream ended after {events} events without a finishReason",
                                    deployment=spec.name)
        if usage is None:
            usage = tokens.counted_usage(request.messages, "".join(text_parts), spec.model, tool_calls=calls or None)
        yield Chunk(finish_reason=finish, usage=usage, model=model or spec.model, id=reply_id)

    # --- replies ---------------------------------------------------------------------------

    def _completion(self, data: Any, request: ChatRequest) -> Completion:
        spec = self.spec
        if not isinstance(data, dict):
            kind = "text" if isinstance(data, str) else type(data).__name__
            raise ProviderBadResponse(f"expected a JSON object, got {kind}", deployment=spec.name)
        candidate = cast(dict[str, Any], self._candidate(data, required=True))
        text, calls = self._parts(candidate)
        usage = _usage(data.get("usageMetadata"))
        if usage is None:
            usage = tokens.counted_usage(request.messages, text, spec.model, tool_calls=calls or None)
        return Completion(
            text=text,
            model=data.get("modelVersion") or spec.model,
            finish_reason=self._finish(candidate.get("finishReason"), bool(calls)),
            usage=usage,
            id=data.get("responseId"),
            tool_calls=calls or None,
        )

    def _candidate(self, data: dict[str, Any], *, required: bool) -> dict[str, Any] | None:
        """The reply's first candidate; an error or a blocked prompt raises."""
        name = self.spec.name
        if data.get("error"):
            raise self._body_error(data["error"])
        candidates = data.get("candidates")
        if isinstance(candidates, list) and candidates:
            if not isinstance(candidates[0], dict):
                raise ProviderBadResponse("reply candidate is not an object", deployment=name)
            return candidates[0]
        feedback = data.get("promptFeedback")
        reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
        if reason:
            message = f"Gemini blocked the prompt ({reason})"
            raise ProviderClientError(message, deployment=name, status=400, provider_message=message)
        if required:
            raise ProviderBadResponse("reply has no candidates", deployment=name)
        return None

    def _parts(self, candidate: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        """A candidate's text and its function calls, as OpenAI tool calls."""
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for part in parts if isinstance(parts, list) else ():
            if not isinstance(part, dict) or part.get("thought"):
                continue  # thought summaries are not the answer
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            call = part.get("functionCall")
            if isinstance(call, dict):
                if not isinstance(call.get("name"), str):
                    raise ProviderBadResponse("functionCall without a name", deployment=self.spec.name)
                args = call.get("args") or {}
                calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                              "function": {"name": call["name"], "arguments": fastjson.dumps(args).decode()}})
        return "".join(texts), calls

    def _finish(self, reason: Any, called: bool) -> str:
        if reason == "MALFORMED_FUNCTION_CALL":  # nothing usable came back; another try may do
            raise ProviderBadResponse("Gemini produced a malformed function call", deployment=self.spec.name)
        if reason == "MAX_TOKENS":
            return "length"
        if reason in _FILTERED:
            return "content_filter"
        return "tool_calls" if called else "stop"

    def _vectors(self, data: Any, expected: int) -> list[list[float]]:
        name = self.spec.name
        if isinstance(data, dict) and data.get("error"):
            raise self._body_error(data["error"])
        items = data.get("embeddings") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise ProviderBadResponse("reply has no embeddings", deployment=name)
        if len(items) != expected:
            raise ProviderBadResponse(f"reply has {len(items)} embeddings for {expected} inputs", deployment=name)
        vectors = []
        for position, item in enumerate(items):
            values = item.get("values") if isinstance(item, dict) else None
            if not isinstance(values, list) or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in values):
                raise ProviderBadResponse(f"reply embeddings[{position}] is not a vector", deployment=name)
            vectors.append([float(x) for x in values])
        return vectors

    # --- errors ----------------------------------------------------------------------------

    def _status_error(self, status: int, body: object, headers: Mapping[str, str]) -> ProviderError:
        if status < 400:
            return redirected(self.spec, status, headers)
        error = _inner_error(body)
        return self._classify(status, error, body if isinstance(body, str) else "", parse_retry_after(headers))

    def _body_error(self, error: object) -> ProviderError:
        """An error Gemini sent as data (in a 200 body, or as a stream event)."""
        inner = error if isinstance(error, dict) else {"message": str(error)}
        code = inner.get("code")
        return self._classify(code if isinstance(code, int) else None, inner, "", None)

    def _classify(self, status: int | None, error: dict[str, Any], text: str,
                  retry_after: float | None) -> ProviderError:
        message = error.get("message")
        provider_message = self._scrub(message if isinstance(message, str) else text.strip())
        grpc = error.get("status") if isinstance(error.get("status"), str) else ""
        shown = f"HTTP {status}" if status is not None else "error"
        if grpc:
            shown += f" {grpc}"
        common: dict[str, Any] = {
            "deployment": self.spec.name,
            "status": status,
            "retry_after": retry_after if retry_after is not None else _retry_delay(error),
            "provider_message": provider_message or None,
        }
        shown += f": {provider_message}" if provider_message else ""
        if status == 429 or grpc == "RESOURCE_EXHAUSTED":
            return ProviderRateLimited(shown, **common)
        if status == 408 or grpc == "DEADLINE_EXCEEDED":
            return ProviderTimeout(shown, **common)
        if status is None or status >= 500 or status == 409:
            return ProviderUnavailable(shown, **common)
        if status in (401, 403, 404) or grpc == "FAILED_PRECONDITION" or _key_rejected(error):
            return ProviderAuthError(shown, **common)
        return ProviderClientError(shown, **common)


# --- helpers ---------------------------------------------------------------------------------


def _inner_error(body: object) -> dict[str, Any]:
    """The `error` object of an error body ({"error": ...} or, from some endpoints, [{"error": ...}])."""
    if isinstance(body, list) and body:
        body = body[0]
    inner = body.get("error") if isinstance(body, dict) else None
    return inner if isinstance(inner, dict) else {}


def _key_rejected(error: dict[str, Any]) -> bool:
    """Gemini answers a bad or expired key with 400 INVALID_ARGUMENT, reason API_KEY_INVALID."""
    details = error.get("details")
    reasons = [d.get("reason") for d in details if isinstance(d, dict)] if isinstance(details, list) else []
    message = error.get("message")
    return "API_KEY_INVALID" in reasons or (isinstance(message, str) and "API key not valid" in message)


def _retry_delay(error: dict[str, Any]) -> float | None:
    """Seconds from a google.rpc.RetryInfo detail (`"retryDelay": "37s"`, or "1.5s")."""
    details = error.get("details")
    for detail in details if isinstance(details, list) else ():
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return max(0.0, float(delay[:-1]))
            except ValueError:
                return None
    return None


def _usage(raw: Any) -> Usage | None:
    """usageMetadata as Usage: thinking tokens are completion tokens (billed as output),
    tool-use prompt tokens prompt tokens."""
    if not isinstance(raw, dict) or not isinstance(raw.get("promptTokenCount"), int):
        return None

    def count(field: str) -> int:
        value = raw.get(field)
        return value if isinstance(value, int) else 0

    prompt = count("promptTokenCount") + count("toolUsePromptTokenCount")
    completion = count("candidatesTokenCount") + count("thoughtsTokenCount")
    total = raw.get("totalTokenCount")
    return Usage(prompt, completion, total if isinstance(total, int) else prompt + completion)
