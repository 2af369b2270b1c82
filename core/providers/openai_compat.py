"""One adapter for every OpenAI-compatible chat API, on the official openai SDK.

OpenAI, xAI (Grok), Gemini and Anthropic all serve `POST {base_url}/chat/completions`
in OpenAI's schema, and so do Ollama, vLLM, llama.cpp and most company proxies; only
the base URL, key and model differ, and those come from the `DeploymentSpec`.

How it uses the SDK, and why:
- One `AsyncOpenAI` per deployment, created on first use (importing openai takes about
  half a second here; a function that never calls a provider never pays it), with
  `max_retries=0`: failover between deployments is the orchestrator's job, and SDK
  retries would spend the request's deadline on one provider.
- Each deployment has one httpx2 transport, which the adapter builds and holds: httpx2's
  own `AsyncHTTPTransport` through a proxy when HTTPS_PROXY / HTTP_PROXY / ALL_PROXY name
  one for the deployment's URL and NO_PROXY does not exempt its host, else the pool of
  `http_pool.py`. The SDK's httpx2 client sends through it (a client given a transport
  reads no proxy from the environment itself, hence the choice here), and so does the
  direct path below. A transport passed in (tests: httpx2's stock one, which
  pytest-httpx answers for) is used as it is, for every call, and not closed here.
- Calls, streamed or not, are sent straight to that transport (direct.py), with the URL
  and headers the SDK would send built once per deployment from its client. Under load
  the SDK's per-call request building (options, URL and header merging, its retry and
  auth wrappers) was about half of the gateway's CPU per request, and httpx2's client
  layer (URL merging, auth and redirect wrappers, cookies) a fifth of what was left
  (py-spy, bench/overhead). Neither does anything a provider call needs; the
  status-to-error mapping below is ours either way. Streams went through the SDK's
  `client.post(..., stream=True)` until an error status with a body without end showed
  that the SDK reads such a body whole (2.5 GB in 8 s); ours is read within the
  deployment's `max_reply_bytes` (replies.py).
- Streams are read as raw SSE from the response, so the end of a stream is known
  exactly: `data: [DONE]` or a finish_reason ends it; anything else is a cut.
- Every exception becomes a `ProviderError` subclass (see `base.py`), raised `from None`:
  the SDK's own exception quotes the provider's message verbatim, and a provider may
  echo a key in it. Ours carries the message with the key scrubbed.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, cast

import httpx2

from core import fastjson, heap
from core.providers import tokens
from core.providers.native import redirected, scrub
from core.providers.replies import read_body, sse_data
from core.providers.vectors import decode_base64
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
    ProviderUnavailable,
    Slots,
    Usage,
    call_budget,
)

if TYPE_CHECKING:
    from openai import AsyncOpenAI

    from core.providers.config import DeploymentSpec
    from core.providers.direct import DirectPost

CHAT_PATH = "/chat/completions"
EMBEDDINGS_PATH = "/embeddings"


class OpenAICompatAdapter:
    """Calls one OpenAI-compatible deployment. Safe to share across tasks."""

    def __init__(self, spec: DeploymentSpec, *, transport: httpx2.AsyncBaseTransport | None = None) -> None:
        self.spec = spec
        self._given_transport = transport  # owned by the caller, not closed here
        self._client: AsyncOpenAI | None = None
        self._slots = Slots(spec.max_concurrency)
        # Set with the SDK client, on first use: the direct path's sender (on the transport
        # every call takes), its URLs and headers.
        self._direct: DirectPost
        self._urls: dict[str, httpx2.URL]
        self._headers = httpx2.Headers()
        self._drop = tuple(spec.drop_params)

    def __repr__(self) -> str:
        return f"<OpenAICompatAdapter {self.spec.name} {self.spec.model} at {self.spec.describe()['base_url']}>"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def in_flight(self) -> int:
        return self._slots.in_flight

    # --- client ----------------------------------------------------------------------------

    def _get_client(self) -> AsyncOpenAI:
        client = self._client
        if client is None:
            client = self._client = self._make_client()
        return client

    def _make_client(self) -> AsyncOpenAI:
        from openai import AsyncOpenAI

        from core.providers.direct import DirectPost
        from core.providers.http_pool import transport_for

        spec = self.spec
        key = spec.api_key.get_secret_value() if spec.api_key is not None else None
        base_url = cast(str, spec.base_url)  # set for every OpenAI-compatible spec (its validator)
        # The pool's cap is the deployment's max_concurrency and nothing else: with none set
        # ("no limit of ours") a fixed cap here queued every call past it silently.
        transport = self._given_transport or transport_for(httpx2.URL(base_url), limits=httpx2.Limits(
            max_connections=spec.max_concurrency, max_keepalive_connections=64))
        # One HTTP client per deployment, for the SDK (streams), on the direct path's transport.
        http = httpx2.AsyncClient(timeout=spec.timeout_seconds, transport=transport)
        client = AsyncOpenAI(
            # The SDK insists on some credential; a keyless server (Ollama, vLLM) gets a
            # placeholder that the per-call options below remove from the request.
            api_key=key or "no-key",
            base_url=base_url,
            max_retries=0,
            timeout=spec.timeout_seconds,
            http_client=http,
        )
        base = str(client.base_url).rstrip("/")
        self._urls = {path: httpx2.URL(base + path) for path in (CHAT_PATH, EMBEDDINGS_PATH)}
        if spec.provider != "openai":
            # The SDK reads OPENAI_ORG_ID / OPENAI_PROJECT_ID / OPENAI_ADMIN_KEY from the
            # environment; they are OpenAI's business only.
            client.organization = None
            client.project = None
            client.admin_api_key = None
        # The client's defaults (Accept-Encoding, Connection), then what the SDK sends.
        self._headers = httpx2.Headers(http.headers)
        self._headers.update({"Content-Type": "application/json", "Accept": "application/json",
                              "User-Agent": client.user_agent})
        if key is not None:
            self._headers["Authorization"] = f"Bearer {key}"
        if client.organization:  # OpenAI's own deployments only: cleared above for others
            self._headers["OpenAI-Organization"] = client.organization
        if client.project:
            self._headers["OpenAI-Project"] = client.project
        self._direct = DirectPost(transport, self._headers, spec.max_reply_bytes, spec.name)
        heap.settle()  # the SDK is loaded for good: keep it out of the GC's full scans
        return client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._given_transport is None:
            await client.close()  # and with it the transport

    # --- requests ------------------------------------------------------------------------

    def _body(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        spec = self.spec
        body: dict[str, Any] = dict(spec.params) if spec.params else {}
        if request.extra:
            body.update(request.extra)
        body["model"] = spec.model
        body["messages"] = request.messages
        max_tokens = request.max_tokens or spec.default_max_tokens
        if max_tokens is not None and "max_completion_tokens" not in body:
            body["max_tokens"] = max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop is not None:
            body["stop"] = request.stop
        if request.tools is not None:
            body["tools"] = request.tools
        if request.response_format is not None:
            body["response_format"] = request.response_format
        if request.seed is not None:
            body["seed"] = request.seed
        if request.user is not None:
            body["user"] = request.user
        if stream:
            body["stream"] = True
            if spec.stream_usage:
                body["stream_options"] = {"include_usage": True}
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        for name in self._drop:
            body.pop(name, None)
        return body

    async def complete(self, request: ChatRequest, *, timeout: float | None = None) -> Completion:
        data, headers = await self._post(CHAT_PATH, self._body(request, stream=False), timeout)
        completion = self._completion(data, request)
        completion.limit_reset_s = limit_reset(headers)
        return completion

    async def embed(self, request: EmbeddingRequest, *, timeout: float | None = None) -> Embeddings:
        """`POST {base_url}/embeddings`, always asking for floats (the gateway encodes base64
        itself when its caller wants it, and caches floats)."""
        spec = self.spec
        body: dict[str, Any] = {"model": spec.model, "input": request.input, "encoding_format": "float"}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        if request.user is not None:
            body["user"] = request.user
        data, _ = await self._post(EMBEDDINGS_PATH, body, timeout)
        return self._embeddings(data, request)

    async def _post(self, path: str, payload: dict[str, Any], timeout: float | None) -> tuple[Any, Mapping[str, str]]:
        """One JSON POST on the direct path (see the module docstring), in a slot, within
        the call's budget: the decoded reply and its headers, or a ProviderError."""
        spec = self.spec
        budget = call_budget(spec, timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        await self._slots.acquire(budget, spec.name)
        try:
            if self._client is None:
                self._get_client()
            remaining = deadline - loop.time()
            body = fastjson.dumps(payload)
            # The phases' timeouts bound each phase (connect, each read); this bounds the call.
            async with asyncio.timeout(remaining):
                reply = await self._direct(self._urls[path], body, remaining)
            if reply.status >= 300:
                raise self._status_error(reply.status, _json_or_text(reply.content), reply.headers) from None
            return fastjson.loads(reply.content), reply.headers
        except TimeoutError:
            raise ProviderTimeout(f"no reply within {budget:g}s", deployment=spec.name) from None
        except ProviderError:
            raise
        except Exception as exc:
            raise self._error(exc) from None
        finally:
            self._slots.release()

    async def stream(self, request: ChatRequest, *, timeout: float | None = None) -> AsyncIterator[Chunk]:
        """Content chunks as they arrive, then one final chunk with usage.

        Nothing is sent until the first `__anext__`. Every failure, including a cut
        after some chunks were yielded, is raised from the iterator as a ProviderError.
        """
        spec = self.spec
        budget = call_budget(spec, timeout)
        await self._slots.acquire(budget, spec.name)
        try:
            if self._client is None:
                self._get_client()
            try:
                response = await self._direct.open(self._urls[CHAT_PATH], fastjson.dumps(self._body(request, stream=True)),
                                                   budget)
            except Exception as exc:
                raise self._error(exc) from None
            try:
                if response.status_code >= 300:  # its body read within the limit: the SDK would read it all
                    try:
                        content = await read_body(response, spec.max_reply_bytes, spec.name)
                    except Exception as exc:
                        raise self._error(exc) from None
                    raise self._status_error(response.status_code, _json_or_text(content), response.headers)
                if "json" in response.headers.get("content-type", ""):
                    # A server that ignored `stream: true` and answered in one piece.
                    content = await read_body(response, spec.max_reply_bytes, spec.name)
                    completion = self._completion(fastjson.loads(content), request)
                    if completion.text or completion.tool_calls:
                        yield Chunk(text=completion.text, tool_calls=completion.tool_calls)
                    yield Chunk(
                        finish_reason=completion.finish_reason,
                        usage=completion.usage,
                        model=completion.model,
                        id=completion.id,
                        limit_reset_s=limit_reset(response.headers),
                    )
                    return
                async with aclosing(self._read_stream(response, request)) as chunks:
                    async for chunk in chunks:
                        if chunk.is_final:
                            chunk.limit_reset_s = limit_reset(response.headers)
                        yield chunk
            except ProviderError:
                raise
            except ValueError as exc:
                raise ProviderBadResponse(f"unparseable stream: {type(exc).__name__}", deployment=spec.name) from None
            finally:
                await response.aclose()
        finally:
            self._slots.release()

    async def _read_stream(self, response: httpx2.Response, request: ChatRequest) -> AsyncIterator[Chunk]:
        spec = self.spec
        text_parts: list[str] = []
        tool_parts: list[str] = []
        finish_reason: str | None = None
        usage: Usage | None = None
        model: str | None = None
        reply_id: str | None = None
        done = False
        events = 0
        try:
            async for payload in sse_data(response, spec.max_reply_bytes, spec.name):
                if payload == "[DONE]":
                    done = True
                    break
                try:
                    data = fastjson.loads(payload)
                except ValueError:
                    raise ProviderBadResponse(
                        f"malformed JSON in stream event {events + 1}", deployment=spec.name
                    ) from None
                events += 1
                if not isinstance(data, dict):
                    raise ProviderBadResponse("stream event is not a JSON object", deployment=spec.name)
                if data.get("error"):
                    raise self._stream_error(data["error"])
                if model is None:
                    model = data.get("model")
                    reply_id = data.get("id")
                if data.get("usage"):
                    usage = _usage(data["usage"]) or usage
                choices = data.get("choices")
                if not choices:
                    continue
                choice = choices[0]
                if not isinstance(choice, dict):
                    raise ProviderBadResponse("stream choice is not an object", deployment=spec.name)
                delta = choice.get("delta") or {}
                content = delta.get("content")
                tool_calls = delta.get("tool_calls")
                logprobs = _logprobs(choice)
                if content or tool_calls or logprobs:
                    if content:
                        if not isinstance(content, str):
                            content = _text(content)
                        text_parts.append(content)
                    if tool_calls:
                        tool_parts.extend(_tool_call_text(tool_calls))
                    yield Chunk(text=content or "", tool_calls=tool_calls or None, logprobs=logprobs)
                if choice.get("finish_reason"):
                    finish_reason = choice["finish_reason"]
        except ProviderError:
            raise
        except Exception as exc:
            if finish_reason is None:
                error = self._error(exc)
                if isinstance(error, ProviderUnavailable) and not isinstance(error, ProviderStreamCut):
                    error = ProviderStreamCut(
                        f"stream broke after {events} events: {error.message}", deployment=spec.name
                    )
                raise error from None
            # The reply was complete (finish_reason seen); only the usage/[DONE] tail was
            # lost. The caller has the whole answer, so count the usage and finish.
        if not done and finish_reason is None:
            raise ProviderStreamCut(
                f"stream ended after {events} events without finish_reason or [DONE]", deployment=spec.name
            )
        if usage is None:
            usage = tokens.counted_usage(request.messages, "".join(text_parts) + "".join(tool_parts), spec.model)
        yield Chunk(finish_reason=finish_reason, usage=usage, model=model or spec.model, id=reply_id)

    # --- replies ---------------------------------------------------------------------------

    def _completion(self, data: Any, request: ChatRequest) -> Completion:
        spec = self.spec
        _require_object(data, spec.name)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            if data.get("error"):
                raise self._stream_error(data["error"])
            raise ProviderBadResponse("reply has no choices", deployment=spec.name)
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise ProviderBadResponse("reply choice has no message", deployment=spec.name)
        content = message.get("content")
        text = content if isinstance(content, str) else _text(content)
        tool_calls = message.get("tool_calls") or None
        usage = _usage(data.get("usage"))
        if usage is None:
            tool_text = "".join(_tool_call_text(tool_calls)) if tool_calls else ""
            usage = tokens.counted_usage(request.messages, text + tool_text, spec.model)
        return Completion(
            text=text,
            model=data.get("model") or spec.model,
            finish_reason=choice.get("finish_reason"),
            usage=usage,
            id=data.get("id"),
            tool_calls=tool_calls,
            logprobs=_logprobs(choice),
        )

    def _embeddings(self, data: Any, request: EmbeddingRequest) -> Embeddings:
        spec = self.spec
        _require_object(data, spec.name)
        items = data.get("data")
        if not isinstance(items, list):
            if data.get("error"):
                raise self._stream_error(data["error"])
            raise ProviderBadResponse("reply has no data", deployment=spec.name)
        vectors: list[list[float] | None] = [None] * len(request.input)
        for position, item in enumerate(items):
            index = item.get("index", position) if isinstance(item, dict) else None
            vector = _vector(item.get("embedding")) if isinstance(item, dict) else None
            if not isinstance(index, int) or not 0 <= index < len(vectors) or vector is None:
                raise ProviderBadResponse(f"reply data[{position}] is not an embedding of the input",
                                          deployment=spec.name)
            vectors[index] = vector
        if any(v is None for v in vectors):
            raise ProviderBadResponse(f"reply has {len(items)} embeddings for {len(vectors)} inputs",
                                      deployment=spec.name)
        raw = data.get("usage")
        prompt = raw.get("prompt_tokens") if isinstance(raw, dict) else None
        if isinstance(prompt, int):
            total = raw.get("total_tokens")
            usage = Usage(prompt, 0, total if isinstance(total, int) else prompt)
        else:
            usage = tokens.counted_input(request.input, spec.model)
        return Embeddings(vectors=cast(list[list[float]], vectors), model=data.get("model") or spec.model,
                          usage=usage)

    # --- errors ----------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return scrub(self.spec, text)

    def _error(self, exc: BaseException) -> ProviderError:
        """The ProviderError for an exception raised by the SDK or httpx2."""
        import openai

        name = self.spec.name
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, openai.APITimeoutError) or isinstance(exc, httpx2.TimeoutException):
            return ProviderTimeout("timed out", deployment=name)
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            detail = f"{type(cause).__name__}: {cause}" if cause is not None else "connection error"
            return ProviderUnavailable(f"connection failed ({self._scrub(detail)})", deployment=name)
        if isinstance(exc, openai.APIStatusError):
            return self._status_error(exc.status_code, exc.body, exc.response.headers)
        if isinstance(exc, openai.APIResponseValidationError):
            return ProviderBadResponse(f"reply does not fit the schema: {exc.message}", deployment=name)
        if isinstance(exc, openai.APIError):
            return self._stream_error(exc.body if exc.body is not None else {"message": exc.message})
        if isinstance(exc, (ValueError, httpx2.DecodingError)):  # JSONDecodeError, bad encoding
            return ProviderBadResponse(f"unparseable reply: {type(exc).__name__}", deployment=name)
        if isinstance(exc, httpx2.TransportError):
            return ProviderUnavailable(f"connection failed ({type(exc).__name__})", deployment=name)
        if isinstance(exc, openai.OpenAIError):
            return ProviderUnavailable(f"{type(exc).__name__}: {self._scrub(str(exc))}", deployment=name)
        raise exc  # not a provider failure: a bug of ours, let it surface as it is

    def _status_error(self, status: int, body: object, headers: Mapping[str, str]) -> ProviderError:
        if status < 400:
            return redirected(self.spec, status, headers)
        name = self.spec.name
        provider_message = self._scrub(_error_message(body))
        message = f"HTTP {status}" + (f": {provider_message}" if provider_message else "")
        retry_after = parse_retry_after(headers)
        common: dict[str, Any] = {
            "deployment": name,
            "status": status,
            "retry_after": retry_after,
            "provider_message": provider_message or None,
        }
        if status == 429:
            return ProviderRateLimited(message, **common)
        if status == 408:
            return ProviderTimeout(message, **common)
        if status >= 500:
            return ProviderUnavailable(message, **common)
        if status in (401, 403, 404) or (status == 400 and _is_key_rejection(body)):
            return ProviderAuthError(message, **common)
        if status == 409:  # a conflict on the provider's side; another deployment will do
            return ProviderUnavailable(message, **common)
        return ProviderClientError(message, **common)

    def _stream_error(self, error: object) -> ProviderError:
        """An error the provider sent as data (an SSE error event, or in a 200 body)."""
        name = self.spec.name
        provider_message = self._scrub(_error_message(error)) or "error reported by the provider"
        kind = ""
        if isinstance(error, dict):
            kind = f"{error.get('type') or ''} {error.get('code') or ''}".lower()
        if "rate_limit" in kind or "429" in kind:
            return ProviderRateLimited(provider_message, deployment=name, provider_message=provider_message)
        if "invalid_request" in kind or "400" in kind:
            return ProviderClientError(provider_message, deployment=name, provider_message=provider_message)
        return ProviderUnavailable(provider_message, deployment=name, provider_message=provider_message)


# --- helpers ---------------------------------------------------------------------------------


def _require_object(data: Any, deployment: str) -> None:
    if not isinstance(data, dict):
        kind = "text" if isinstance(data, str) else type(data).__name__
        raise ProviderBadResponse(f"expected a JSON object, got {kind}", deployment=deployment)


def _json_or_text(content: bytes) -> object:
    """An error reply's body: JSON when it is JSON, else its text (for the message)."""
    try:
        return fastjson.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace")


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt = raw.get("prompt_tokens")
    completion = raw.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    total = raw.get("total_tokens")
    return Usage(prompt, completion, total if isinstance(total, int) else prompt + completion)


def _vector(raw: Any) -> list[float] | None:
    """An embedding as floats: a list of numbers, or base64 float32 (a server that ignored
    encoding_format)."""
    if isinstance(raw, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in raw):
        return [float(x) for x in raw]
    if isinstance(raw, str):
        try:
            return decode_base64(raw)
        except ValueError:
            return None
    return None


def _text(content: Any) -> str:
    """Message content as text: a string, null, or a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return str(content)


def _logprobs(choice: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A choice's `logprobs.content` (token, logprob, top_logprobs), when it has any."""
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    return content if isinstance(content, list) and content else None


def _tool_call_text(tool_calls: Any) -> list[str]:
    parts = []
    for call in tool_calls if isinstance(tool_calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            parts.append(str(function.get("name") or ""))
            parts.append(str(function.get("arguments") or ""))
    return parts


def _error_message(body: object) -> str:
    """The provider's own message from an error body, whichever shape it has.

    OpenAI/xAI/Anthropic: {"error": {"message": ...}} (the SDK hands us the inner dict);
    Gemini: [{"error": {"code": 400, "message": ..., "status": ...}}]; some proxies: text.
    """
    if isinstance(body, list) and body:
        body = body[0]
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            message = inner.get("message") or inner.get("detail")
            return message if isinstance(message, str) else ""
        return inner if isinstance(inner, str) else ""
    if isinstance(body, str):
        return body.strip()
    return ""


def _is_key_rejection(body: object) -> bool:
    """Gemini answers a bad key with 400 INVALID_ARGUMENT, not 401."""
    text = json.dumps(body) if not isinstance(body, str) else body
    return "API_KEY_INVALID" in text or "API key not valid" in text


# The longest wait a provider's headers can impose on a deployment: "Retry-After: inf", or
# milliseconds sent as seconds ("Retry-After: 60000"), would otherwise keep it out of
# routing for days (or for good). Past an hour, the next call after it asks again.
MAX_WAIT_S = 3600.0


def _bounded(seconds: float) -> float | None:
    """`seconds` as a wait: within 0 and MAX_WAIT_S, None for NaN."""
    return None if math.isnan(seconds) else min(max(0.0, seconds), MAX_WAIT_S)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def limit_reset(headers: Mapping[str, str]) -> float | None:
    """Seconds until a limit this reply used up resets, None while requests and tokens are
    left. OpenAI: `x-ratelimit-remaining-requests` (or `-tokens`) of 0, the reset in
    `x-ratelimit-reset-*` as a duration ("1s", "6m0s", "20ms"). Anthropic:
    `anthropic-ratelimit-requests-remaining` (or `-tokens-`, `-input-tokens-`,
    `-output-tokens-`) of 0, the reset in `anthropic-ratelimit-*-reset` as an RFC 3339 time."""
    wait = None
    for kind in ("requests", "tokens"):
        if headers.get(f"x-ratelimit-remaining-{kind}", "").strip() == "0":
            parts = _DURATION.findall(headers.get(f"x-ratelimit-reset-{kind}", ""))
            seconds = sum(float(amount) * _UNIT_S[unit] for amount, unit in parts) if parts else 1.0
            wait = seconds if wait is None else max(wait, seconds)
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        if headers.get(f"anthropic-ratelimit-{kind}-remaining", "").strip() == "0":
            seconds = _until(headers.get(f"anthropic-ratelimit-{kind}-reset", ""))
            wait = seconds if wait is None else max(wait, seconds)
    return wait if wait is None else _bounded(wait)


def _until(moment: str) -> float:
    """Seconds from now until the RFC 3339 `moment` (a second when it cannot be read)."""
    from datetime import datetime

    try:
        return max(0.0, datetime.fromisoformat(moment.strip().replace("Z", "+00:00")).timestamp() - time.time())
    except ValueError:
        return 1.0


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms` (OpenAI) or `Retry-After` (seconds or a date),
    at most MAX_WAIT_S."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return _bounded(float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return _bounded(float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return _bounded(when.timestamp() - time.time())
