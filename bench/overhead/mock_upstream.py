"""A mock OpenAI-compatible upstream: raw asyncio, no framework, loopback only.

It has to answer far faster than any gateway in front of it, so it is an
`asyncio.Protocol` with a hand-written HTTP/1.1 parser (keep-alive, Content-Length and
chunked request bodies) and pre-serialised replies; no per-request coroutine. Every
`POST …/chat/completions` gets the same completion after a fixed delay (`--latency-ms`,
scheduled with `call_later`, so waiting costs no CPU):

- `stream` false: one JSON body with `usage`;
- `stream` true: Server-Sent Events in HTTP chunks: a role chunk, one chunk per word of
  the completion, a `finish_reason` chunk, a usage chunk (`choices: []`, always sent,
  as OpenAI does with `stream_options.include_usage`), then `data: [DONE]`. The delay is
  before the first chunk (the mock's time to first token); `--chunk-delay-ms` spaces
  the rest.
- a long stream, when the body carries the marker `[mock-stream N x MS]` (e.g. in the
  prompt, which every gateway forwards as it is): N content chunks, MS ms apart, in
  place of the one-per-word reply and the `--chunk-delay-ms` spacing (the first content
  chunk comes with the role chunk, the end with the last delay). The harness's
  streaming and many-connections runs use it, on the same mock as everything else.

`GET /v1/models` lists the requested-so-far model names (and `mock`); `GET /__stats`
returns the request counters, which the harness reads to check how many requests a
gateway actually forwarded (a cache-hit run should forward none).

    python -m bench.overhead.mock_upstream --port 9100 --latency-ms 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import time
from typing import Any

try:  # faster, and in the project's environment; the mock works without it
    import orjson

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

    _loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    _loads = json.loads

COMPLETION_TEXT = "Hello from the mock upstream: a fixed answer."
PROMPT_TOKENS = 12
COMPLETION_TOKENS = 10
MAX_HEAD = 64 * 1024
LONG_STREAM = re.compile(rb"\[mock-stream (\d{1,5}) x (\d{1,6}(?:\.\d+)?)\]")
LONG_WORD = "tok"


def long_stream_marker(chunks: int, delay_ms: float) -> str:
    """The text that makes the mock answer a stream with `chunks` content chunks."""
    return f"[mock-stream {chunks} x {delay_ms:g}]"


def long_stream(body: bytes) -> tuple[int, float] | None:
    """(content chunks, seconds between chunks) if `body` asks for a long stream."""
    found = LONG_STREAM.search(body)
    if found is None:
        return None
    return max(1, int(found.group(1))), float(found.group(2)) / 1000


def usage() -> dict[str, int]:
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}


def completion_body(model: str, created: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_mock",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": COMPLETION_TEXT,
                                             "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": usage(),
    }


def stream_events(model: str, created: int, chunks: int | None = None) -> list[dict[str, Any]]:
    """The events of a streamed reply: one content chunk per word, or `chunks` of them."""
    base = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": created,
            "model": model, "system_fingerprint": "fp_mock"}
    words = COMPLETION_TEXT.split(" ") if chunks is None else [LONG_WORD] * chunks
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None, "finish_reason": None}]}]
    events += [{**base, "choices": [{"index": 0, "delta": {"content": p}, "logprobs": None,
                                     "finish_reason": None}]} for p in pieces]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": "stop"}]})
    events.append({**base, "choices": [], "usage": usage()})
    return events


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Replies:
    """Pre-serialised responses, one set per model name seen (gateways rename models)."""

    def __init__(self) -> None:
        self.created = int(time.time())
        self._plain: dict[str, bytes] = {}
        self._stream: dict[tuple[str, int | None], tuple[bytes, list[bytes]]] = {}

    def plain(self, model: str, close: bool) -> bytes:
        body = self._plain.get(model)
        if body is None:
            body = self._plain[model] = _dumps(completion_body(model, self.created))
        return _head(200, "application/json", len(body), close) + body

    def stream(self, model: str, close: bool, chunks: int | None = None) -> tuple[bytes, list[bytes]]:
        """(head + first chunk, the remaining chunks incl. the terminating one)."""
        cached = self._stream.get((model, chunks))
        if cached is None:
            parts = [_http_chunk(b"data: " + _dumps(e) + b"\n\n")
                     for e in stream_events(model, self.created, chunks)]
            parts.append(_http_chunk(b"data: [DONE]\n\n"))
            parts.append(b"0\r\n\r\n")
            if chunks is None:
                cached = (parts[0], parts[1:])
            else:  # the first content chunk with the role chunk, the end in one piece
                cached = (parts[0] + parts[1], [*parts[2:1 + chunks], b"".join(parts[1 + chunks:])])
            self._stream[(model, chunks)] = cached
        first, rest = cached
        head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                b"transfer-encoding: chunked\r\n" + (b"connection: close\r\n" if close else b"") + b"\r\n")
        return head + first, rest

    def models(self) -> bytes:
        names = sorted({"mock", *self._plain, *(model for model, _ in self._stream)})
        body = _dumps({"object": "list", "data": [
            {"id": n, "object": "model", "created": self.created, "owned_by": "mock"} for n in names]})
        return _head(200, "application/json", len(body), False) + body


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
            413: b"Payload Too Large"}


def _head(status: int, ctype: str, length: int, close: bool) -> bytes:
    return (b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n"
            % (status, _REASONS.get(status, b"OK"), ctype.encode(), length,
               b"connection: close\r\n" if close else b""))


def _error(status: int, message: str, close: bool = False) -> bytes:
    body = _dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                             "code": None}})
    return _head(status, "application/json", len(body), close) + body


class Stats:
    def __init__(self) -> None:
        self.requests = 0        # every HTTP request
        self.completions = 0     # POST …/chat/completions answered 200 (plain + stream)
        self.streams = 0

    def body(self) -> bytes:
        body = _dumps({"requests": self.requests, "completions": self.completions,
                       "streams": self.streams})
        return _head(200, "application/json", len(body), False) + body


class _Incomplete(Exception):
    pass


def parse_request(buf: bytearray | bytes) -> tuple[int, bytes, bytes, dict[bytes, bytes], bytes] | None:
    """Parse one request from the front of `buf`.

    Returns (bytes consumed, method, target, lower-cased headers, body), or None when
    the request is not complete yet. Raises ValueError on a malformed request.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise ValueError("request head too large")
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise ValueError("bad request line")
    method, target, _version = parts
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ValueError("bad header line")
        headers[name.strip().lower()] = value.strip()
    pos = end + 4
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        body = bytearray()
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            pos = eol + 2
            if size == 0:
                # optional trailers, then the final CRLF
                term = buf.find(b"\r\n\r\n", pos - 2)
                if term < 0:
                    return None
                return term + 4, method, target, headers, bytes(body)
            if len(buf) < pos + size + 2:
                return None
            body += buf[pos:pos + size]
            pos += size + 2
    length = int(headers.get(b"content-length", b"0") or 0)
    if len(buf) < pos + length:
        return None
    return pos + length, method, target, headers, bytes(buf[pos:pos + length])


def wants_stream(body: bytes) -> tuple[str, bool]:
    """(model, stream) from a chat request body; a body we cannot read is non-streaming."""
    try:
        payload = _loads(body)
    except ValueError:
        return "mock", False
    if not isinstance(payload, dict):
        return "mock", False
    model = payload.get("model")
    return (model if isinstance(model, str) and model else "mock"), payload.get("stream") is True


class MockProtocol(asyncio.Protocol):
    def __init__(self, replies: Replies, stats: Stats, latency: float, chunk_delay: float) -> None:
        self.replies, self.stats = replies, stats
        self.latency, self.chunk_delay = latency, chunk_delay
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.buf:
            try:
                parsed = parse_request(self.buf)
            except ValueError as exc:
                self._send(_error(400, str(exc), close=True), close=True)
                return
            if parsed is None:
                return
            used, method, target, headers, body = parsed
            del self.buf[:used]
            self._handle(method, target, headers, body)

    def _handle(self, method: bytes, target: bytes, headers: dict[bytes, bytes], body: bytes) -> None:
        self.stats.requests += 1
        close = headers.get(b"connection", b"").lower() == b"close"
        path = target.split(b"?", 1)[0]
        if path.endswith(b"/chat/completions"):
            if method != b"POST":
                self._send(_error(405, "use POST", close), close)
                return
            model, stream = wants_stream(body)
            self.stats.completions += 1
            if stream:
                self.stats.streams += 1
                long = long_stream(body)
                first, rest = self.replies.stream(model, close, long[0] if long else None)
                delay = long[1] if long else self.chunk_delay
                self._later(self.latency, self._send_stream, first, rest, close, delay)
            else:
                self._later(self.latency, self._send, self.replies.plain(model, close), close)
        elif path.endswith(b"/models") and method == b"GET":
            self._send(self.replies.models(), close)
        elif path == b"/__stats":
            self._send(self.stats.body(), close)
        else:
            self._send(_error(404, f"no route {method.decode()} {path.decode()}", close), close)

    def _later(self, delay: float, fn: Any, *args: Any) -> None:
        if delay > 0:
            self.loop.call_later(delay, fn, *args)
        else:
            fn(*args)

    def _send(self, data: bytes, close: bool = False) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if close:
            transport.close()

    def _send_stream(self, first: bytes, rest: list[bytes], close: bool, delay: float) -> None:
        if delay <= 0:
            self._send(first + b"".join(rest), close)
            return
        self._send(first)
        self._send_rest(rest, 0, close, delay)

    def _send_rest(self, rest: list[bytes], i: int, close: bool, delay: float) -> None:
        # One timer per stream at a time (the next chunk's), not one per chunk up front:
        # thousands of open streams stay cheap for the mock.
        if i:
            if self.transport is None or self.transport.is_closing():
                return
            self._send(rest[i - 1], close and i == len(rest))
        if i < len(rest):
            self.loop.call_later(delay, self._send_rest, rest, i + 1, close, delay)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(host: str, port: int, latency_ms: float, chunk_delay_ms: float,
                ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or `stop` is set)."""
    loop = asyncio.get_running_loop()
    replies, stats = Replies(), Stats()
    server = await loop.create_server(
        lambda: MockProtocol(replies, stats, latency_ms / 1000, chunk_delay_ms / 1000),
        host, port, backlog=1024)
    stop = stop or asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not the main thread
            pass
    if ready is not None:
        ready.set()
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=1.0,
                        help="delay before each reply (before the first chunk when streaming)")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0,
                        help="delay between stream chunks after the first")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.latency_ms, args.chunk_delay_ms))


if __name__ == "__main__":
    main()
