"""`orchesity serve` as a deployment runs it: a real subprocess, stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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
    """Settings for a served gateway on the session's Postgres and (emptied) Redis db 1."""
    return _environment(DATABASE_URL=gateway_settings.DATABASE_URL.get_secret_value(),
                        REDIS_URL=gateway_settings.REDIS_URL.get_secret_value(), REDIS_DB="1")


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


def test_sigterm_stops_the_embedded_servers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = _environment(ORCHESITY_DATA_DIR=str(data))
    with serving(env, tmp_path, startup_s=120) as (url, process):
        pid = int((data / "pg" / "postmaster.pid").read_text().split()[0])
        assert psutil.pid_exists(pid)
        assert httpx.post(url + "/api/llm/orchestrate", json={"prompt": "hi"}, timeout=10).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
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
