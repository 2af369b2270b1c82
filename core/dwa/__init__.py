"""The Dynamic Weight Algorithm: shared, self-correcting provider routing.

    profile.py     what the operator configured (priority, prices, max concurrency)
    config.py      the algorithm's tunables (half-lives, priors, breaker settings)
    state.py       live state as read (ProviderState, Snapshot) and Outcome
    scoring.py     THE formula: state → score in [0, 1]
    breaker.py     circuit states, transitions, the one-probe rule
    scripts.py     the Lua that updates state atomically in Redis
    update.py      the same update in Python (for a store without Redis)
    store.py       DWAStore (the interface) and RedisDWAStore
    pg_store.py    PostgresDWAStore: the same state in Postgres, when there is no Redis
    recompute.py   baseline weights from the request log (the cron function)
    strategies.py  load_balanced, round_robin, random, priority, latency, cost, adaptive
    router.py      Router: decide / pick / record / reset / stats
"""

from core.dwa.breaker import CircuitState
from core.dwa.config import DWAConfig
from core.dwa.profile import ProviderProfile
from core.dwa.router import Decision, Router
from core.dwa.state import Outcome, OutcomeKind, ProviderState, Snapshot, classify_status
from core.dwa.store import DWAStore, RedisDWAStore, baseline_key

__all__ = [
    "CircuitState",
    "DWAConfig",
    "DWAStore",
    "Decision",
    "Outcome",
    "OutcomeKind",
    "ProviderProfile",
    "ProviderState",
    "RedisDWAStore",
    "Router",
    "Snapshot",
    "baseline_key",
    "classify_status",
]
