"""Keeping Python's cyclic garbage collector off the request path.

A gateway process holds some 150,000 long-lived objects: the modules, classes and
schemas of FastAPI, pydantic, SQLAlchemy and the openai SDK, and the open pools. The
cyclic collector re-scans every one of them in each full (generation 2) collection;
under load (bench/overhead, c=16) one came about every second and stalled the event
loop, and every request in flight, for 85-135 ms, which was most of the gateway's
p95 and p99 latency.

`settle()` collects once, then moves everything still alive into the permanent
generation (`gc.freeze()`), which collections skip. Objects created afterwards are
collected as usual. It is called where a process has just loaded what it keeps: when
its services are opened, and when a provider adapter first builds its SDK client (the
import of openai alone adds some 47,000 objects). The first call costs one full
collection; later ones only scan what was created since.
"""

from __future__ import annotations

import gc


def settle() -> None:
    gc.collect()
    gc.freeze()
