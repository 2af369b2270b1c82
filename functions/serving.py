"""How `orchesity serve` runs the gateway under uvicorn: a deadline on each request
head, and logging that covers Orchesity's own loggers.

uvicorn closes a keep-alive connection that stays idle, but not one that sends half a
request head and stops (or connects and sends nothing): such a connection is held for
as long as the client likes, and a few hundred of them hold a server. The protocol
below is uvicorn's own httptools protocol with one addition: from the moment a
connection opens, and from the first byte of each later request, the head must be
complete within the deadline, or the connection is answered 408 and closed. The body's
deadline is the app's (functions/http.py, `Guard`).

`log_config` is uvicorn's own logging configuration plus the `orchesity` loggers, at
LOG_LEVEL (uvicorn alone configured only its own, so the app's warnings went to
Python's last-resort handler and its INFO and DEBUG lines nowhere).

The protocol is passed to uvicorn as its `http` protocol class, a documented extension point; the
deadline is RECEIVE_TIMEOUT_SECONDS, read in each worker process (a class is what
uvicorn hands to its workers, so the setting cannot ride on it).
"""

from __future__ import annotations

import asyncio
import copy
from functools import cache
from typing import Any

from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from core.settings import load_settings


@cache
def _head_timeout() -> float:
    return load_settings().RECEIVE_TIMEOUT_SECONDS


class HeadDeadlineProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that answers 408 to a request head slower than RECEIVE_TIMEOUT_SECONDS."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout = _head_timeout()
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # the first byte of a later request on this connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered; its own deadlines apply
        message = b"the request head did not arrive in time"
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%b" % (len(message), message))
        self.transport.close()



def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging configuration, with the `orchesity` loggers at `level` beside it."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["orchesity"] = {"handlers": ["default"], "level": level, "propagate": False}
    return config
