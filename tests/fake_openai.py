"""A local OpenAI-compatible chat server over real TCP, for streaming tests.

pytest-httpx replaces the transport, so it cannot show what a real socket does when a
provider drops a stream half-way. This server can: it speaks just enough HTTP/1.1
(chunked bodies, `Connection: close`) and aborts the connection on request.

What it does is chosen by the `model` of each request:

    "ok" (or anything else)   a normal reply; streamed replies end with usage and [DONE]
    "no-usage"                like ok, without any usage (the client must count)
    "cut-before-first-token"  streams the role chunk, then drops the connection
    "cut-after-first-token"   streams two content chunks, then drops the connection
    "end-without-done"        streams content, then ends the body cleanly, no finish/[DONE]
    "slow:<seconds>"          waits that long before answering
    "trickle:<seconds>"       streams a word, then waits that long before the next one
    "status:<code>"           answers with that HTTP status and an OpenAI-style error body
    "endless"                 a plain reply's body that never ends (bytes until the client leaves)
    "endless-error"           the same with status 500, to a stream's request as to a plain one
    "gzip-bomb"               a plain reply of 64 MiB of spaces, gzipped to 64 KiB
    "endless-event"           a stream whose first event never ends
    "line-separators"         a stream whose words hold U+2028, U+2029 and U+0085 unescaped (as
                              pydantic's and Node's JSON encoders send them), its events'
                              lines ending in CRLF and CR as well as LF

    with FakeOpenAI() as server:
        base_url = server.base_url          # http://127.0.0.1:<port>/v1
        ...
        server.requests                     # [(headers, body), ...] as received
        server.hang = True                  # from now on, every request waits, answering nothing

It runs its own event loop in a thread, so any test (sync or async) can use it.
`call_and_stream` checks an adapter against it: one plain call and one stream.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx2

REPLY_WORDS = ["Hello", " from", " the", " fake", " server", "."]
SEPARATED_WORDS = ["one\u2028", "two\u2029", "three\u0085", "four"]


async def call_and_stream(server: FakeOpenAI, transport: httpx2.AsyncBaseTransport | None = None) -> None:
    """One plain call (the adapter's direct path) and one stream (through the SDK), both
    answered in full by the fake's "ok" model."""
    from pydantic import SecretStr

    from core.providers import ChatRequest, DeploymentSpec
    from core.providers.openai_compat import OpenAICompatAdapter

    request = ChatRequest(messages=[{"role": "user", "content": "hello"}], max_tokens=20)
    spec = DeploymentSpec(name="fake", base_url=server.base_url, model="ok")
    adapter = OpenAICompatAdapter(spec.model_copy(update={"api_key": SecretStr("fake-key")}), transport=transport)
    try:
        completion = await adapter.complete(request, timeout=5)
        chunks = [chunk async for chunk in adapter.stream(request, timeout=5)]
    finally:
        await adapter.aclose()
    assert completion.text == "".join(REPLY_WORDS)
    assert [chunk.text for chunk in chunks[:-1]] == REPLY_WORDS and chunks[-1].finish_reason == "stop"


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-openai", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0
        self.hang = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):  # e.g. a "slow:" reply nobody waits for any more
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # --- HTTP ------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = json.loads(await reader.readexactly(length)) if length else {}
            self.requests.append((headers, body))
            await self._respond(body, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            if not writer.is_closing():
                writer.close()

    async def _respond(self, body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        model = str(body.get("model", "ok"))
        if self.hang:
            await asyncio.Event().wait()  # until the server stops
        if model.startswith("slow:"):
            await asyncio.sleep(float(model.split(":", 1)[1]))
        if model.startswith("status:"):
            status = int(model.split(":", 1)[1])
            error = {"error": {"message": f"fake error {status}", "type": "fake_error", "code": None}}
            await _send_whole(writer, status, json.dumps(error).encode(), "application/json")
            return
        if model in ("endless", "endless-error"):
            status = b"500 FAKE" if model == "endless-error" else b"200 OK"
            writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{")
            while True:  # until the client closes the connection (ConnectionError)
                writer.write(b" " * 65536)
                await writer.drain()
        if model == "gzip-bomb":
            await _send_whole(writer, 200, gzip.compress(b" " * (64 * 1024 * 1024)), "application/json",
                              "content-encoding: gzip\r\n")
            return
        if not body.get("stream"):
            reply = {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "".join(REPLY_WORDS)}, "finish_reason": "stop"}
                ],
            }
            if model != "no-usage":
                reply["usage"] = {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}
            await _send_whole(writer, 200, json.dumps(reply).encode(), "application/json")
            return

        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        )

        ends = itertools.cycle(["\r\n\r\n", "\r\r", "\n\r\n"] if model == "line-separators" else ["\n\n"])

        async def event(data: object) -> None:
            payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
            raw = f"data: {payload}{next(ends)}".encode()
            writer.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
            await writer.drain()

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        if model == "endless-event":
            raw = b'data: {"choices": [{"delta": {"content": "' + b"a" * 65536
            while True:
                writer.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
                await writer.drain()
                raw = b"a" * 65536
        await event(chunk({"role": "assistant", "content": ""}))
        if model == "cut-before-first-token":
            writer.transport.abort()  # no terminating chunk: the client sees a broken body
            return
        for number, word in enumerate(SEPARATED_WORDS if model == "line-separators" else REPLY_WORDS):
            if model == "cut-after-first-token" and number == 2:
                writer.transport.abort()
                return
            await event(chunk({"content": word}))
            if model.startswith("trickle:"):
                await asyncio.sleep(float(model.split(":", 1)[1]))
        if model == "end-without-done":
            writer.write(b"0\r\n\r\n")  # a clean end of the body, but the reply never finished
            await writer.drain()
            return
        await event(chunk({}, "stop"))
        include_usage = (body.get("stream_options") or {}).get("include_usage")
        if include_usage and model != "no-usage":
            usage_chunk = chunk({})
            usage_chunk["choices"] = []
            usage_chunk["usage"] = {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}
            await event(usage_chunk)
        await event("[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def _send_whole(writer: asyncio.StreamWriter, status: int, content: bytes, content_type: str,
                      extra_headers: str = "") -> None:
    writer.write(
        f"HTTP/1.1 {status} FAKE\r\ncontent-type: {content_type}\r\n{extra_headers}"
        f"content-length: {len(content)}\r\nconnection: close\r\n\r\n".encode()
        + content
    )
    await writer.drain()
