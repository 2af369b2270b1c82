"""The adapters' direct JSON POST: one request to a fixed URL and headers, its reply read whole
(or, for a stream, handed back unread: `DirectPost.open`).

Every adapter sends its non-streamed calls, the hot path, straight to its transport
(`openai_compat.py` says why not through the SDK). On the providers' own pool
(`http_pool.ProviderTransport`) the request line and headers are checked and encoded
once per URL (`ProviderTransport.prepare`) and the reply comes back as bytes: httpx2's
Request and Response models (header normalising, the body's stream and decoder, header
look-ups) cost about 30 µs a call here (12 µs to build the request, 16 µs for the reply
and its read), and leaving them took a chat request through the gateway from 1.73 to 1.39
million instructions (`bench.overhead.instructions`). A reply with a
Content-Encoding (a provider gzips what it is allowed to) is decoded by httpx2 as before,
and any other transport (a proxy's, a test's) gets an httpx2.Request as it always did.
A stream's request is an httpx2.Request on every transport: its reply is read as it
comes, by the adapter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import httpx2

from core.providers.http_pool import Prepared, ProviderTransport, ReplyTooLarge
from core.providers.replies import read_body, too_large


class Reply(NamedTuple):
    status: int
    headers: Mapping[str, str]  # looked up by lower-case name
    content: bytes  # decoded


class DirectPost:
    """POSTs with `headers` over `transport`, to any of a few URLs, for `deployment`,
    whose replies may hold at most `limit` bytes (replies.py)."""

    def __init__(self, transport: httpx2.AsyncBaseTransport, headers: httpx2.Headers, limit: int,
                 deployment: str) -> None:
        self._transport = transport
        self._pool = transport if isinstance(transport, ProviderTransport) else None
        self._headers = headers
        self._limit = limit
        self._deployment = deployment
        self._prepared: dict[httpx2.URL, Prepared] = {}

    async def __call__(self, url: httpx2.URL, body: bytes, timeout: float | None) -> Reply:
        """`body` to `url`, every phase (pool, connect, write, each read) within `timeout`.

        Raises httpx2's exceptions, as the transport does, and ProviderBadResponse for a
        reply past the limit."""
        pool = self._pool
        if pool is not None:
            phases = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
            prepared = self._prepared.get(url)
            if prepared is None:  # a header it refuses raises here, on every call, as before
                prepared = self._prepared[url] = pool.prepare(url, self._headers)
            try:
                status, raw, content = await pool.post_prepared(prepared, body, phases, self._limit)
            except ReplyTooLarge:
                raise too_large(self._limit, self._deployment) from None
            if not any(name.lower() == b"content-encoding" for name, _ in raw):
                return Reply(status, _header_map(raw), content)
            response = httpx2.Response(status, headers=raw, stream=httpx2.ByteStream(content))
        else:
            response = await self.open(url, body, timeout)
        try:
            content = await read_body(response, self._limit, self._deployment)  # decoded, within the limit
        finally:
            await response.aclose()
        return Reply(response.status_code, response.headers, content)

    async def open(self, url: httpx2.URL, body: bytes, timeout: float | None) -> httpx2.Response:
        """`body` to `url`, every phase within `timeout`, and the reply's head: its body
        (a stream) is the caller's to read and close."""
        phases = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        return await self._transport.handle_async_request(httpx2.Request(
            "POST", url, headers=self._headers, content=body, extensions={"timeout": phases}))


def _header_map(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Reply headers by lower-case name; a repeated one joined with ", " as httpx2 joins it."""
    headers: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers
