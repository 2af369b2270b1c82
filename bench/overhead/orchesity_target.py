"""Orchesity's gateway as a benchmark target: its providers file, environment and command.

It runs as users run it, `uv run orchesity serve --host 127.0.0.1 --port P` (one
uvicorn worker, migrations first), with:

- ORCHESITY_PROVIDERS_FILE: a generated TOML file with one deployment, `mock`, at the
  mock upstream, and `include_defaults = false`, so the mock is the only provider;
- ORCHESITY_DATA_DIR=.bench/orchesity-data: its own embedded Postgres and Redis;
- keys enforced, as in a deployment: the harness migrates the database and issues a key
  with `orchesity keys create bench --scopes llm`, which every request sends, and sets
  CRON_SECRET (which `serve` then requires);
- everything else at its defaults: request logging and DWA recording on, the cache on.
  The miss path turns the cache off per request (`"cache": {"no_cache": true,
  "no_store": true}` in the body); the hit path sends the plain body after one warm-up.

Variables that would point it elsewhere (DATABASE_URL, REDIS_URL, UPSTASH_*, provider
keys) are removed from its environment, and it runs from `.bench/orchesity-run/` so a
developer's `.env` in the repository is not read either.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from bench.overhead.procs import terminate_pid
from bench.overhead.redis_count import redis_pid

MODEL_NAME = "mock"
KEY_ENV = "ORCHESITY_BENCH_MOCK_KEY"

# Settings that would send Orchesity to another database, Redis or provider.
_DROPPED = ("DATABASE_URL", "REDIS_URL", "UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_REST_TOKEN",
            "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GROK_API_KEY",
            "ORCHESITY_PROVIDERS_FILE", "ORCHESITY_DATA_DIR", "REDIS_ENABLED", "VIRTUAL_ENV")


def providers_toml(mock_port: int) -> str:
    return (
        "# Written by bench/overhead: the mock upstream is the only provider.\n"
        "include_defaults = false\n\n"
        "[[deployments]]\n"
        f'name = "{MODEL_NAME}"\n'
        f'base_url = "http://127.0.0.1:{mock_port}/v1"\n'
        f'model = "{MODEL_NAME}"\n'
        f'api_key_env = "{KEY_ENV}"\n'
    )


def write_providers_file(path: Path, mock_port: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(providers_toml(mock_port))
    return path


def validate_providers_file(path: Path) -> str | None:
    """Load the file with Orchesity's own loader; None if fine, else the error."""
    try:
        from core.providers.config import load_deployments
        from core.settings import load_settings
    except ImportError as exc:  # pragma: no cover - the project layout changed
        return f"cannot import Orchesity's providers loader: {exc}"
    try:
        settings = load_settings(ORCHESITY_PROVIDERS_FILE=path)
        specs = load_deployments(settings, environ={KEY_ENV: "fake"})
    except Exception as exc:  # noqa: BLE001 - the loader's own, descriptive errors
        return f"{type(exc).__name__}: {exc}"
    names = [s.name for s in specs]
    if names != [MODEL_NAME]:
        return f"expected exactly the deployment {MODEL_NAME!r}, got {names}"
    return None


def environment(providers_file: Path, data_dir: Path, overrides: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED}
    env.update({
        "ORCHESITY_PROVIDERS_FILE": str(providers_file),
        "ORCHESITY_DATA_DIR": str(data_dir),
        KEY_ENV: "fake",
    })
    env.update(overrides)
    return env


def shown_environment(env: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
    """The variables the harness set, for the report."""
    keys = ("ORCHESITY_PROVIDERS_FILE", "ORCHESITY_DATA_DIR", KEY_ENV, *overrides)
    return {k: env[k] for k in keys if k in env}


def command(project_root: Path, port: int, workers: int = 1) -> list[str]:
    uv = shutil.which("uv") or "uv"
    # --no-sync: the harness itself runs under `uv run`, so the environment is current;
    # a sync here could change it mid-benchmark.
    return [uv, "run", "--project", str(project_root), "--no-sync", "orchesity", "serve",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]


def issue_key(project_root: Path, env: dict[str, str], cwd: Path) -> tuple[str, str | None]:
    """Migrate the gateway's database and issue it a key: (key, None) or ("", the problem)."""
    uv = shutil.which("uv") or "uv"
    base = [uv, "run", "--project", str(project_root), "--no-sync", "orchesity"]
    for step in (["migrate"], ["keys", "create", "bench", "--scopes", "llm"]):
        done = subprocess.run(base + step, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            return "", f"orchesity {' '.join(step)} failed: {done.stderr.strip()[-500:]}"
    return done.stdout.strip().splitlines()[-1], None


def chat_body(base: dict[str, Any], miss: bool) -> dict[str, Any]:
    body = dict(base)
    if miss:
        body["cache"] = {"no_cache": True, "no_store": True}
    return body


def store_processes(data_dir: Path) -> dict[str, int]:
    """pids of the embedded Postgres (postmaster) and Redis serving `data_dir`, if running."""
    out: dict[str, int] = {}
    pidfile = Path(data_dir) / "pg" / "postmaster.pid"
    try:
        out["postgres"] = int(pidfile.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        pass
    pid = redis_pid(data_dir)
    if pid:
        out["redis"] = pid
    return out


def store_process_tree(data_dir: Path) -> list[Any]:
    """The embedded servers' processes (Postgres with its backends, Redis), for RSS."""
    import psutil

    out = []
    for name, pid in store_processes(data_dir).items():
        try:
            proc = psutil.Process(pid)
            out.append(proc)
            if name == "postgres":
                out.extend(proc.children(recursive=True))
        except psutil.Error:
            pass
    return out


def stop_stores(data_dir: Path) -> list[str]:
    """Stop the embedded servers of `data_dir` if they outlived the gateway.

    Orchesity stops them itself on a clean exit; after a hard kill they would stay.
    Only the two pids recorded under the benchmark's own data directory are touched.
    """
    stopped = []
    pids = store_processes(data_dir)
    # SIGINT is Postgres's "fast" shutdown; SIGTERM is Redis's normal one
    if terminate_pid(pids.get("postgres"), ("postgres",), sig=signal.SIGINT):
        stopped.append(f"postgres {pids['postgres']}")
    if terminate_pid(pids.get("redis"), ("redis-server",), sig=signal.SIGTERM):
        stopped.append(f"redis-server {pids['redis']}")
    return stopped
