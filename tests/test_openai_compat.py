"""/v1 as real clients see it: the official openai SDK (sync, async, streaming) and
LangChain's ChatOpenAI against the gateway served over loopback, and every response and
chunk checked against OpenAI's own schemas."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from core.settings import Settings
from functions.gateway import build_app
from tests.servers import serve

MESSAGES = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture
def base_url(gateway_settings: Settings) -> Iterator[str]:
    """The gateway served by uvicorn in a thread, opening its own services there."""
    with serve(build_app(settings=gateway_settings)) as url:
        yield url + "/v1"


async def test_responses_and_chunks_match_openais_schemas(open_gateway: Any, schema_validator: Any) -> None:
    async with open_gateway() as gw:
        completion = await gw.client.post("/v1/chat/completions", json={"model": "auto", "messages": MESSAGES})
        stream = await gw.client.post("/v1/chat/completions",
                                      json={"model": "simulated", "messages": MESSAGES, "stream": True})
        models = await gw.client.get("/v1/models")
    assert completion.status_code == 200, completion.text
    schema_validator(completion.json(), "CreateChatCompletionResponse")
    schema_validator(models.json(), "ListModelsResponse")
    chunks = [json.loads(line[6:]) for line in stream.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    assert len(chunks) >= 3 and chunks[-1]["usage"]["total_tokens"] > 0
    for chunk in chunks:
        schema_validator(chunk, "CreateChatCompletionStreamResponse")


def test_openai_sdk_sync_and_streaming(base_url: str) -> None:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    completion = client.chat.completions.create(model="auto", messages=MESSAGES, max_tokens=20)
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.total_tokens > 0

    text, usage = "", None
    for chunk in client.chat.completions.create(model="simulated", messages=MESSAGES, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        usage = chunk.usage or usage
    assert text and usage is not None and usage.completion_tokens > 0
    assert [m.id for m in client.models.list()] == ["auto", "simulated"]

    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert "no-such-model" in str(info.value)


async def test_openai_sdk_async(base_url: str) -> None:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
    completion = await client.chat.completions.create(model="auto", messages=MESSAGES, temperature=0)
    assert completion.choices[0].finish_reason in ("stop", "length")
    stream = await client.chat.completions.create(model="auto", messages=MESSAGES, stream=True)
    pieces = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(pieces)
    await client.close()


def test_langchain_chat_openai(base_url: str) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=base_url, api_key="unused", model="auto", max_retries=0, temperature=0)
    reply = llm.invoke("Say something about routing.")
    assert isinstance(reply.content, str) and reply.content
    assert reply.usage_metadata and reply.usage_metadata["total_tokens"] > 0
    streamed = "".join(chunk.content for chunk in llm.stream("Stream it."))
    assert streamed


async def test_n_choices_are_served_each_by_a_call_of_its_own(open_gateway: Any, schema_validator: Any) -> None:
    body = {"model": "auto", "messages": MESSAGES, "n": 3, "max_tokens": 30}
    async with open_gateway() as gw:
        one = (await gw.client.post("/v1/chat/completions", json={**body, "n": 1})).json()
        many = await gw.client.post("/v1/chat/completions", json=body)
        streamed = await gw.client.post("/v1/chat/completions", json={**body, "stream": True})
        too_many = await gw.client.post("/v1/chat/completions", json={**body, "n": 17})
    assert many.status_code == 200, many.text
    schema_validator(many.json(), "CreateChatCompletionResponse")
    choices = many.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2] and all(c["message"]["content"] for c in choices)
    assert many.json()["usage"]["prompt_tokens"] == 3 * one["usage"]["prompt_tokens"]
    assert many.json()["orchesity"]["cached"] is False and len(many.json()["orchesity"]["providers"]) == 3
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    for chunk in chunks:
        schema_validator(chunk, "CreateChatCompletionStreamResponse")
    finished = sorted(c["choices"][0]["index"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"])
    assert finished == [0, 1, 2] and len({c["id"] for c in chunks}) == 1
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert len(usage) == 1 and usage[0]["prompt_tokens"] == 3 * one["usage"]["prompt_tokens"]
    assert chunks[-1]["usage"] == usage[0] and streamed.text.rstrip().endswith("data: [DONE]")
    assert too_many.status_code in (400, 422) and "n" in too_many.text
