"""What the adapters of providers' own HTTP APIs share (anthropic.py, gemini.py): the
deployment, its concurrency slots, its connection pool (the project's, http_pool.py,
made on first use; or the transport a caller gave, which is never closed here), the
direct path's sender on it (direct.py), the key scrubbed from every message, a
redirect's error, and httpx2's exceptions as ProviderErrors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import httpx2

from core.providers.base import (ProviderAuthError, ProviderBadResponse, ProviderError, ProviderTimeout,
                                 ProviderUnavailable, Slots)
from core.providers.config import redact_url

if TYPE_CHECKING:
    from core.providers.config import DeploymentSpec
    from core.providers.direct import DirectPost

MAX_MESSAGE = 1000  # characters of a provider's error message kept in our errors


def scrub(spec: DeploymentSpec, text: str) -> str:
    """`text` (a provider's message, an exception's) with the deployment's key redacted, cut short."""
    key = spec.api_key.get_secret_value() if spec.api_key is not None else None
    if key and key in text:
        text = text.replace(key, "[redacted]")
    return text[:MAX_MESSAGE]


def redirected(spec: DeploymentSpec, status: int, headers: Mapping[str, str]) -> ProviderAuthError:
    """The error for a 3xx reply. Redirects are not followed (the key would go wherever a
    reply points, a private address included), so the deployment's base_url is wrong:
    like a 404, a misconfiguration, and another deployment is tried."""
    location = headers.get("location")
    where = f" to {scrub(spec, redact_url(location))}" if location else ""
    return ProviderAuthError(f"HTTP {status}: redirected{where}, which is not followed: set the deployment's "
                             "base_url to the final URL", deployment=spec.name, status=status)


class NativeAdapter:
    def __init__(self, spec: DeploymentSpec, pool_url: httpx2.URL, *,
                 transport: httpx2.AsyncBaseTransport | None = None) -> None:
        self.spec = spec
        self._pool_url = pool_url  # the origin the pool connects to
        self._given_transport = transport  # owned by the caller, not closed here
        self._transport: httpx2.AsyncBaseTransport | None = transport
        self._direct: DirectPost | None = None
        self._headers = httpx2.Headers()  # the non-streamed calls' (the subclass sets them)
        self._slots = Slots(spec.max_concurrency)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec.name} {self.spec.model} at {self.spec.describe()['base_url']}>"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def in_flight(self) -> int:
        return self._slots.in_flight

    def _get_transport(self) -> httpx2.AsyncBaseTransport:
        transport = self._transport
        if transport is None:
            from core.providers.http_pool import transport_for

            transport = self._transport = transport_for(self._pool_url, limits=httpx2.Limits(
                max_connections=self.spec.max_concurrency, max_keepalive_connections=64))  # as openai_compat
        return transport

    def _get_direct(self) -> DirectPost:
        """The sender of the calls made with `_headers`, over `_get_transport()`."""
        direct = self._direct
        if direct is None:
            from core.providers.direct import DirectPost

            direct = self._direct = DirectPost(self._get_transport(), self._headers, self.spec.max_reply_bytes,
                                               self.spec.name)
        return direct

    async def aclose(self) -> None:
        transport = self._transport
        if transport is not None and self._given_transport is None:
            self._transport = self._direct = None
            await transport.aclose()

    def _scrub(self, text: str) -> str:
        return scrub(self.spec, text)

    def _error(self, exc: BaseException) -> ProviderError:
        """The ProviderError for an exception raised by httpx2 or while decoding a reply."""
        name = self.spec.name
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, httpx2.TimeoutException):
            return ProviderTimeout("timed out", deployment=name)
        if isinstance(exc, (ValueError, httpx2.DecodingError)):  # JSONDecodeError, bad encoding
            return ProviderBadResponse(f"unparseable reply: {type(exc).__name__}", deployment=name)
        if isinstance(exc, httpx2.TransportError):
            detail = self._scrub(f"{type(exc).__name__}: {exc}")
            return ProviderUnavailable(f"connection failed ({detail})", deployment=name)
        raise exc  # not a provider failure: a bug of ours, let it surface as it is
