"""Every adapter's non-streamed calls over a real socket, on the providers' own pool.

The pool's direct path (core/providers/direct.py) sends a request head encoded once and
reads the reply as bytes; these fakes of OpenAI's, Anthropic's and Gemini's HTTP APIs run
under uvicorn on loopback, gzip what a client accepts, and answer 429s with the headers
a router learns from.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from starlette.middleware.gzip import GZipMiddleware

from core.providers import ChatRequest, DeploymentSpec, EmbeddingRequest, ProviderAuthError, ProviderRateLimited
from core.providers.registry import build_adapter
from tests.servers import serve

KEY = "direct-path-SECRET-key-31c9"
CHAT = ChatRequest(messages=[{"role": "user", "content": "hello"}], max_tokens=20)
LIMITED = {"retry-after": "7"}
seen: list[dict[str, str]] = []


def _fake() -> FastAPI:
    app = FastAPI()
    app.add_middleware(GZipMiddleware, minimum_size=1)  # only for a client that accepts it

    def answer(request: Request, model: str, body: dict[str, Any], **headers: str) -> JSONResponse:
        seen.append(dict(request.headers))
        if model == "limited":
            return JSONResponse({"error": {"message": "slow down", "type": "rate_limit_error"}}, 429, LIMITED)
        if model == "moved":
            return JSONResponse({}, 302, {"location": "http://169.254.169.254/latest/meta-data"})
        return JSONResponse(body, headers=headers)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        model = (await request.json())["model"]
        return answer(request, model, {
            "id": "c1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "openai says hi"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}},
            **{"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"})

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> JSONResponse:
        body = await request.json()
        return answer(request, body["model"], {
            "object": "list", "model": body["model"], "usage": {"prompt_tokens": 2, "total_tokens": 2},
            "data": [{"object": "embedding", "index": i, "embedding": [0.5, float(i)]}
                     for i, _ in enumerate(body["input"])]})

    @app.post("/v1/messages")
    async def messages(request: Request) -> JSONResponse:
        model = (await request.json())["model"]
        return answer(request, model, {
            "id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "anthropic says hi"}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 4, "output_tokens": 3}})

    @app.post("/v1beta/models/{call}")
    async def gemini(call: str, request: Request) -> JSONResponse:
        model, _, method = call.partition(":")
        if method == "batchEmbedContents":
            body = await request.json()
            return answer(request, model, {"embeddings": [{"values": [1.0, float(i)]}
                                                          for i, _ in enumerate(body["requests"])]})
        return answer(request, model, {
            "candidates": [{"content": {"role": "model", "parts": [{"text": "gemini says hi"}]},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 3, "totalTokenCount": 7}})

    return app


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with serve(_fake()) as url:
        yield url


@pytest.fixture
async def adapter(base: str) -> AsyncIterator[Any]:
    made: list[Any] = []

    def make(provider: str, model: str, **fields: Any) -> Any:
        url = f"{base}/v1" if provider == "openai" else base
        spec = DeploymentSpec(name=f"{provider}-{model}", provider=provider, base_url=url, model=model,
                              **fields).model_copy(update={"api_key": SecretStr(KEY)})
        made.append(build_adapter(spec))  # no transport given: the providers' own pool
        return made[-1]

    yield make
    for one in made:
        await one.aclose()


@pytest.mark.parametrize("provider,model,text,key_header,compressed", [
    ("openai", "gpt-x", "openai says hi", "authorization", True),
    ("anthropic", "claude-x", "anthropic says hi", "x-api-key", False),
    ("gemini", "gemini-x", "gemini says hi", "x-goog-api-key", True),
])
async def test_a_chat_call_over_the_pool(adapter: Any, provider: str, model: str, text: str, key_header: str,
                                         compressed: bool) -> None:
    one = adapter(provider, model)
    first = await one.complete(CHAT, timeout=5)
    again = await one.complete(CHAT, timeout=5)  # the second on the kept-alive connection
    assert first.text == again.text == text
    headers = seen[-1]
    assert KEY in headers[key_header] and headers["host"].startswith("127.0.0.1:")
    assert ("gzip" in headers.get("accept-encoding", "")) is compressed  # and the reply was gzipped then
    if provider == "openai":
        assert first.limit_reset_s == 2.0  # read from the reply's headers


@pytest.mark.parametrize("provider,model", [("openai", "text-embed-x"), ("gemini", "gemini-embed-x")])
async def test_embeddings_over_the_pool(adapter: Any, provider: str, model: str) -> None:
    one = adapter(provider, model, serves=["embeddings"])
    result = await one.embed(EmbeddingRequest(input=["a", "b", "c"]), timeout=5)
    assert [vector[1] for vector in result.vectors] == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
async def test_a_429_over_the_pool_keeps_its_retry_after(adapter: Any, provider: str) -> None:
    with pytest.raises(ProviderRateLimited) as raised:
        await adapter(provider, "limited").complete(CHAT, timeout=5)
    assert raised.value.retry_after == 7.0 and "slow down" in str(raised.value)
    assert KEY not in str(raised.value)


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("streamed", [False, True])
async def test_a_redirect_is_not_followed_and_names_the_base_url(adapter: Any, provider: str, streamed: bool) -> None:
    """A 3xx is the deployment's misconfiguration (a 502 to the caller, another
    deployment tried), never a reply to parse nor a status handed to the caller."""
    calls = len(seen)
    made = adapter(provider, "moved")
    with pytest.raises(ProviderAuthError) as raised:
        if streamed:
            async for _ in made.stream(CHAT, timeout=5):
                pass
        else:
            await made.complete(CHAT, timeout=5)
    assert raised.value.status == 302 and "redirected to http://169.254.169.254/latest" in str(raised.value)
    assert "base_url" in str(raised.value) and len(seen) == calls + 1
