"""Keeping Python's cyclic garbage collector off the request path.

A gateway process holds some 150,000 long-lived objects: the modules, classes and
schemas of FastAPI, pydantic, SQLAlchemy and the openai SDK, and the open pools. The
cyclic collector re-scans every one of them in each full (generation 2) collection;
under load (bench/overhead, c=16) one came about every second and stalled the event
loop, and every request in flight, for 85-135 ms, which was most of the gateway's
p95 and p99 latency.

`settle()` moves everything alive now into the permanent generation (`gc.freeze()`),
which collections skip; objects created afterwards are collected as usual. It is called
where a process has just loaded what it keeps: when its services are opened, and when a
provider adapter first builds its SDK client (the import of openai alone adds some
47,000 objects). It does not collect first: a full collection would add 50-85 ms to a
cold start, and what it would free is only the cyclic garbage made since the last
automatic collection (none, measured right after start-up), which then stays. A freeze
costs microseconds.
"""

from __future__ import annotations

import gc


def settle() -> None:
    gc.freeze()
