"""The response cache: one Redis string per cached answer, keyed by what changes it.

The key is SHA-256 over the canonical request — messages, model or routing group and
every parameter that changes the answer (the seed's key ignored temperature) — plus a
namespace and the tenant, so two tenants never read each other's answers. Commands are
exposed rather than run, so the orchestrator folds them into its two round trips.

Which answers are kept follows CACHE_MODE. By default (`deterministic`) only requests
whose answer is meant to repeat: temperature 0, or a `seed`. A sampled request
(`temperature: 1.5`, or none given, which providers take as 1) asks for a fresh draw
each time, and a cache would return the first draw forever. `all` caches every answer,
`off` none.

Hits and misses are counted by us in a hash (Redis INFO counts every GET of every
client, not ours). Without Redis there is no response cache: a miss every time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from core import fastjson
from core.kv import KEY_PREFIX, KV
from core.settings import CacheMode

ENTRY_PREFIX = f"{KEY_PREFIX}cache:entry:"
STATS_KEY = f"{KEY_PREFIX}stats:cache"
DEFAULT_NAMESPACE = "default"

# Request fields that never change the answer and so stay out of the key. (Which
# providers were asked and how, `targets` and `mode`, do: a race's one answer is not
# the answers of `mode: all`.)
_NOT_IN_KEY = frozenset({"stream", "stream_options", "cache", "user", "metadata"})


@dataclass(frozen=True)
class CachePolicy:
    """Per request `cache: {no_cache, no_store, ttl, namespace}`."""

    no_cache: bool = False  # don't read: always call a provider
    no_store: bool = False  # don't write the answer
    ttl: int | None = None  # seconds; None: CACHE_EXPIRE_SECONDS
    namespace: str = DEFAULT_NAMESPACE


def applies(mode: CacheMode, temperature: float | None, seed: int | None) -> bool:
    """Whether a request with these sampling parameters is cached under `mode`."""
    if mode is CacheMode.deterministic:
        return temperature == 0 or seed is not None
    return mode is CacheMode.all


def cache_key(request: dict[str, Any], *, namespace: str = DEFAULT_NAMESPACE,
              tenant: str | None = None) -> str:
    """The cache key of a request given as a plain dict of its parameters.

    `request` holds messages, the model or routing group, and the sampling parameters;
    None values are dropped so that an explicit default and an omitted one agree.
    """
    canonical = {k: v for k, v in request.items() if v is not None and k not in _NOT_IN_KEY}
    # ASCII escapes: a lone surrogate in a prompt ("\\ud800") is still a key, not an error.
    payload = json.dumps([tenant, canonical], sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(payload.encode()).hexdigest()
    return f"{ENTRY_PREFIX}{namespace}:{digest}"


def read_command(key: str) -> list[Any]:
    return ["GET", key]


def parse_entry(reply: str | None) -> dict[str, Any] | None:
    if reply is None:
        return None
    try:
        entry = fastjson.loads(reply)
    except ValueError:  # a foreign or truncated value under our prefix: treat as a miss
        return None
    return entry if isinstance(entry, dict) else None


def write_command(key: str, entry: dict[str, Any], ttl: int) -> list[Any]:
    return ["SET", key, fastjson.dumps(entry).decode(), "EX", int(ttl)]


def count_command(hit: bool) -> list[Any]:
    return ["HINCRBY", STATS_KEY, "hits" if hit else "misses", 1]


async def stats(kv: KV | None) -> dict[str, Any]:
    if kv is None:
        return {"enabled": False, "hits": 0, "misses": 0, "hit_rate": 0.0, "entries": 0}
    counts = await kv.hgetall(STATS_KEY)
    hits, misses = int(counts.get("hits", 0)), int(counts.get("misses", 0))
    entries = 0
    async for _ in kv.scan_iter(f"{ENTRY_PREFIX}*"):
        entries += 1
    lookups = hits + misses
    return {"enabled": True, "backend": kv.backend, "hits": hits, "misses": misses,
            "hit_rate": round(hits / lookups, 4) if lookups else 0.0, "entries": entries}


async def clear(kv: KV | None, namespace: str | None = None, batch: int = 500) -> int:
    """Delete Orchesity's cache entries (one namespace, or all) with SCAN; never KEYS/FLUSH.

    Only keys under the cache entry prefix go: routing state, logs and anything else
    sharing the Redis stay.
    """
    if kv is None:
        return 0
    pattern = f"{ENTRY_PREFIX}{namespace}:*" if namespace else f"{ENTRY_PREFIX}*"
    deleted, pending = 0, []
    async for key in kv.scan_iter(pattern, count=batch):
        pending.append(key)
        if len(pending) >= batch:
            deleted += await kv.delete(*pending)
            pending = []
    if pending:
        deleted += await kv.delete(*pending)
    return deleted
