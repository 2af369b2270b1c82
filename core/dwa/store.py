"""Where the live state lives: the store interface, what every store shares (decoding
and decay, local in-flight counts), and the Redis implementation. pg_store.py holds the
Postgres one, for deployments without Redis.

Hot path budget: reading every candidate's state is ONE round trip and recording an
outcome is ONE round trip. Besides the convenience coroutines, the Redis store exposes
the commands themselves, so the orchestrator can fold them into its own pipelines with
the cache read, the cache write and the request-log XADD:

    commands = store.read_commands(names, round_robin=...)    # + the cache GET
    replies = await kv.pipeline([cache_get, *commands])
    snapshot = store.parse(names, replies[1:], now, round_robin=...)
    ...
    await kv.pipeline([store.record_command(outcome), cache_set, xadd], scripts=store.scripts)

In-flight counts: exact per process, approximate across instances, at no extra round
trip. This process counts its own calls in memory (`start` / `finish`). Every outcome
script also writes "this instance has k calls in flight on this provider, as of now" to
a per-provider hash keyed by instance id; a reader adds the counts other instances
reported in the last `in_flight_max_age_s` to its own exact count. What it misses: calls
another instance started since its last recorded outcome, and an instance that has
been idle since its last report counts as whatever it last reported (usually 0, since
it reports after finishing). Good enough for a load penalty; never used for limits.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from core.dwa.config import DWAConfig
from core.dwa.profile import ProviderProfile
from core.dwa.scoring import availability, log_spread
from core.dwa.scripts import CLAIM_PROBE, RECORD, SCRIPTS
from core.dwa.state import Outcome, OutcomeKind, ProviderState, Snapshot
from core.kv import KEY_PREFIX, KV, Command, Script

_LN2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)
_exp = math.exp  # a global, not an attribute lookup: decode_state runs per candidate

# The fields a routing decision needs, in the order HMGET returns them.
HOT_FIELDS = ("t", "s", "f", "ew", "nm", "ls", "rl", "ho", "ou", "pu", "fe", "fm", "lm", "qn", "qx", "qq",
              "fd", "hm", "hx", "l1", "l2", "g1", "g2", "f1", "f2", "mm")


class DWAStore(Protocol):
    """What the router needs from a state store. RedisDWAStore implements it below;
    pg_store.PostgresDWAStore (for deployments without Redis) implements the same: per
    provider, the fields of scripts.FIELDS as one JSON object, updated under a row lock by
    update.apply_outcome (the Lua's twin, tested equal), decoded by the same
    `decode_state`; its in-flight counts stay per process."""

    instance_id: str

    def profile(self, name: str) -> ProviderProfile:
        """The configured profile of `name` (defaults for an unknown name)."""

    async def read(self, names: Sequence[str], now: float, *, round_robin: bool = False) -> Snapshot:
        """Every candidate's state at `now`; with round_robin, also advance the shared
        round-robin counter for this candidate set and return its value."""

    async def read_details(self, names: Sequence[str], now: float) -> Snapshot:
        """Like read, with `ProviderState.details` filled (every stored field; for stats)."""

    async def record(self, outcome: Outcome) -> None:
        """Apply one outcome atomically; also marks the call finished in this process."""

    async def claim_probe(self, name: str, now: float) -> bool:
        """Claim the one half-open probe of `name`; False if someone else holds it."""

    async def reset(self, names: Sequence[str]) -> None:
        """Forget the live state of `names` (back to the priors)."""

    def start(self, name: str, at: float | None = None, tokens: int | None = None, stream: bool = False) -> None:
        """A call to `name` is starting in this process."""

    def answering(self, name: str, started: float) -> None:
        """A call to `name` in this process began to answer (a stream's first token)."""

    def finish(self, name: str) -> int:
        """A call to `name` ended in this process; returns this process's count left."""


def key_prefix(namespace: str = "") -> str:
    """`orchesity:dwa:` (plus `namespace:` for isolated test and benchmark runs)."""
    return f"{KEY_PREFIX}dwa:{namespace + ':' if namespace else ''}"


def baseline_key(namespace: str = "") -> str:
    """The hash provider → baseline weight in [0, 1] that the recompute job writes."""
    return key_prefix(namespace) + "baseline"


# A baseline is used for this many of its windows after it was computed (the Redis hash
# expires then; the Postgres store ignores older provider_weights rows): if the cron
# job stops, routing falls back to the live state alone.
BASELINE_TTL_WINDOWS = 3


def state_key(name: str, namespace: str = "") -> str:
    # {name} is a hash tag: both keys an outcome script touches share a cluster slot.
    return f"{key_prefix(namespace)}{{{name}}}:state"


def in_flight_key(name: str, namespace: str = "") -> str:
    return f"{key_prefix(namespace)}{{{name}}}:inflight"


def _num(value: Any) -> float:
    return float(value) if value else 0.0


def rotation_id(names: Sequence[str]) -> str:
    """The id of a candidate set's round-robin counter: the set, not its order, counts."""
    return hashlib.sha1("\n".join(sorted(set(names))).encode()).hexdigest()[:16]


def decode_state(name: str, profile: ProviderProfile, hot: Sequence[Any], in_flight: int,
                 baseline: Any, now: float, k_av: float, k_ev: float) -> ProviderState:
    """One provider's stored fields (`hot`: the HOT_FIELDS values as the outcome update
    writes them, strings, or all None if never recorded) decayed to `now`.

    Every store decodes through here, so Redis and Postgres decay identically. Lean on
    purpose: it runs per candidate on every request. k_av and k_ev are ln 2 over the
    availability and evidence half-lives (see StoreBase).
    """
    if baseline is not None:
        baseline = min(1.0, max(0.0, float(baseline)))
    t, s, f, ew, nm, ls, rl, ho, ou, pu, fe, fm, lm, qn, qx, qq, fd, hm, hx, l1, l2, g1, g2, f1, f2, mm = hot
    if t is None:  # never recorded (or reset): the priors
        return ProviderState(name, profile, in_flight=in_flight, baseline=baseline)
    # the outcome update writes every field, so none is None from here
    dt = now - float(t)
    if dt < 0.0:
        dt = 0.0
    da = _exp(-k_av * dt)
    de = _exp(-k_ev * dt)
    # positional, the first nine fields: half the cost of keywords, on every read
    state = ProviderState(name, profile, float(s) * da, float(f) * da, float(ew) * de,
                          float(nm), float(ls), in_flight, baseline)
    if rl != "0":
        state.rate_limited_until = float(rl)
    if ho == "1":  # only a tripped breaker's times matter
        state.tripped = True
        state.open_until = float(ou)
        state.probe_until = float(pu)
    if fe != "0":  # streams only
        state.ttft_weight = float(fe) * de
        state.ttft_mean = float(fm)
        if f2 is not None:
            state.ttft_log_mean, state.ttft_log_sq = float(f1), float(f2)
    state.latency_mean = float(lm)
    if qq is not None and qq != "0":  # outcomes with a load (older states have none)
        state.load_mean, state.load_cross, state.load_sq = float(qn), float(qx), float(qq)
    if fd is not None and fd != "0":
        state.failure_time = float(fd)
    if hm is not None:
        state.latency_history = float(hm)
    if hx is not None and hx != "0":
        state.looks = float(hx)
    if l2 is not None:
        state.log_mean, state.log_sq = float(l1), float(l2)
    if g2 is not None:
        state.norm_log_mean, state.norm_log_sq = float(g1), float(g2)
    if mm is not None:
        state.steady_norm = float(mm)
    return state


def attach_details(state: ProviderState, details: dict[str, Any]) -> None:
    """Fill the stats-only fields of `state` from every stored field (read_details)."""
    state.details = details
    state.consecutive_failures = int(_num(details.get("cf")))
    state.latency_mean = _num(details.get("lm"))


class StoreBase:
    """What every store shares: the profiles, the tunables, this instance's id and its
    exact in-flight counts."""

    def __init__(
        self,
        profiles: Mapping[str, ProviderProfile] | Sequence[ProviderProfile] = (),
        config: DWAConfig | None = None,
        instance_id: str | None = None,
    ) -> None:
        if not isinstance(profiles, Mapping):
            profiles = {profile.name: profile for profile in profiles}
        self.profiles: dict[str, ProviderProfile] = dict(profiles)
        self.config = config or DWAConfig()
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        self._local: dict[str, int] = {}
        self._pending: dict[str, list[float]] = {}  # when this process's calls in flight started
        self._answering: dict[str, list[float]] = {}  # ...those already answering (a stream's tokens)
        self._budgets: dict[str, dict[float, int]] = {}  # ...the output tokens some asked for, by start
        self._streams: dict[str, set[float]] = {}  # ...the starts of streams with no token yet
        self._answered: dict[str, list[float]] = {}  # ...and its successes since the oldest of them (sorted)
        self._k_av = _LN2 / self.config.availability_half_life_s
        self._k_ev = _LN2 / self.config.evidence_half_life_s

    def profile(self, name: str) -> ProviderProfile:
        profile = self.profiles.get(name)
        if profile is None:  # unknown to the config: defaults, remembered
            profile = self.profiles[name] = ProviderProfile(name)
        return profile

    # -- in-flight, this process ---------------------------------------------------------
    def start(self, name: str, at: float | None = None, tokens: int | None = None, stream: bool = False) -> None:
        """A call to `name` starts (at `at`, the caller's clock, when its age should count;
        asking for up to `tokens` output tokens when its whole reply is awaited; a
        `stream`, awaited until its first token)."""
        self._local[name] = self._local.get(name, 0) + 1
        if at is not None:
            self._pending.setdefault(name, []).append(at)
            if tokens:
                self._budgets.setdefault(name, {})[at] = tokens
            if stream:
                self._streams.setdefault(name, set()).add(at)

    def answering(self, name: str, started: float) -> None:
        """The call to `name` that started at about `started` has begun to answer (a
        stream's first token): still in flight, but no longer a failure in progress, and
        an answer in its cohort (mark_overdue). A long story streaming for a minute is
        not a call hanging for one."""
        pending = self._pending.get(name)
        if pending:
            at = pending.pop(_nearest(pending, started))
            self._forget(name, at)
            self._answering.setdefault(name, []).append(at)
            self._answer(name, at)

    def finish(self, name: str, started: float | None = None, ok: bool = False) -> int:
        """A call to `name` ended (the one that started at about `started`; answered if
        `ok`); the count left. An answered call's start is kept while a call that started
        before it is still running (mark_overdue's cohort)."""
        left = max(0, self._local.get(name, 0) - 1)
        self._local[name] = left
        pending = self._pending.get(name) or []
        answering = self._answering.get(name) or []
        if started is None:
            if pending:
                self._forget(name, pending.pop())
            elif answering:
                answering.pop()
        else:
            i = _nearest(pending, started)
            j = _nearest(answering, started)
            if j >= 0 and (i < 0 or abs(answering[j] - started) < abs(pending[i] - started)):
                answering.pop(j)
                ok = False  # its answer is in the cohort already
            elif i >= 0:
                self._forget(name, pending.pop(i))
        if not pending:
            answered = self._answered.get(name)
            if answered:
                answered.clear()
        elif ok and started is not None:
            self._answer(name, started)
        return left

    def _forget(self, name: str, at: float) -> None:
        """The call that started at `at` is no longer waiting: drop its budget, its stream mark."""
        budgets = self._budgets.get(name)
        if budgets:
            budgets.pop(at, None)
        streams = self._streams.get(name)
        if streams:
            streams.discard(at)

    def _answer(self, name: str, started: float) -> None:
        """Keep an answered call's start for the cohort of the calls still waiting."""
        pending = self._pending.get(name)
        if not pending:
            return
        answered = self._answered.get(name)
        if answered is None:
            answered = self._answered[name] = []
        bisect.insort(answered, started)
        if answered[0] < pending[0]:  # older than every call still waiting: no cohort's
            del answered[:bisect.bisect_left(answered, pending[0])]

    def mark_overdue(self, state: ProviderState, now: float) -> None:
        """Count this process's calls to `state`'s provider that are running unusually
        long, with no answer begun (a stream is past suspicion from its first token,
        `answering`), as failures in progress: a provider that hangs is avoided before
        its first timeout comes back.

        A call still running at age τ is a failure with probability p / (p + (1 − p) ×
        P(a success takes longer than τ)): p is the provider's failure rate (1 − a), and
        a success's latency follows the log-normal fit of its moments (σ at least
        overdue_min_sigma). So a provider that rarely fails is suspected only far out in
        its tail, one that has been failing soon after its usual time; each call counts
        by that probability, and costs its age or, if longer, what the provider's
        failures have taken (failure_time: a call at a provider whose calls time out
        after 20 s is going to cost that much, if it is a failure). Calls younger than
        overdue_min_s, or than the fit's one-σ latency, are not looked at. A call that
        asked for a longer reply than the provider's usual (`start`'s tokens, whole
        replies only) ages in proportion: one that may take four times the median's
        time is judged at a quarter of its age, so a batch job's 4,000-token answers
        are not a spell at a provider that mostly serves short chat. A stream awaiting
        its first token (`start`'s stream) is judged by the fit of the provider's
        TTFTs, once it has one: a stream that is 3 s into a reply usually 5 s long, but
        whose first token comes in 0.3 s, is hanging.

        Those counts weigh against the failures and successes of the last minute or so
        (availability_half_life_s), which is right for a provider that fails now and then
        but slow for one that has just started to hang: a minute of answers at 8 a second
        dilutes four calls in ten hanging to a few percent for seconds while the calls
        keep coming. So the calls are also weighed against their cohort, this process's
        calls that started since the oldest of them and long enough ago to be looked
        at: those still running and those answered (`finish`). When more of the cohort
        is running long than the provider's failure rate explains (by at least
        overdue_excess calls), the cohort's share, late / (cohort + 1), is what the next
        call meets: the failures become at least what gives that rate against the
        successes. A heavy tail's slow answers are mostly explained by its fit and its
        rate, though a σ fitted from a dozen recent answers can come out low (see
        bench/README.md, "Sixteen seeds"); a spell's onset is not."""
        pending = self._pending.get(state.name)
        if not pending or state.log_sq <= 0.0:
            return
        config = self.config
        mu, sigma, look = _fit(state.log_mean, state.log_sq, config)
        streams = self._streams.get(state.name)
        first = None  # the TTFT fit, for streams awaiting their first token
        if not streams or state.ttft_log_sq <= 0.0:
            streams = _NONE
        else:
            first = _fit(state.ttft_log_mean, state.ttft_log_sq, config)
        limit = now - (look if first is None or first[2] > look else first[2])
        p = max(config.overdue_prior, 1.0 - availability(state.successes, state.failures, config))
        known = state.failure_time
        budgets = self._budgets.get(state.name)
        # a reply's tokens + ttft_tokens → its latency / the median's (only calls that asked need it)
        per_token = state.latency_norm / math.exp(mu) if budgets else 0.0
        late = age = 0.0
        running = 0
        for at in pending:  # in the order the calls started
            if at >= limit:
                break
            running += 1
            tau = now - at
            elapsed = tau
            m, s = mu, sigma
            if at in streams:
                m, s, least = first
                if tau < least:
                    continue
            elif budgets and (tokens := budgets.get(at)):
                stretch = per_token * (tokens + config.ttft_tokens)
                if stretch > 1.0:  # it may take that many times the usual reply's time
                    tau /= stretch
                if tau < look:
                    continue
            elif tau < look:
                continue
            tail = 0.5 * math.erfc((math.log(tau) - m) / (s * _SQRT2))
            w = p / (p + (1.0 - p) * tail)
            late += w
            age += w * (elapsed if elapsed > known else known)
        if not late:
            return
        f = state.failures
        state.failure_time = (f * state.failure_time + age) / (f + late)
        state.failures = f + late
        answered = self._answered.get(state.name)
        cohort = running + (bisect.bisect_left(answered, limit) - bisect.bisect_left(answered, pending[0])
                            if answered else 0)
        if late - p * cohort >= config.overdue_excess:  # more running long than its failure rate explains
            rate = late / (cohort + 1.0)
            needed = rate * (state.successes + config.prior_success + config.prior_failure) / (1.0 - rate)
            if needed > state.failures:
                state.failures = needed

    def local_in_flight(self, name: str) -> int:
        return self._local.get(name, 0)

    def ended(self, outcome: Outcome) -> int:
        """Mark `outcome`'s call finished in this process (a CANCELLED one was, when it was
        cancelled: `finish`); the count left."""
        if outcome.kind is OutcomeKind.CANCELLED:
            return self.local_in_flight(outcome.provider)
        return self.finish(outcome.provider, outcome.now - outcome.latency_s, outcome.kind is OutcomeKind.SUCCESS)


_NONE: frozenset[float] = frozenset()


def _fit(mu: float, sq: float, config: DWAConfig) -> tuple[float, float, float]:
    """A log-normal fit from the moments of ln x, for mark_overdue: (μ, σ at least
    overdue_min_sigma, the age from which a call is looked at: its one-σ value, at least
    overdue_min_s)."""
    sigma = log_spread(mu, sq, config)
    return mu, sigma, max(config.overdue_min_s, math.exp(mu + sigma))


def _nearest(times: Sequence[float], at: float) -> int:
    """The index of the start time in `times` closest to `at` (-1 when there is none)."""
    return min(range(len(times)), key=lambda i: abs(times[i] - at), default=-1)


class RedisDWAStore(StoreBase):
    """DWA state in Redis, through the one KV interface (Upstash REST, redis://, embedded)."""

    scripts: Mapping[str, Script] = SCRIPTS

    def __init__(
        self,
        kv: KV,
        profiles: Mapping[str, ProviderProfile] | Sequence[ProviderProfile] = (),
        config: DWAConfig | None = None,
        *,
        namespace: str = "",
        instance_id: str | None = None,
    ) -> None:
        super().__init__(profiles, config, instance_id)
        self.kv = kv
        self.namespace = namespace
        self._keys: dict[str, tuple[str, str]] = {}
        self._rr_keys: dict[tuple[str, ...], str] = {}
        self._baseline_key = baseline_key(namespace)
        cfg = self.config
        self._record_args = (
            cfg.availability_half_life_s, cfg.latency_half_life_s, cfg.failure_threshold,
            cfg.cooldown_s, cfg.cooldown_max_s, cfg.rate_limit_default_s, cfg.state_ttl_s,
            cfg.in_flight_max_age_s, cfg.ttft_tokens, cfg.evidence_half_life_s, cfg.history_half_life_s,
            cfg.steady_half_life_s,
        )

    # -- keys --------------------------------------------------------------------------
    def _keys_for(self, name: str) -> tuple[str, str]:
        keys = self._keys.get(name)
        if keys is None:
            keys = self._keys[name] = (state_key(name, self.namespace), in_flight_key(name, self.namespace))
        return keys

    def round_robin_key(self, names: Sequence[str]) -> str:
        """One rotation counter per candidate set (as a set: order does not matter)."""
        group = tuple(names)
        key = self._rr_keys.get(group)
        if key is None:
            key = self._rr_keys[group] = f"{key_prefix(self.namespace)}rr:{rotation_id(group)}"
        return key

    # -- reading: commands and parsing ----------------------------------------------------
    def read_commands(self, names: Sequence[str], *, round_robin: bool = False) -> list[Command]:
        """The commands of one decision's read: per provider HMGET + HGETALL, then the
        baselines, then (round_robin) the INCR and EXPIRE of the rotation counter."""
        commands: list[Command] = []
        for name in names:
            state, in_flight = self._keys_for(name)
            commands.append(("HMGET", state, *HOT_FIELDS))
            commands.append(("HGETALL", in_flight))
        commands.append(("HMGET", self._baseline_key, *names))
        if round_robin:
            key = self.round_robin_key(names)
            commands.append(("INCR", key))
            commands.append(("EXPIRE", key, self.config.state_ttl_s))  # a set no longer used goes
        return commands

    def parse(self, names: Sequence[str], replies: Sequence[Any], now: float,
              *, round_robin: bool = False) -> Snapshot:
        """Turn `read_commands`' replies into a Snapshot decayed to `now`. Lean on purpose:
        it runs on every request."""
        n = len(names)
        min_at = now - self.config.in_flight_max_age_s
        k_av, k_ev = self._k_av, self._k_ev
        own = self.instance_id
        local = self._local
        pending = self._pending
        profiles = self.profiles
        states: dict[str, ProviderState] = {}
        for name, hot, others, baseline in zip(names, replies[0:2 * n:2], replies[1:2 * n:2], replies[2 * n]):
            in_flight = local.get(name, 0)
            if others:
                for j in range(0, len(others), 2):
                    if others[j] != own:
                        count, _, at = others[j + 1].partition(":")
                        if float(at) >= min_at:
                            in_flight += int(count)
            profile = profiles.get(name) or self.profile(name)
            state = states[name] = decode_state(name, profile, hot, in_flight, baseline, now, k_av, k_ev)
            if name in pending:
                self.mark_overdue(state, now)
        rr = int(replies[2 * n + 1]) if round_robin else None
        return Snapshot(now=now, order=tuple(names), states=states, rr_counter=rr)

    async def read(self, names: Sequence[str], now: float, *, round_robin: bool = False) -> Snapshot:
        replies = await self.kv.pipeline(self.read_commands(names, round_robin=round_robin))
        return self.parse(names, replies, now, round_robin=round_robin)

    async def read_details(self, names: Sequence[str], now: float) -> Snapshot:
        commands = self.read_commands(names)
        commands += [("HGETALL", self._keys_for(name)[0]) for name in names]
        replies = await self.kv.pipeline(commands)
        snapshot = self.parse(names, replies, now)
        for i, name in enumerate(names):
            flat = replies[len(commands) - len(names) + i] or []
            attach_details(snapshot.states[name], dict(zip(flat[::2], flat[1::2])))
        return snapshot

    # -- recording ----------------------------------------------------------------------
    def record_command(self, outcome: Outcome) -> Command:
        """The EVALSHA that applies `outcome` (run it with `scripts=store.scripts`).

        Building it also marks the call finished in this process's in-flight count, whose
        new value the script publishes: build it exactly once per finished call.
        """
        name = outcome.provider
        left = self.ended(outcome)
        cost = self.profile(name).cost(outcome.input_tokens, outcome.output_tokens)
        args = (
            repr(float(outcome.now)), outcome.kind.value, repr(float(outcome.latency_s)),
            repr(float(outcome.ttft_s or 0.0)), int(outcome.input_tokens), int(outcome.output_tokens),
            repr(cost), repr(float(outcome.retry_after_s or 0.0)), outcome.error or outcome.kind.value,
            self.instance_id, left, *self._record_args, "1" if outcome.fresh else "0", outcome.load,
        )
        return RECORD.command(self._keys_for(name), args)

    async def record(self, outcome: Outcome) -> None:
        await self.kv.pipeline([self.record_command(outcome)], scripts=self.scripts)

    def claim_probe_command(self, name: str, now: float) -> Command:
        return CLAIM_PROBE.command((self._keys_for(name)[0],), (repr(float(now)), self.config.probe_timeout_s))

    async def claim_probe(self, name: str, now: float) -> bool:
        (reply,) = await self.kv.pipeline([self.claim_probe_command(name, now)], scripts=self.scripts)
        return int(reply) == 1

    # -- admin --------------------------------------------------------------------------
    async def reset(self, names: Sequence[str]) -> None:
        """Delete the live state (metrics and breaker) of `names`: every provider is back
        at its priors. In-flight reports, baselines and round-robin counters stay: they
        are not learned metrics (baselines belong to the recompute job)."""
        if names:
            await self.kv.execute("DEL", *(self._keys_for(name)[0] for name in names))
