"""A dependency's outage, logged when it starts and when it ends, not once per request.

With Redis down, every request falls back (to routing on priors, to Postgres for the
log); a warning per request printed 15,739 lines in 30 s and buried the one line that
mattered. An `Outage` logs the first failure, counts the rest, and logs the recovery
with that count.
"""

from __future__ import annotations

import logging
import time


class Outage:
    """Whether `what` (Redis, Postgres) is failing, as this process last saw it."""

    __slots__ = ("what", "logger", "down", "since", "failures")

    def __init__(self, what: str, logger: logging.Logger) -> None:
        self.what = what
        self.logger = logger
        self.down = False
        self.since = 0.0
        self.failures = 0

    def failed(self, exc: BaseException) -> None:
        """A call to the dependency failed; the first one of an outage is logged."""
        self.failures += 1
        if not self.down:
            self.down, self.since = True, time.monotonic()
            # The message only: a URL with a password never reaches it (KV and psycopg
            # errors name the failure, not the address).
            self.logger.warning("%s is failing (%s: %s); degrading until it is back",
                                self.what, type(exc).__name__, str(exc)[:200])

    def recovered(self) -> None:
        """A call to the dependency succeeded; ends an outage (one attribute test if none)."""
        if self.down:
            self.down = False
            self.logger.warning("%s is back after %.1fs (%d failed calls meanwhile)",
                                self.what, time.monotonic() - self.since, self.failures)
            self.failures = 0
