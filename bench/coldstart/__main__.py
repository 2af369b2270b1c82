"""python -m bench.coldstart: what a new process of each function costs before it answers.

For each function in functions/, in fresh Python processes (a new Lambda container or
Fly machine is one):
- import_ms: the median time to `import functions.<name>`;
- first_request_ms: from the process's first line to the first answered request, through
  its Mangum handler (Lambda's way in), the import included.
Beside them, floors measured in the same run: `import fastapi` alone (fastapi_ms) and
the stack every function stood on before (stack_ms: fastapi, SQLAlchemy's asyncio
engine, psycopg, pydantic-settings). Targets (issue #10): orchestrate, whose hot path
needs only Redis, imports within fastapi_ms + 150; every other function within
stack_ms + 100; each first request within its import + 250 ms; and openai, langchain
and mcp are never imported by then.

The real services: an embedded PostgreSQL and Redis started here in a temporary
directory, migrated, with an admin key whose verdict is already in Redis (a key a
deployment has used before). The simulated provider answers. Bytecode is compiled
first (this machine sets PYTHONDONTWRITEBYTECODE, so imports would otherwise compile
every module every time).

    uv run python -m bench.coldstart --json bench-out/coldstart.json [--runs 7]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import compileall
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ("health", "orchestrate", "dwa", "db", "cron", "keys", "tools", "gateway")
STACK = "fastapi, sqlalchemy.ext.asyncio, psycopg, pydantic_settings"
NEVER = ("openai", "langchain", "langchain_core", "mcp")
CRON_SECRET = "bench-" + "c" * 40
CHAT = {"model": "auto", "messages": [{"role": "user", "content": "cold start"}]}
# The request each function answers first: (method, path, body)
FIRST = {
    "health": ("GET", "/api/health", None),
    "orchestrate": ("POST", "/v1/chat/completions", CHAT),
    "dwa": ("GET", "/api/llm/dwa/stats", None),
    "db": ("GET", "/api/db/stats", None),
    "cron": ("POST", "/api/cron/drain-logs", None),
    "keys": ("GET", "/api/keys", None),
    "tools": ("POST", "/api/tools/text_stats/invoke", {"arguments": {"text": "a cold start"}}),
    "gateway": ("POST", "/v1/chat/completions", CHAT),
}

_TIMED_IMPORT = "import time; t = time.perf_counter(); import {module}; print((time.perf_counter() - t) * 1000)"

# Runs in a new process: import the function, answer one event through its handler.
_FIRST_REQUEST = """
import time
started = time.perf_counter()
import json, sys
import functions.{name} as function
imported = time.perf_counter()
reply = function.handler(json.loads(sys.argv[1]), None)
answered = time.perf_counter()
print(json.dumps({{"status": reply["statusCode"], "import_ms": (imported - started) * 1000,
                  "first_request_ms": (answered - started) * 1000,
                  "loaded": [m for m in {never!r} if m in sys.modules]}}))
"""


def _event(method: str, path: str, body: Any, token: str) -> dict[str, Any]:
    """A Lambda Function URL event (API Gateway's HTTP API sends the same shape)."""
    host = "bench.lambda-url.us-east-1.on.aws"
    content = json.dumps(body).encode() if body is not None else None
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
        "headers": {"host": host, "authorization": f"Bearer {token}", "content-type": "application/json"},
        "requestContext": {"http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                                    "sourceIp": "127.0.0.1", "userAgent": "bench"},
                           "accountId": "0", "apiId": "bench", "domainName": host, "requestId": "r",
                           "routeKey": "$default", "stage": "$default", "time": "now", "timeEpoch": 0},
        "body": base64.b64encode(content).decode() if content else None, "isBase64Encoded": content is not None,
    }


def _python(code: str, env: dict[str, str], *args: str) -> str:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return result.stdout.strip().splitlines()[-1]


def _median_import(module: str, env: dict[str, str], runs: int) -> float:
    return round(statistics.median(float(_python(_TIMED_IMPORT.format(module=module), env)) for _ in range(runs)), 1)


async def _prepare(data: Path) -> tuple[Any, dict[str, str], str]:
    """Embedded Postgres and Redis under `data`, migrated, and an admin key in use; the
    services stay open (so do the servers) until the caller closes them."""
    from core.auth import create_key
    from core.migrate import upgrade
    from core.services import Services
    from core.settings import load_settings

    settings = load_settings(_env_file=None, ORCHESITY_DATA_DIR=data)
    services = await Services.open(settings)
    await upgrade(services.db)
    key, _ = await create_key(services.db, name="coldstart", scopes=["admin"], created_by="bench")
    await services.authenticator.authenticate(key)  # its verdict now waits in Redis
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
           "DATABASE_URL": services.db.url,
           "REDIS_URL": f"unix://{services.kv._embedded.socket_path}",  # type: ignore[attr-defined]
           "CRON_SECRET": CRON_SECRET, "SIMULATED_LATENCY_MS": "0", "SIMULATED_MS_PER_TOKEN": "0",
           "AUTH_REDIS_TTL_SECONDS": "3600"}
    return services, env, key


def _goals(floors: dict[str, float], functions: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name, row in functions.items():
        limit = floors["fastapi_ms"] + 150 if name == "orchestrate" else floors["stack_ms"] + 100
        base = "fastapi_ms + 150" if name == "orchestrate" else "stack_ms + 100"
        out.append({"goal": f"{name}: import <= {base} ({limit:.0f} ms)", "value": row["import_ms"],
                    "status": "pass" if row["import_ms"] <= limit else "FAIL"})
        out.append({"goal": f"{name}: first request <= import + 250 ms", "value": row["first_request_ms"],
                    "status": "pass" if row["first_request_ms"] <= row["import_ms"] + 250 else "FAIL"})
        out.append({"goal": f"{name}: none of {', '.join(NEVER)} loaded", "value": row["loaded"] or "none",
                    "status": "pass" if not row["loaded"] else "FAIL"})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.coldstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per figure (median)")
    options = parser.parse_args()

    print("compiling bytecode ...", flush=True)
    for path in (sysconfig.get_paths()["purelib"], ROOT / "core", ROOT / "functions"):
        compileall.compile_dir(str(path), quiet=2, workers=0)
    with tempfile.TemporaryDirectory(prefix="orchesity-coldstart-") as tmp:
        loop = asyncio.new_event_loop()
        services, env, key = loop.run_until_complete(_prepare(Path(tmp)))
        floors = {"fastapi_ms": _median_import("fastapi", env, options.runs),
                  "stack_ms": _median_import(STACK, env, options.runs)}
        print(f"floors: import fastapi {floors['fastapi_ms']} ms; the old stack {floors['stack_ms']} ms", flush=True)
        functions: dict[str, dict[str, Any]] = {}
        for name in FUNCTIONS:
            method, path, body = FIRST[name]
            token = CRON_SECRET if name == "cron" else key
            event = json.dumps(_event(method, path, body, token))
            samples = [json.loads(_python(_FIRST_REQUEST.format(name=name, never=NEVER), env, event))
                       for _ in range(options.runs)]
            statuses = {s["status"] for s in samples}
            functions[name] = {
                "import_ms": round(statistics.median(s["import_ms"] for s in samples), 1),
                "first_request_ms": round(statistics.median(s["first_request_ms"] for s in samples), 1),
                "status": sorted(statuses), "request": f"{method} {path}",
                "loaded": sorted({m for s in samples for m in s["loaded"]}),
            }
            row = functions[name]
            print(f"  {name:12} import {row['import_ms']:7.1f} ms   first request {row['first_request_ms']:7.1f} ms"
                  f"   ({row['request']} -> {','.join(map(str, row['status']))})", flush=True)
        loop.run_until_complete(services.close())
        loop.close()
    goals = _goals(floors, functions)
    print("Goals (issue 10):")
    for goal in goals:
        print(f"  [{goal['status'].lower()}] {goal['goal']}: {goal['value']}")
    if options.json:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps({"floors": floors, "functions": functions, "goals": goals}, indent=2))
        print(f"wrote {options.json}")
    bad = [name for name, row in functions.items() if row["status"] != [200]]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
