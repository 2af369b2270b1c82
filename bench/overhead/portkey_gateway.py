"""Portkey's open-source AI gateway (Node.js), installed with npm under `.bench/portkey/`.

    npm install --prefix .bench/portkey   # a package.json pinning the two versions below

`@portkey-ai/gateway` is pinned, and so is `@hono/node-server` (through npm's
`overrides`): the gateway declares `^1.3.3`, which resolves today to 1.19.x, under which
every streamed reply fails on Node 20 ("TypeError: immutable" when the gateway appends
its headers to the upstream response; the plain replies work). 1.13.5 is the version
Portkey's own repository locks and patches (`patches/@hono+node-server+1.13.5.patch`),
so the gateway runs as Portkey builds it. Installed once and reused while
`.bench/portkey/.bench-installed` names the pinned version; delete the directory to
reinstall. Started as Portkey documents it, `node …/build/start-server.js --port=P`
(plus `--headless`: no UI), one process; it binds every interface, on a loopback-only
benchmark that is harmless. Each request carries `x-portkey-provider: openai` and
`x-portkey-custom-host: <the mock's base URL>`, Portkey's way to forward to any
OpenAI-compatible host. Portkey logs nothing in this mode (no logging backend).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

VERSION = "1.15.2"
NODE_SERVER_VERSION = "1.13.5"
MARKER = ".bench-installed"


class InstallError(RuntimeError):
    pass


def start_script(prefix: Path) -> Path:
    return prefix / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"


def package_json() -> dict[str, object]:
    return {"private": True, "dependencies": {"@portkey-ai/gateway": VERSION},
            "overrides": {"@hono/node-server": NODE_SERVER_VERSION}}


def ensure_installed(prefix: Path, log_path: Path) -> tuple[str, bool]:
    """(the gateway's version, whether it was installed now). Raises InstallError."""
    marker = prefix / MARKER
    if marker.exists() and marker.read_text().strip() == VERSION and start_script(prefix).exists():
        return VERSION, False
    npm, node = shutil.which("npm"), shutil.which("node")
    if not npm or not node:
        raise InstallError("node and npm are needed for the Portkey target (apt-get install nodejs npm)")
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "package.json").write_text(json.dumps(package_json(), indent=2) + "\n")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--omit=dev"]
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(argv) + "\n").encode())
        log.flush()
        done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=900, check=False)
    if done.returncode != 0 or not start_script(prefix).exists():
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise InstallError(f"npm install exited {done.returncode}; log {log_path}:\n" + "\n".join(tail))
    marker.write_text(VERSION + "\n")
    return VERSION, True


def command(prefix: Path, port: int) -> list[str]:
    return [shutil.which("node") or "node", str(start_script(prefix)), f"--port={port}", "--headless"]


def headers(mock_port: int) -> dict[str, str]:
    """What every request to Portkey carries on top of the common headers."""
    return {"x-portkey-provider": "openai", "x-portkey-custom-host": f"http://127.0.0.1:{mock_port}/v1"}
