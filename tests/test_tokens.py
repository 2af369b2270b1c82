"""Counting tokens never waits on tiktoken's download of its encoding."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

COUNT = """
import time
from core.providers import tokens
started = time.monotonic()
usage = tokens.counted_usage([{"role": "user", "content": "hello there"}], "a short reply", "gpt-4o-mini")
print(round(time.monotonic() - started, 3), usage.source, usage.completion_tokens)
"""


def test_a_count_does_not_wait_for_an_encoding_download_that_hangs(tmp_path: Path) -> None:
    # A proxy that accepts connections and never answers: tiktoken's download (requests,
    # no timeout) through it hangs for good, as behind a firewall that drops packets.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True).start()
    proxy = f"http://127.0.0.1:{silent.getsockname()[1]}"
    env = {**os.environ, "HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "NO_PROXY": "",
           "TIKTOKEN_CACHE_DIR": str(tmp_path)}
    try:
        result = subprocess.run([sys.executable, "-c", COUNT], env=env, capture_output=True, text=True,
                                timeout=30)
    finally:
        silent.close()
    assert result.returncode == 0, result.stderr
    seconds, source, completion = result.stdout.split()
    assert float(seconds) < 0.5 and source == "estimate" and int(completion) > 0
