"""POST /v1/embeddings and core.embeddings.embed_texts: real clients (the openai SDK,
LangChain) over loopback, providers simulated or faked at their HTTP boundary
(pytest-httpx), on the session's real Postgres and Redis."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from core import requestlog
from core.embeddings import EmbeddingFailed, NoEmbeddingDeployment, embed_texts
from core.limits import LimitExceeded, Limits
from core.models import RequestLog
from core.orchestrator import NotServed, UnknownProvider
from core.providers import DeploymentConfigError, DeploymentSpec, EmbeddingRequest, ProviderUnavailable
from core.providers.config import load_deployments
from core.providers.simulated import SimulatedAdapter, embedding_vector
from core.providers.vectors import encode_base64
from core.settings import Settings, load_settings
from functions.gateway import build_app
from tests.conftest import providers_file
from tests.servers import serve

OPENAI_EMBEDDINGS = "https://api.openai.com/v1/embeddings"
SECOND_EMBEDDINGS = "https://embed.example.com/v1/embeddings"
SIM = {"latency_ms": 1, "ms_per_token": 0, "jitter": 0, "seed": 3}
TEXTS = ["The cat sat on the mat.", "Routing weights follow latency."]


def sim(name: str, priority: int = 100, serves: list[str] | None = None, **simulation: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "kind": "simulated", "priority": priority,
                             "simulation": {**SIM, **simulation}}
    if serves is not None:
        entry["serves"] = serves
    return entry


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.fixture
def base_url(gateway_settings: Settings) -> Iterator[str]:
    """The gateway served by uvicorn in a thread, with no configuration: simulated only."""
    with serve(build_app(settings=gateway_settings)) as url:
        yield url + "/v1"


# --- the providers file ---------------------------------------------------------------------------


def test_serves_defaults_and_unknown_values_name_the_field(tmp_path: Path) -> None:
    assert DeploymentSpec(name="o", provider="openai").serves == ("chat",)
    assert DeploymentSpec(name="s", kind="simulated").serves == ("chat", "embeddings")
    specs = load_deployments(load_settings(_env_file=None), environ={})
    assert [(s.name, s.serves) for s in specs] == [("simulated", ("chat", "embeddings"))]

    path = providers_file(tmp_path, [
        {"name": "e", "base_url": "http://localhost:11434/v1", "model": "nomic-embed-text", "serves": ["embeddings"]},
        {"name": "bad", "base_url": "http://localhost:11434/v1", "model": "m", "serves": ["chat", "images"]},
        {"name": "none", "base_url": "http://localhost:11434/v1", "model": "m", "serves": []},
    ])
    with pytest.raises(DeploymentConfigError) as info:
        load_deployments(load_settings(_env_file=None, ORCHESITY_PROVIDERS_FILE=path), environ={})
    message = str(info.value)
    assert "deployments[1] ('bad'): serves.1:" in message and "'chat' or 'embeddings'" in message
    assert "deployments[2] ('none'):" in message and "serves: name at least one" in message
    assert "deployments[0]" not in message


# --- the simulated adapter ------------------------------------------------------------------------


async def test_simulated_vectors_are_deterministic_unit_vectors_closer_when_words_are_shared() -> None:
    adapter = SimulatedAdapter(DeploymentSpec(name="s", kind="simulated", simulation=SIM))
    texts = ["the cat sat on the mat", "a cat on a mat", "quarterly revenue forecast"]
    first = await adapter.embed(EmbeddingRequest(input=texts))
    again = await adapter.embed(EmbeddingRequest(input=texts))
    assert first.vectors == again.vectors and first.model == "orchesity-simulated-embedding-1"
    assert [len(v) for v in first.vectors] == [384, 384, 384]
    assert all(math.isclose(cosine(v, v), 1.0) for v in first.vectors)
    cat, kitten, money = first.vectors
    assert cosine(cat, kitten) > 0.2 > abs(cosine(cat, money))
    assert first.usage.prompt_tokens > 0 and first.usage.completion_tokens == 0
    small = await adapter.embed(EmbeddingRequest(input=texts[:1], dimensions=64))
    assert len(small.vectors[0]) == 64 and small.vectors[0] == embedding_vector(texts[0], 64)

    sized = SimulatedAdapter(DeploymentSpec(name="t", kind="simulated",
                                            simulation={**SIM, "embedding_dimensions": 16}))
    assert len((await sized.embed(EmbeddingRequest(input=["x"]))).vectors[0]) == 16
    failing = SimulatedAdapter(DeploymentSpec(name="f", kind="simulated",
                                              simulation={**SIM, "failure_rate": 1.0, "failure_mode": "unavailable"}))
    with pytest.raises(ProviderUnavailable):
        await failing.embed(EmbeddingRequest(input=["x"]))


# --- real clients ---------------------------------------------------------------------------------


def test_openai_sdk_embeddings_base64_and_float(base_url: str, schema_validator: Any) -> None:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    raw = client.embeddings.with_raw_response.create(model="auto", input=TEXTS, encoding_format="float")
    body = json.loads(raw.text)
    schema_validator(body, "CreateEmbeddingResponse")
    assert body["model"] == "orchesity-simulated-embedding-1" and [d["index"] for d in body["data"]] == [0, 1]
    assert raw.headers["x-orchesity-provider"] == "simulated"

    decoded = client.embeddings.create(model="auto", input=TEXTS)  # the SDK's default: base64
    schema_validator(decoded.model_dump(exclude_unset=True), "CreateEmbeddingResponse")
    assert decoded.usage.prompt_tokens == decoded.usage.total_tokens > 0
    for got, want in zip(decoded.data, body["data"], strict=True):
        assert len(got.embedding) == 384
        assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(got.embedding, want["embedding"], strict=True))

    one = client.embeddings.create(model="simulated", input="just one", dimensions=32, encoding_format="float")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 32
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="no-such-model", input="x")
    assert "no-such-model" in str(info.value)


def test_langchain_openai_embeddings(base_url: str) -> None:
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(base_url=base_url, api_key="unused", model="auto", max_retries=0,
                                  check_embedding_ctx_length=False)
    documents = embeddings.embed_documents(TEXTS)
    assert len(documents) == 2 and all(len(v) == 384 for v in documents)
    assert embeddings.embed_documents(TEXTS) == documents
    query = embeddings.embed_query(TEXTS[0])
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(query, documents[0], strict=True))


# --- routing, cache, log ----------------------------------------------------------------------------


async def test_a_repeated_request_is_a_cache_hit_and_both_are_in_the_request_log(open_gateway: Any) -> None:
    body = {"model": "auto", "input": TEXTS, "encoding_format": "float"}
    async with open_gateway() as gw:
        first = await gw.client.post("/v1/embeddings", json=body)
        again = await gw.client.post("/v1/embeddings", json={**body, "encoding_format": "base64"})
        other_size = await gw.client.post("/v1/embeddings", json={**body, "dimensions": 8})
        other_model = await gw.client.post("/v1/embeddings", json={**body, "model": "simulated"})
        ids = [r.headers["x-orchesity-request-id"] for r in (first, again)]
        await requestlog.drain(gw.services.kv, gw.services.db)
        async with gw.services.db.engine.connect() as conn:
            rows = (await conn.execute(select(RequestLog).where(RequestLog.request_id.in_(ids)))).all()
    assert first.status_code == 200, first.text
    assert first.headers["x-orchesity-cached"] == "false" and first.json()["orchesity"]["cached"] is False
    assert again.headers["x-orchesity-cached"] == "true" and again.json()["orchesity"]["cached"] is True
    assert again.json()["usage"] == first.json()["usage"]
    assert [d["embedding"] for d in again.json()["data"]] == [encode_base64(d["embedding"])
                                                              for d in first.json()["data"]]
    assert other_size.headers["x-orchesity-cached"] == "false"  # dimensions are in the key
    assert other_model.headers["x-orchesity-cached"] == "false"  # and so is the model
    assert len(other_size.json()["data"][0]["embedding"]) == 8
    by_request = {row.request_id: row for row in rows}
    assert set(by_request) == set(ids)
    logged, hit = by_request[ids[0]], by_request[ids[1]]
    assert (logged.endpoint, logged.provider, logged.status, logged.cached) == ("embeddings", "simulated", "ok", False)
    assert logged.model == "orchesity-simulated-embedding-1" and logged.total_tokens > 0
    assert logged.latency_ms is not None and logged.cost == 0.0
    assert (hit.endpoint, hit.cached) == ("embeddings", True)


async def test_chat_and_embeddings_only_route_to_deployments_serving_them(open_gateway: Any, tmp_path: Path) -> None:
    path = providers_file(tmp_path, [sim("chatty", 1, serves=["chat"]), sim("embedder", 2, serves=["embeddings"])])
    chat = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, DWA_ROUTING_STRATEGY="priority") as gw:
        embedded = [await gw.client.post("/v1/embeddings", json={"model": "auto", "input": f"text {i}"})
                    for i in range(4)]
        chatted = [await gw.client.post("/v1/chat/completions", json=chat) for _ in range(4)]
        seeded = await gw.client.post("/api/llm/orchestrate", json={"prompt": "hi"})
        chat_on_embedder = await gw.client.post("/v1/chat/completions", json={**chat, "model": "embedder"})
        embed_on_chatty = await gw.client.post("/v1/embeddings", json={"model": "chatty", "input": "x"})
        by_model = await gw.client.post("/v1/embeddings", json={"model": "orchesity-simulated-embedding-1",
                                                                 "input": "x"})
        models = (await gw.client.get("/v1/models")).json()["data"]
        result = await embed_texts(gw.services.orchestrator, ["x"])
        with pytest.raises(NotServed):
            await embed_texts(gw.services.orchestrator, ["x"], model="chatty")
    assert [r.headers["x-orchesity-provider"] for r in embedded] == ["embedder"] * 4
    assert [r.headers["x-orchesity-provider"] for r in chatted] == ["chatty"] * 4
    assert seeded.json()["results"][0]["provider"] == "chatty"
    for refused, capability in ((chat_on_embedder, "chat"), (embed_on_chatty, "embeddings")):
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == "model" and f"does not serve {capability}" in error["message"]
    assert by_model.headers["x-orchesity-provider"] == "embedder"
    assert {m["id"]: m.get("serves") for m in models} == {"auto": None, "chatty": ["chat"],
                                                          "embedder": ["embeddings"]}
    assert result.provider == "embedder"


async def test_no_deployment_serving_embeddings_is_a_clear_503(open_gateway: Any, tmp_path: Path) -> None:
    path = providers_file(tmp_path, [sim("chatty", serves=["chat"])])
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path) as gw:
        response = await gw.client.post("/v1/embeddings", json={"model": "auto", "input": "x"})
        with pytest.raises(NoEmbeddingDeployment) as info:
            await embed_texts(gw.services.orchestrator, ["x"])
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "no_deployment" and "no configured deployment serves embeddings" in error["message"]
    assert "serves embeddings" in str(info.value)


@pytest.mark.parametrize(
    ("body", "status", "param", "says"),
    [
        ({"model": "auto", "input": []}, 422, "input", "empty"),
        ({"model": "auto", "input": ""}, 422, "input", "empty"),
        ({"model": "auto", "input": ["ok", ""]}, 422, "input", "input[1]"),
        ({"model": "auto", "input": [1, 2, 3]}, 422, "input", "token arrays"),
        ({"model": "auto", "input": [[1, 2]]}, 422, "input", "token arrays"),
        ({"model": "auto", "input": {"text": "x"}}, 422, "input", "string"),
        ({"model": "auto", "input": ["ok", None]}, 422, "input", "NoneType"),
        ({"input": "x"}, 422, "model", "required"),
        ({"model": "auto", "input": "x", "dimensions": 0}, 422, "dimensions", "greater"),
        ({"model": "auto", "input": "x", "dimensions": "8"}, 422, "dimensions", "integer"),
        ({"model": "auto", "input": "x", "encoding_format": "int8"}, 422, "encoding_format", "float"),
        ({"model": "auto", "input": "x", "inptu": "y"}, 422, "inptu", "Extra"),
        ({"model": "no-such-model", "input": "x"}, 400, "model", "no-such-model"),
    ],
)
async def test_bad_inputs_get_a_4xx_naming_the_field(open_gateway: Any, body: dict[str, Any], status: int,
                                                     param: str, says: str) -> None:
    async with open_gateway() as gw:
        response = await gw.client.post("/v1/embeddings", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"]


# --- embed_texts and key limits -----------------------------------------------------------------------


async def test_embed_texts_follows_embedding_model_and_counts_against_limits(open_gateway: Any,
                                                                             tmp_path: Path) -> None:
    path = providers_file(tmp_path, [sim("first", 1), sim("second", 2, embedding_dimensions=12)])
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, EMBEDDING_MODEL="second") as gw:
        orchestrator = gw.services.orchestrator
        result = await embed_texts(orchestrator, TEXTS)
        again = await embed_texts(orchestrator, TEXTS)
        chosen = await embed_texts(orchestrator, TEXTS, model="first")
        with pytest.raises(UnknownProvider):
            await embed_texts(orchestrator, TEXTS, model="nowhere")
        with pytest.raises(ValueError):
            await embed_texts(orchestrator, [""])
        limits = Limits(requests_per_minute=2)
        await embed_texts(orchestrator, ["a"], caller="kb-key", limits=limits)
        await embed_texts(orchestrator, ["b"], caller="kb-key", limits=limits)
        with pytest.raises(LimitExceeded) as info:
            await embed_texts(orchestrator, ["c"], caller="kb-key", limits=limits)
        tokens = Limits(tokens_per_minute=5)  # the first call's tokens use up the minute's allowance
        await embed_texts(orchestrator, ["many words " * 20], caller="kb-tokens", limits=tokens)
        with pytest.raises(LimitExceeded) as spent:
            await embed_texts(orchestrator, ["more"], caller="kb-tokens", limits=tokens)
    assert (result.provider, result.model) == ("second", "orchesity-simulated-embedding-1")
    assert [len(v) for v in result.vectors] == [12, 12] and result.cached is False
    assert again.vectors == result.vectors and again.cached is True
    assert chosen.provider == "first" and len(chosen.vectors[0]) == 384
    assert info.value.verdict.limit == "requests_per_minute"
    assert spent.value.verdict.limit == "tokens_per_minute"


async def test_embeddings_count_against_the_http_callers_key(open_gateway: Any) -> None:
    from core.auth import create_key

    async with open_gateway(OPEN_ACCESS=False) as gw:
        key, _ = await create_key(gw.services.db, name="embedder", created_by="test", scopes=["llm"],
                                  limits=Limits(requests_per_minute=2))
        headers = {"authorization": f"Bearer {key}"}
        replies = [await gw.client.post("/v1/embeddings", json={"model": "auto", "input": f"t{i}"}, headers=headers)
                   for i in range(3)]
        anonymous = await gw.client.post("/v1/embeddings", json={"model": "auto", "input": "x"})
    assert [r.status_code for r in replies] == [200, 200, 429]
    assert replies[0].headers["x-ratelimit-limit-requests"] == "2"
    assert replies[2].json()["error"]["type"] == "rate_limit_exceeded"
    assert anonymous.status_code == 401


# --- an OpenAI-compatible provider at its HTTP boundary ---------------------------------------------


def two_embedders(tmp: Path) -> Path:
    return providers_file(tmp, [
        {"name": "openai-embed", "provider": "openai", "model": "text-embedding-3-small", "priority": 1,
         "serves": ["embeddings"], "api_key_env": "OPENAI_API_KEY"},
        {"name": "second", "base_url": "https://embed.example.com/v1", "model": "nomic-embed-text",
         "priority": 2, "serves": ["embeddings"]},
        {"name": "chat-only", "provider": "openai", "model": "gpt-4o-mini", "priority": 0,
         "api_key_env": "OPENAI_API_KEY"},
    ])


def embeddings_reply(vectors: list[list[float]], model: str, prompt_tokens: int = 7) -> dict[str, Any]:
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


async def test_the_provider_gets_the_right_body_and_its_usage_and_price_are_used(
        open_gateway: Any, tmp_path: Path, httpx_mock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-embed-secret")
    # Listed out of order: the gateway puts them back in input order by `index`.
    reply = embeddings_reply([[0.1, 0.2], [0.3, 0.4]], "text-embedding-3-small")
    reply["data"].reverse()
    httpx_mock.add_response(url=OPENAI_EMBEDDINGS, json=reply)
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=two_embedders(tmp_path), DWA_ROUTING_STRATEGY="priority") as gw:
        response = await gw.client.post("/v1/embeddings", json={
            "model": "auto", "input": TEXTS, "dimensions": 2, "user": "u-1", "encoding_format": "float"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [d["embedding"] for d in body["data"]] == [[0.1, 0.2], [0.3, 0.4]]
    assert body["model"] == "text-embedding-3-small" and body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert body["orchesity"]["provider"] == "openai-embed"
    assert math.isclose(body["orchesity"]["cost"], 7 * 0.00002 / 1000)
    (sent,) = httpx_mock.get_requests()
    assert sent.headers["authorization"] == "Bearer sk-embed-secret"
    assert json.loads(sent.content) == {"model": "text-embedding-3-small", "input": TEXTS,
                                        "encoding_format": "float", "dimensions": 2, "user": "u-1"}
    assert "sk-embed-secret" not in response.text


@pytest.mark.parametrize("failure", ["500", "timeout", "429"])
async def test_a_retryable_failure_fails_over_to_the_next_embeddings_deployment(
        open_gateway: Any, tmp_path: Path, httpx_mock: Any, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    if failure == "timeout":
        httpx_mock.add_exception(httpx.ReadTimeout("timed out"), url=OPENAI_EMBEDDINGS)
    elif failure == "429":
        httpx_mock.add_response(url=OPENAI_EMBEDDINGS, status_code=429, headers={"retry-after": "30"},
                                json={"error": {"message": "slow down"}})
    else:
        httpx_mock.add_response(url=OPENAI_EMBEDDINGS, status_code=500, json={"error": {"message": "boom"}})
    httpx_mock.add_response(url=SECOND_EMBEDDINGS, json=embeddings_reply([[1.0, 0.0]], "nomic-embed-text"))
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=two_embedders(tmp_path), DWA_ROUTING_STRATEGY="priority") as gw:
        response = await gw.client.post("/v1/embeddings", json={"model": "auto", "input": "fail over",
                                                                 "encoding_format": "float"})
        orchestrator = gw.services.orchestrator
        stats = await orchestrator.router.stats(orchestrator.registry.names, time.time())
    assert response.status_code == 200, response.text
    assert response.headers["x-orchesity-provider"] == "second"
    assert response.json()["data"][0]["embedding"] == [1.0, 0.0]
    assert response.json()["orchesity"]["dwa_selection_reason"] == "fallback_after_error"
    assert [json.loads(r.content)["model"] for r in httpx_mock.get_requests()] == [
        "text-embedding-3-small", "nomic-embed-text"]
    expected = {"500": "unavailable", "timeout": "timeout", "429": "rate_limited"}[failure]
    assert stats["openai-embed"]["last_error"] == expected
    assert stats["second"]["samples"] == 1 and stats["chat-only"]["samples"] == 0


async def test_a_provider_400_goes_back_as_a_400_without_failing_over(
        open_gateway: Any, tmp_path: Path, httpx_mock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    httpx_mock.add_response(url=OPENAI_EMBEDDINGS, status_code=400, json={"error": {
        "message": "This model's maximum context length is 8192 tokens", "type": "invalid_request_error"}})
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=two_embedders(tmp_path), DWA_ROUTING_STRATEGY="priority") as gw:
        response = await gw.client.post("/v1/embeddings", json={"model": "auto", "input": "too long"})
        with pytest.raises(EmbeddingFailed) as info:
            httpx_mock.add_response(url=OPENAI_EMBEDDINGS, status_code=400,
                                    json={"error": {"message": "still too long"}})
            await embed_texts(gw.services.orchestrator, ["too long"])
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith("openai-embed: This model's maximum context length")
    assert info.value.status == 400 and "still too long" in str(info.value)
    assert all(r.url == OPENAI_EMBEDDINGS for r in httpx_mock.get_requests())  # never the second
