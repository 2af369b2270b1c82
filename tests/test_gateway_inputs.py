"""Inputs no gateway should answer with a 500: each gets a clear 4xx, or is served."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import APIRouter

from core.settings import Settings, SettingsError, load_settings
from functions.gateway import ROUTERS
from functions.http import create_app
from tests.servers import serve

JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("path,body", [
    ("/api/llm/orchestrate", b'{"prompt": "\\ud800x", "temperature": 0}'),
    ("/v1/chat/completions", b'{"model": "auto", "messages": [{"role": "user", "content": "\\udfffy"}]}'),
])
async def test_a_lone_surrogate_in_a_prompt_is_served(open_gateway: Any, path: str, body: bytes) -> None:
    async with open_gateway() as gw:
        first = await gw.client.post(path, content=body, headers=JSON)
        again = await gw.client.post(path, content=body, headers=JSON)
    assert first.status_code == 200, first.text
    assert again.status_code == 200


USER = [{"role": "user", "content": "hi"}]
NOT_A_SCHEMA = {"type": "object", "properties": 5}


@pytest.mark.parametrize("path,body,says", [
    ("/v1/chat/completions", {"model": "auto", "messages": USER, "tools": [
        {"type": "function", "function": {"name": "f", "parameters": NOT_A_SCHEMA}}]},
     "tools[0].function.parameters is not a valid JSON Schema at properties"),
    ("/v1/chat/completions", {"model": "auto", "messages": USER, "tools": [
        {"type": "function", "function": {"name": [1], "parameters": {"type": "object"}}}]},
     "tools[0].function must be an object with the function's name"),
    ("/v1/chat/completions", {"model": "auto", "messages": USER, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "\ud800"}}}},
     "response_format.json_schema.schema holds a lone surrogate"),
    ("/api/llm/orchestrate", {"messages": [*USER, {"role": "assistant", "tool_calls": [
        {"id": {"a": None}, "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "done"}]},
     "tool_calls[0].id must be the call's id"),
    ("/v1/messages", {"model": "auto", "max_tokens": 20, "messages": USER, "tools": [
        {"name": "f", "input_schema": NOT_A_SCHEMA}]},
     "tools[0].input_schema: input_schema is not a valid JSON Schema"),
    ("/v1/responses", {"model": "auto", "input": "hi", "tools": [
        {"type": "function", "name": "f", "parameters": NOT_A_SCHEMA}]},
     "parameters is not a valid JSON Schema at properties"),
    ("/v1/responses", {"model": "auto", "input": "hi", "text": {"format": {
        "type": "json_schema", "name": "x", "schema": {"type": "object", "required": 7}}}},
     "the schema is not a valid JSON Schema at required"),
])
async def test_a_tool_or_output_schema_that_is_no_json_schema_is_a_4xx_naming_it(
        open_gateway: Any, path: str, body: dict[str, Any], says: str) -> None:
    """Tools and structured outputs were passed on as they came: the simulated provider
    (and the translations to other APIs) failed on them with a 500."""
    async with open_gateway() as gw:
        response = await gw.client.post(path, content=json.dumps(body).encode(), headers=JSON)
    assert 400 <= response.status_code < 500, response.text
    assert says in response.json()["error"]["message"], response.text


async def test_a_schema_naming_an_unknown_draft_is_checked_here_and_never_fetched(open_gateway: Any) -> None:
    """jsonschema-rs fetches a `$schema` it does not know; a caller's URL is never fetched."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        schema = {"$schema": f"http://127.0.0.1:{listener.getsockname()[1]}/meta", "type": "object",
                  "properties": {"city": {"type": "string"}}, "required": ["city"]}
        async with open_gateway() as gw:
            response = await gw.client.post("/v1/chat/completions", json={"model": "auto", "messages": USER,
                                            "tools": [{"type": "function", "function": {"name": "weather",
                                                                                        "parameters": schema}}]})
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody came
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "weather"


async def test_a_nul_in_a_query_parameter_is_a_422(open_gateway: Any) -> None:
    async with open_gateway() as gw:
        response = await gw.client.get("/api/db/requests/recent", params={"provider": "\x00"})
    assert response.status_code == 422 and response.json()["error"]["param"] == "provider"


@pytest.mark.parametrize("body,param", [
    ({"prompt": "hi", "max_tokens": True}, "max_tokens"),
    ({"prompt": "hi", "stream": "yes"}, "stream"),
    ({"prompt": "hi", "temperature": "0.5"}, "temperature"),
    ({"prompt": "hi", "cache": {"no_cache": 1}}, "cache.no_cache"),
])
async def test_loose_types_are_refused_with_the_parameter_named(open_gateway: Any, body: dict[str, Any],
                                                                param: str) -> None:
    async with open_gateway() as gw:
        response = await gw.client.post("/api/llm/orchestrate", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param


async def test_broken_json_names_the_position_not_a_parameter(open_gateway: Any) -> None:
    async with open_gateway() as gw:
        response = await gw.client.post("/api/llm/orchestrate", content=b'{"prompt": "hi",,}', headers=JSON)
    error = response.json()["error"]
    assert response.status_code == 422 and error["param"] is None
    assert "not valid JSON" in error["message"] and "byte 16" in error["message"]


@pytest.mark.parametrize("path,content,headers,says", [
    # curl -d without -H sends a form's content type
    ("/v1/chat/completions", b'{"model": "auto", "messages": []}', {"content-type": "application/x-www-form-urlencoded"},
     "sent with Content-Type: application/json (it came as 'application/x-www-form-urlencoded')"),
    ("/api/llm/orchestrate", b'{"prompt": "hi"}', {}, "Content-Type: application/json (it came with none)"),
    ("/v1/chat/completions", b'{"model": "\xff"}', JSON, "not UTF-8 (byte 11)"),
    ("/v1/chat/completions", b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", JSON, "nested too deeply"),
    ("/v1/messages", b'{"model": "\xff"}', JSON, "not UTF-8 (byte 11)"),
    ("/v1/messages", b'{"model": "auto"}', {"content-type": "text/plain"}, "(it came as 'text/plain')"),
])
async def test_a_body_that_is_not_json_is_told_why(open_gateway: Any, path: str, content: bytes,
                                                   headers: dict[str, str], says: str) -> None:
    async with open_gateway() as gw:
        response = await gw.client.post(path, content=content, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    assert says in response.json()["error"]["message"]


async def test_a_chunked_body_over_the_limit_is_a_413(open_gateway: Any) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(80):
            yield b"x" * 65536
        yield b'"}'

    async with open_gateway() as gw:
        limit = gw.services.settings.MAX_REQUEST_BYTES
        response = await gw.client.post("/api/llm/orchestrate", content=chunks(), headers=JSON)
    assert limit < 80 * 65536
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def _raw_exchange(sock: socket.socket, path: str) -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(65536)
    head, _, rest = head.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        rest += sock.recv(65536)
    return head + b"\r\n\r\n" + rest


def test_after_a_500_the_keep_alive_connection_still_serves(gateway_settings: Settings) -> None:
    broken = APIRouter()

    @broken.get("/broken")
    async def fail() -> None:
        raise RuntimeError("a bug, with a secret: sk-should-not-leak")

    app = create_app(broken, *ROUTERS, title="test", settings=gateway_settings)
    with serve(app) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            failed = _raw_exchange(sock, "/broken")
            healthy = _raw_exchange(sock, "/api/health")  # the same connection
    assert failed.startswith(b"HTTP/1.1 500") and b"RuntimeError" in failed
    assert b"sk-should-not-leak" not in failed
    assert healthy.startswith(b"HTTP/1.1 200")


def test_a_bad_database_url_is_a_configuration_error_that_hides_the_password() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None, DATABASE_URL="mysql://user:hunter2@db/x")
    assert "DATABASE_URL" in str(info.value) and "postgresql://" in str(info.value)
    assert "hunter2" not in str(info.value)
