"""Small sequential HTTP clients: the check before a target is loaded, and streaming TTFT.

Plain `http.client` on one keep-alive connection, so the client adds the same small,
constant cost to every target.
"""

from __future__ import annotations

import http.client
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CHAT_PATH = "/v1/chat/completions"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port, self.timeout = port, timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def post(self, body: bytes, headers: dict[str, str], path: str = CHAT_PATH) -> Reply:
        try:
            self.conn.request("POST", path, body=body, headers=headers)
            resp = self.conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            self.reset()
            raise
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)

    def get(self, path: str) -> Reply:
        try:
            self.conn.request("GET", path)
            resp = self.conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            self.reset()
            raise
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)

    def ttft(self, body: bytes, headers: dict[str, str], path: str = CHAT_PATH) -> tuple[float, float]:
        """(ms to the first chunk with content, ms to the end of the stream) of one request."""
        started = time.perf_counter()
        first: float | None = None
        try:
            self.conn.request("POST", path, body=body, headers=headers)
            resp = self.conn.getresponse()
            if resp.status != 200:
                raise ProbeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
            while True:
                line = resp.readline()
                if not line:
                    break
                if first is None and line.startswith(b"data:"):
                    payload = line[5:].strip()
                    if payload and payload != b"[DONE]" and _has_content(payload):
                        first = time.perf_counter()
            ended = time.perf_counter()
        except (OSError, http.client.HTTPException):
            self.reset()
            raise
        if first is None:
            raise ProbeError("the stream ended without a content chunk")
        return (first - started) * 1000, (ended - started) * 1000

    def reset(self) -> None:
        self.conn.close()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)

    def close(self) -> None:
        self.conn.close()


class ProbeError(RuntimeError):
    pass


def _has_content(payload: bytes) -> bool:
    try:
        event = json.loads(payload)
    except ValueError:
        return False
    for choice in event.get("choices") or ():
        if (choice.get("delta") or {}).get("content"):
            return True
    return False


def check_completion(reply: Reply, expected_content: str) -> str | None:
    """None if `reply` is a 200 chat completion carrying the mock's answer; else why not."""
    if reply.status != 200:
        return f"HTTP {reply.status} from POST {CHAT_PATH}: {reply.body[:300].decode(errors='replace')}"
    try:
        content = reply.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return f"HTTP 200 but not a chat completion: {reply.body[:300].decode(errors='replace')}"
    if content != expected_content:
        return f"HTTP 200 but the content is not the mock's answer: {content!r}"
    return None


def ttft_series(port: int, body: Callable[[int], bytes], headers: dict[str, str], n: int,
                warmup: int = 5) -> dict[str, Any]:
    """p50/p95 time to first content chunk over `n` sequential streaming requests.

    `body(i)` gives the i-th request's body (the same bytes each time, or a unique
    prompt when the cache must miss).
    """
    client = Client(port)
    try:
        for i in range(warmup):
            client.ttft(body(-1 - i), headers)
        firsts, totals = [], []
        for i in range(n):
            first, total = client.ttft(body(i), headers)
            firsts.append(first)
            totals.append(total)
    finally:
        client.close()
    firsts.sort()
    totals.sort()
    return {"requests": n, "ttft_p50_ms": round(statistics.median(firsts), 3),
            "ttft_p95_ms": round(firsts[min(n - 1, int(0.95 * n))], 3),
            "stream_total_p50_ms": round(statistics.median(totals), 3)}
