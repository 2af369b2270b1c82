"""A provider's reply read within its size limit: a whole body, or its server-sent events.

The adapters read every reply through here (the direct path's through
`direct.DirectPost`, which the pool's own read feeds), so one misbehaving upstream (an
endless body, a gzip bomb, an event that never ends) costs a bounded amount of memory:
past the deployment's `max_reply_bytes` (PROVIDER_MAX_REPLY_BYTES) the call fails as a
bad response, its connection is closed and the router fails over. Before, a
non-streamed call read whatever came until its timeout: an upstream sending bytes
without end grew the gateway by ~300 MB a second. A stream's events are bounded one by
one, not the stream as a whole: a long reply is as long as it is.

Events are split as the SSE standard says, lines ending at CRLF, LF or CR and nowhere
else, rather than with httpx2's `aiter_lines`, which splits like `str.splitlines`: at
U+2028, U+2029 and U+0085 too. JSON may hold those unescaped, and pydantic's and Node's
encoders send them so (vLLM, Ollama's and many other OpenAI-compatible servers): a
reply whose text held one broke its event ("malformed JSON in stream event").
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2

from core.providers.base import ProviderBadResponse

_BOM = b"\xef\xbb\xbf"


def too_large(limit: int, deployment: str, what: str = "reply") -> ProviderBadResponse:
    return ProviderBadResponse(
        f"{what} larger than {limit} bytes: cut off (PROVIDER_MAX_REPLY_BYTES, or the deployment's "
        "max_reply_bytes)", deployment=deployment)


async def read_body(response: httpx2.Response, limit: int, deployment: str) -> bytes:
    """The body of `response`, decoded, or ProviderBadResponse once it passes `limit` bytes."""
    parts: list[bytes] = []
    size = 0
    async for part in response.aiter_bytes():
        size += len(part)
        if size > limit:
            raise too_large(limit, deployment)
        parts.append(part)
    return b"".join(parts)


async def sse_data(response: httpx2.Response, limit: int, deployment: str) -> AsyncIterator[str]:
    """The data of each server-sent event of `response` (its data lines joined with LF;
    other fields ignored); ProviderBadResponse for an event past `limit` bytes."""
    pending = b""  # the line begun and not yet ended
    data: list[bytes] = []  # the data lines of the event being read
    size = 0  # their bytes
    skip_lf = False  # the last chunk ended in CR: an LF starting the next one ends no line
    first = True
    async for chunk in response.aiter_bytes():
        if first:
            first = False
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM):]
        if skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        if b"\r" in chunk:
            skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            skip_lf = False
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            if not line:
                if data:
                    yield b"\n".join(data).decode("utf-8", "replace")
                    data, size = [], 0
            elif line.startswith(b"data:"):
                value = line[6:] if line.startswith(b"data: ") else line[5:]
                data.append(value)
                size += len(value)
        if size + len(pending) > limit:
            raise too_large(limit, deployment, "stream event")
    if pending.startswith(b"data:"):
        data.append(pending[6:] if pending.startswith(b"data: ") else pending[5:])
    if data:
        yield b"\n".join(data).decode("utf-8", "replace")
