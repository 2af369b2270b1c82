"""LiteLLM's proxy, in its own virtual environment under `.bench/` (never the project's).

LiteLLM needs `openai<3` while Orchesity is on openai 3.x, so it gets its own venv:

    uv venv .bench/litellm-venv
    uv pip install --compile-bytecode --python .bench/litellm-venv 'litellm[proxy]' 'openai<3'

installed once and reused (a marker file records a finished install). Bytecode is
compiled at install because this machine sets PYTHONDONTWRITEBYTECODE, and LiteLLM's
import time would otherwise be compiled again at every start.

Configured with one model pointed at the mock, a master key, no database, the local
model cost map (LITELLM_LOCAL_MODEL_COST_MAP=True: no fetch from GitHub at start), one
uvicorn worker, bound to 127.0.0.1. Everything else is LiteLLM's default.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

MASTER_KEY = "sk-bench-master"
MODEL_NAME = "mock"
REQUIREMENTS = ("litellm[proxy]", "openai<3")
MARKER = ".bench-installed"


class InstallError(RuntimeError):
    pass


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def installed_version(venv: Path) -> str | None:
    marker = venv / MARKER
    if not marker.exists() or not (venv / "bin" / "litellm").exists():
        return None
    return marker.read_text().strip() or "unknown"


def ensure_installed(venv: Path, log_path: Path) -> tuple[str, bool]:
    """(LiteLLM version, whether it was installed now). Raises InstallError."""
    version = installed_version(venv)
    if version:
        return version, False
    uv = shutil.which("uv")
    if not uv:
        raise InstallError("uv is not on PATH")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        steps = [
            # the interpreter the project's venv is built on, not the venv itself
            [uv, "venv", "--allow-existing", "--python", getattr(sys, "_base_executable", sys.executable),
             str(venv)],
            [uv, "pip", "install", "--compile-bytecode", "--python", str(venv_python(venv)), *REQUIREMENTS],
        ]
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
        for argv in steps:
            log.write(("$ " + " ".join(argv) + "\n").encode())
            log.flush()
            done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=1800,
                                  check=False)
            if done.returncode != 0:
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                raise InstallError(f"`{' '.join(argv[:3])} …` exited {done.returncode}; log {log_path}:\n"
                                   + "\n".join(tail))
    probe = subprocess.run([str(venv_python(venv)), "-c",
                            "from importlib.metadata import version; print(version('litellm'))"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise InstallError(f"litellm is not importable after the install: {probe.stderr[-500:]}")
    version = probe.stdout.strip()
    (venv / MARKER).write_text(version + "\n")
    return version, True


def write_config(path: Path, mock_port: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL_NAME}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL_NAME}\n"
        f"      api_base: http://127.0.0.1:{mock_port}/v1\n"
        "      api_key: fake\n"
        "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n"
    )
    return path


def command(venv: Path, config: Path, port: int) -> list[str]:
    return [str(venv / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1",
            "--port", str(port), "--num_workers", "1"]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "DATABASE_URL", "REDIS_URL", "REDIS_HOST", "PYTHONPATH")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["LITELLM_MASTER_KEY"] = MASTER_KEY
    return env
