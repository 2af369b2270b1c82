"""A native Gemini deployment behind the gateway: the official openai SDK calls /v1 in
process (over ASGI), Gemini and OpenAI are faked at their HTTP boundary (pytest-httpx),
Postgres and Redis are real."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from pytest_httpx import HTTPXMock

from tests.conftest import providers_file

GEMINI_KEY = "AIza-gateway-test-SECRET"
GEMINI = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash"
OPENAI_URL = "https://api.openai.com/v1/chat/completions"
USAGE = {"promptTokenCount": 12, "candidatesTokenCount": 6, "totalTokenCount": 18}
WEATHER = {"type": "function", "function": {
    "name": "weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-openai")


def gemini_first(tmp: Path, backup: dict[str, Any]) -> Path:
    return providers_file(tmp, [{"name": "gemini", "provider": "gemini", "priority": 1}, {**backup, "priority": 2}])


OPENAI_BACKUP = {"name": "openai", "provider": "openai", "model": "gpt-4o-mini"}
SIMULATED_BACKUP = {"name": "backup", "kind": "simulated",
                    "simulation": {"latency_ms": 1, "ms_per_token": 0, "jitter": 0, "seed": 3}}


def gemini_reply(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"candidates": [{"content": {"role": "model", "parts": list(parts)}, "finishReason": "STOP"}],
            "usageMetadata": USAGE, "modelVersion": "gemini-2.0-flash-001", "responseId": "resp-1"}


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(f"data: {json.dumps(e)}\r\n\r\n".encode() for e in events)


async def dwa_stats(gw: Any) -> dict[str, Any]:
    orchestrator = gw.services.orchestrator
    return await orchestrator.router.stats(orchestrator.registry.names, time.time())


def sdk(gw: Any) -> Any:
    import openai

    return openai.AsyncOpenAI(base_url="http://gateway/v1", api_key="unused", max_retries=0, http_client=gw.client)


async def test_a_failing_gemini_deployment_fails_over_to_another_family(
        open_gateway: Any, tmp_path: Path, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=GEMINI + ":generateContent", status_code=503,
                            json={"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})
    httpx_mock.add_response(url=OPENAI_URL, json={
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "OpenAI answers."},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=gemini_first(tmp_path, OPENAI_BACKUP),
                            DWA_ROUTING_STRATEGY="priority") as gw:
        response = await gw.client.post("/v1/chat/completions", json={
            "model": "auto", "messages": [{"role": "user", "content": "Who answers?"}]})
        stats = await dwa_stats(gw)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "OpenAI answers."
    assert body["orchesity"]["provider"] == "openai"
    assert stats["gemini"]["last_error"] == "unavailable" and stats["gemini"]["consecutive_failures"] == 1
    gemini_call = httpx_mock.get_requests(url=GEMINI + ":generateContent")[0]
    assert gemini_call.headers["x-goog-api-key"] == GEMINI_KEY and GEMINI_KEY not in str(gemini_call.url)
    assert GEMINI_KEY not in response.text


async def test_openai_sdk_tool_round_trip_and_stream_served_by_gemini(
        open_gateway: Any, tmp_path: Path, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=GEMINI + ":generateContent",
                            json=gemini_reply({"functionCall": {"name": "weather", "args": {"city": "Oslo"}}}))
    httpx_mock.add_response(url=GEMINI + ":generateContent", json=gemini_reply({"text": "Oslo: snow, -3 C."}))
    httpx_mock.add_response(url=GEMINI + ":streamGenerateContent?alt=sse",
                            headers={"content-type": "text/event-stream"},
                            content=sse({"candidates": [{"content": {"parts": [{"text": "Snow "}]}}]},
                                        {"candidates": [{"content": {"parts": [{"text": "again."}]},
                                                         "finishReason": "STOP"}], "usageMetadata": USAGE}))
    path = providers_file(tmp_path, [{"name": "gemini", "provider": "gemini"}])
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path) as gw:
        client = sdk(gw)
        messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Oslo?"}]
        first = await client.chat.completions.create(model="gemini", messages=messages, tools=[WEATHER],
                                                     tool_choice="required")
        call = first.choices[0].message.tool_calls[0]
        assert first.choices[0].finish_reason == "tool_calls"
        assert call.function.name == "weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
        messages += [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "snow", "celsius": -3}'}]
        second = await client.chat.completions.create(model="gemini", messages=messages, tools=[WEATHER])
        stream = await client.chat.completions.create(
            model="gemini", messages=[{"role": "user", "content": "And tomorrow?"}], stream=True,
            stream_options={"include_usage": True})
        pieces, usage = [], None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage

    assert second.choices[0].message.content == "Oslo: snow, -3 C."
    assert second.usage is not None and second.usage.total_tokens == 18
    first_body, second_body = (json.loads(r.content) for r in httpx_mock.get_requests(url=GEMINI + ":generateContent"))
    assert first_body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert first_body["tools"][0]["functionDeclarations"][0]["parameters"]["type"] == "OBJECT"
    assert second_body["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": {"name": "weather", "args": {"city": "Oslo"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "weather",
                                                         "response": {"sky": "snow", "celsius": -3}}}]},
    ]
    assert "".join(pieces) == "Snow again."
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (12, 6)


async def test_a_gemini_stream_cut_before_its_first_token_fails_over(
        open_gateway: Any, tmp_path: Path, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=GEMINI + ":streamGenerateContent?alt=sse", headers={"content-type": "text/event-stream"},
                            content=sse({"candidates": [{"content": {"parts": []}}], "usageMetadata": USAGE}))
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=gemini_first(tmp_path, SIMULATED_BACKUP),
                            DWA_ROUTING_STRATEGY="priority") as gw:
        response = await gw.client.post("/v1/chat/completions", json={
            "model": "auto", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        stats = await dwa_stats(gw)
    assert response.status_code == 200 and response.headers["x-orchesity-provider"] == "backup"
    assert response.text.rstrip().endswith("data: [DONE]")
    assert stats["gemini"]["last_error"] == "stream_cut"


async def test_v1_embeddings_served_by_a_gemini_deployment(open_gateway: Any, tmp_path: Path,
                                                           httpx_mock: HTTPXMock) -> None:
    url = "https://generativelanguage.googleapis.com/v1beta/models/gemini-embedding-001:batchEmbedContents"
    httpx_mock.add_response(url=url, json={"embeddings": [{"values": [0.1, 0.2]}, {"values": [0.3, 0.4]}]})
    path = providers_file(tmp_path, [{"name": "gemini-embed", "provider": "gemini", "model": "gemini-embedding-001",
                                      "serves": ["embeddings"]}])
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path) as gw:
        result = await sdk(gw).embeddings.create(model="gemini-embedding-001", input=["one", "two"], dimensions=2)
    assert [item.embedding for item in result.data] == [pytest.approx([0.1, 0.2]), pytest.approx([0.3, 0.4])]
    assert result.usage.prompt_tokens > 0
    sent = json.loads(httpx_mock.get_request(url=url).content)  # type: ignore[union-attr]
    assert [r["outputDimensionality"] for r in sent["requests"]] == [2, 2]
