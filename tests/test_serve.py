"""`orchesity serve` as a deployment runs it: a real subprocess, stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from core.settings import Settings
from tests.conftest import providers_file

ORCHESITY = str(Path(sys.executable).parent / "orchesity")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment(**settings: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {**keep, "LOG_DRAIN_INTERVAL_SECONDS": "0.2", **settings}


@contextmanager
def serving(env: dict[str, str], cwd: Path, startup_s: float = 60.0) -> Iterator[tuple[str, subprocess.Popen]]:
    port = _free_port()
    process = subprocess.Popen([ORCHESITY, "serve", "--port", str(port)], env=env, cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if process.poll() is not None:
                raise AssertionError(f"serve exited with {process.returncode}: {process.stdout.read()}")
            try:
                if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not become healthy"
            time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def external(gateway_settings: Settings) -> dict[str, str]:
    """Settings for a served gateway on the session's Postgres and (emptied) Redis db 1,
    open (other tests leave keys in that database)."""
    return _environment(DATABASE_URL=gateway_settings.DATABASE_URL.get_secret_value(),
                        REDIS_URL=gateway_settings.REDIS_URL.get_secret_value(), REDIS_DB="1",
                        OPEN_ACCESS="true")


@pytest.fixture
async def fresh(gateway_settings: Settings) -> AsyncIterator[dict[str, str]]:
    """Like `external`, on a database of its own (so it has no key yet), not open."""
    import uuid

    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from core.db import make_engine

    name = f"serve_{uuid.uuid4().hex[:10]}"
    admin_url = gateway_settings.DATABASE_URL.get_secret_value()
    engine = make_engine(admin_url)
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f"CREATE DATABASE {name}"))
    await engine.dispose()
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    yield _environment(DATABASE_URL=url, REDIS_URL=gateway_settings.REDIS_URL.get_secret_value(), REDIS_DB="1")


@pytest.mark.parametrize("content", [None, "{not json", json.dumps({"deployments": [{"name": "x"}]})])
def test_a_providers_file_it_cannot_use_stops_start_up(tmp_path: Path, external: dict[str, str],
                                                       content: str | None) -> None:
    path = tmp_path / "providers.json"
    if content is not None:
        path.write_text(content)
    result = subprocess.run([ORCHESITY, "serve", "--port", str(_free_port())], cwd=tmp_path, timeout=60,
                            env={**external, "ORCHESITY_PROVIDERS_FILE": str(path)},
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert str(path) in result.stderr
    if content and content.startswith("{\""):
        assert "deployments[0] ('x')" in result.stderr and "model: required" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_served_gateway_drains_its_log_and_logs_at_log_level(tmp_path: Path, external: dict[str, str]) -> None:
    path = providers_file(tmp_path, [
        {"name": "down", "base_url": "http://127.0.0.1:9/v1", "model": "m", "priority": 1},
        {"name": "backup", "kind": "simulated", "priority": 2, "simulation": {"latency_ms": 1}}])
    env = {**external, "ORCHESITY_PROVIDERS_FILE": str(path), "LOG_LEVEL": "DEBUG",
           "DWA_ROUTING_STRATEGY": "priority"}
    with serving(env, tmp_path) as (url, process):
        before = httpx.get(url + "/api/db/stats").json()["total_requests"]
        reply = httpx.post(url + "/api/llm/orchestrate", json={"prompt": "drain me"}, timeout=10)
        assert reply.status_code == 200 and reply.json()["results"][0]["provider"] == "backup"
        deadline = time.monotonic() + 5
        while httpx.get(url + "/api/db/stats").json()["total_requests"] <= before:
            assert time.monotonic() < deadline, "the request never reached Postgres"
            time.sleep(0.1)
    output = process.stdout.read()
    # The failed attempt on the dead upstream is logged by the app's own logger.
    assert "down failed after" in output and "connection failed" in output


def test_a_half_sent_request_gets_408_and_the_connection_back(tmp_path: Path, external: dict[str, str]) -> None:
    with serving({**external, "RECEIVE_TIMEOUT_SECONDS": "0.5"}, tmp_path) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        for partial in (b"POST /api/llm/orchestrate HTTP/1.1\r\nHost: x\r\n",  # half a head
                        b"POST /api/llm/orchestrate HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                        b"content-length: 100\r\n\r\n{\"prompt\": "):  # half a body
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(partial)
                started = time.monotonic()
                received = b""
                while chunk := sock.recv(65536):
                    received += chunk
                    if b"408" in received and (received.endswith(b"}") or b"in time" in received):
                        break
                assert received.startswith(b"HTTP/1.1 408"), received
                assert time.monotonic() - started < 3


def _postmaster_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):  # not there, or being written
        return None


def test_a_dead_embedded_postgres_is_started_again_and_sigterm_stops_the_servers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = _environment(ORCHESITY_DATA_DIR=str(data))
    postmaster = data / "pg" / "postmaster.pid"
    with serving(env, tmp_path, startup_s=120) as (url, process):
        first = _postmaster_pid(postmaster)
        assert first is not None and psutil.pid_exists(first)
        assert httpx.post(url + "/api/llm/orchestrate", json={"prompt": "hi"}, timeout=10).status_code == 200
        deadline = time.monotonic() + 10
        while httpx.get(url + "/api/db/stats", timeout=10).json()["total_requests"] < 1:  # drained into Postgres
            assert time.monotonic() < deadline
            time.sleep(0.1)
        os.kill(first, signal.SIGKILL)
        statuses: list[int] = []
        deadline = time.monotonic() + 30
        while True:
            stats = httpx.get(url + "/api/db/stats", timeout=10)
            statuses.append(stats.status_code)
            if stats.status_code == 200 and _postmaster_pid(postmaster) not in (None, first):
                break
            assert time.monotonic() < deadline, f"the embedded PostgreSQL did not come back: {statuses}"
            time.sleep(0.2)
        assert set(statuses) <= {200, 503}  # down meanwhile: a 503 naming the database, never a 500
        assert stats.json()["total_requests"] >= 1  # back with its data
        pid = _postmaster_pid(postmaster)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert "embedded PostgreSQL was down: started it again" in process.stdout.read()
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the embedded PostgreSQL is still running"
        time.sleep(0.1)
    assert json.loads((data / "pg" / ".handle_pids.json").read_text()) == []


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql://user:hunter2@127.0.0.1:9/none", "cannot reach the database (DATABASE_URL)"),
    ("mysql://user:hunter2@127.0.0.1:9/none", "DATABASE_URL: must start with one of"),
])
def test_migrate_with_a_database_it_cannot_use_says_why_in_one_line(tmp_path: Path, url: str,
                                                                   expected: str) -> None:
    result = subprocess.run([ORCHESITY, "migrate"], cwd=tmp_path, timeout=60, capture_output=True, text=True,
                            env=_environment(DATABASE_URL=url, REDIS_ENABLED="false"))
    assert result.returncode in (1, 2)
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def _serve_once(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ORCHESITY, "serve", "--port", str(_free_port()), *args], cwd=cwd, env=env,
                          timeout=60, capture_output=True, text=True)


def test_with_no_key_it_serves_open_on_loopback_only(tmp_path: Path, fresh: dict[str, str]) -> None:
    refused = _serve_once(fresh, tmp_path, "--host", "0.0.0.0")
    assert refused.returncode == 2
    assert "no API key exists" in refused.stderr and "orchesity keys create" in refused.stderr
    chat = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    with serving(fresh, tmp_path) as (url, process):
        health = httpx.get(url + "/api/health").json()
        answered = httpx.post(url + "/v1/chat/completions", timeout=10, json=chat)
        # the first key, made by the CLI while it serves, closes the door
        made = subprocess.run([ORCHESITY, "keys", "create", "first", "--scopes", "llm"], cwd=tmp_path,
                              env=fresh, timeout=60, capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip().splitlines()[-1]
        deadline = time.monotonic() + 5
        while (anonymous := httpx.post(url + "/v1/chat/completions", timeout=10, json=chat)).status_code == 200 \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        keyed = httpx.post(url + "/v1/chat/completions", timeout=10, json=chat,
                           headers={"authorization": f"Bearer {key}"})
        closed = httpx.get(url + "/api/health").json()
    assert health["auth"]["mode"] == "open" and "until one is created" in health["auth"]["note"]
    assert answered.status_code == 200
    assert anonymous.status_code == 401 and keyed.status_code == 200 and closed["auth"]["mode"] == "keys"
    assert "OPEN ACCESS" in process.stdout.read()


def test_a_key_made_with_the_cli_is_required_and_works(tmp_path: Path, fresh: dict[str, str]) -> None:
    early = subprocess.run([ORCHESITY, "keys", "create", "x", "--scopes", "llm"], cwd=tmp_path, env=fresh,
                           timeout=60, capture_output=True, text=True)
    assert early.returncode == 1 and "orchesity migrate" in early.stderr and "Traceback" not in early.stderr
    assert subprocess.run([ORCHESITY, "migrate"], cwd=tmp_path, env=fresh, timeout=60).returncode == 0
    made = subprocess.run([ORCHESITY, "keys", "create", "ci-bot", "--scopes", "llm,runs"], cwd=tmp_path,
                          env=fresh, timeout=60, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]  # alone on the last line
    assert key.startswith("osk_") and " " not in key
    no_cron = _serve_once(fresh, tmp_path, "--host", "0.0.0.0")
    assert no_cron.returncode == 2 and "CRON_SECRET" in no_cron.stderr
    env = {**fresh, "CRON_SECRET": "c" * 40}
    with serving(env, tmp_path) as (url, _):
        chat = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
        anonymous = httpx.post(url + "/v1/chat/completions", json=chat, timeout=10)
        keyed = httpx.post(url + "/v1/chat/completions", json=chat, timeout=10,
                           headers={"authorization": f"Bearer {key}"})
        cron = httpx.post(url + "/api/cron/drain-logs", headers={"authorization": "Bearer " + "c" * 40})
    assert anonymous.status_code == 401 and keyed.status_code == 200 and cron.status_code == 200
    listed = subprocess.run([ORCHESITY, "keys", "list"], cwd=tmp_path, env=fresh, timeout=60,
                            capture_output=True, text=True)
    assert "ci-bot" in listed.stdout and key not in listed.stdout
    revoked = subprocess.run([ORCHESITY, "keys", "revoke", key.split("_")[1]], cwd=tmp_path, env=fresh,
                             timeout=60, capture_output=True, text=True)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
