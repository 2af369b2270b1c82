"""One LLM request: cache -> route -> call (failover) -> record.

The request flow lives in `Orchestrator.complete` (and `stream` for SSE; `embed` is the
same flow for embeddings, among the deployments that serve them). With Redis it costs
two round trips whatever the number of providers:

1. read: the cache entry and every candidate's DWA state, in one pipeline;
2. record: the DWA outcome of every attempt, the cache write, the hit/miss count and the
   request-log records, in one pipeline, before the response goes out (so
   `database_logged` is true only once the records are durably queued).

A half-open circuit's probe costs one more round trip, only when one is taken. Without
Redis, state and log go to Postgres (the DWA store is then the Postgres one) and there
is no response cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio

from core import cache
from core.cache import CachePolicy
from core.dwa.router import Decision, Router
from core.dwa.scoring import censored_latency, first_token_deadline, hedge_delay
from core.dwa.state import Outcome, OutcomeKind, ProviderState, Snapshot
from core.dwa.store import DWAStore
from core import limits
from core.kv import KV, KVError, KVUnavailable
from core.limits import LimitExceeded, Limits, Verdict
from core.outage import Outage
from core.providers.base import (
    Adapter,
    ChatRequest,
    Chunk,
    Completion,
    EmbeddingRequest,
    Embeddings,
    ProviderClientError,
    ProviderError,
    ProviderFirstTokenLate,
    ProviderRateLimited,
    ProviderStreamCut,
    ProviderTimeout,
    Usage,
)
from core.providers.config import Capability, enable_hint
from core.providers.registry import ProviderRegistry
from core.providers.tokens import estimate_messages
from core.requestlog import LogEntry, append_command
from core.requestlog import write as write_log
from core.settings import CacheMode, RoutingStrategy, Settings

if TYPE_CHECKING:
    import httpx2

    from core.db import Database

log = logging.getLogger("orchesity.orchestrator")

T = TypeVar("T")
# One provider call as the attempt loop makes it: (adapter, request, seconds left) -> T.
Call = Callable[[Adapter, "LLMRequest", float], Awaitable[T]]


class UnknownProvider(ValueError):
    """A requested provider or model names no configured deployment."""

    def __init__(self, name: str, known: Sequence[str], hint: str | None = None) -> None:
        message = f"unknown provider or model {name!r}; configured: {', '.join(known)}"
        super().__init__(f"{message}. {hint}" if hint else message)
        self.name = name


class NotServed(UnknownProvider):
    """A requested deployment or model exists but does not serve what was asked for."""

    def __init__(self, name: str, capability: Capability, serving: Sequence[str]) -> None:
        ValueError.__init__(self, f"{name!r} does not serve {capability} (see `serves` in the providers file); "
                                  f"deployments serving {capability}: {', '.join(serving) or 'none'}")
        self.name = name


class NoDeployment(LookupError):
    """No configured deployment serves what a request asks for (chat or embeddings)."""

    def __init__(self, capability: Capability, configured: Sequence[str]) -> None:
        super().__init__(
            f"no configured deployment serves {capability} (configured: {', '.join(configured)}); give one "
            f'`serves = ["{capability}"]` in ORCHESITY_PROVIDERS_FILE, or use a simulated deployment')
        self.capability = capability


@dataclass(slots=True)
class LLMRequest:
    """A request as the functions hand it over, whatever API it came in through."""

    chat: ChatRequest | None = None     # a chat completion, or
    embedding: EmbeddingRequest | None = None  # embeddings (exactly one of the two is set)
    targets: list[str] | None = None   # provider/deployment names; None: the DWA picks
    mode: str = "all"                   # several targets: "all" results, or "race"
    strategy: RoutingStrategy | None = None
    cache: CachePolicy = field(default_factory=CachePolicy)
    endpoint: str = "orchestrate"
    caller: str | None = None           # the caller's key id (or user id): the request log
    tenant: str | None = None           # whose cache it reads and writes (None: the shared one)
    limits: Limits | None = None        # the caller's rate limits and budgets
    timeout: float | None = None        # overall deadline, seconds
    hedge_after: float | Literal["auto"] | None = None  # seconds (or from the first's latency): see _hedged
    latency_quantile: float | None = None  # route on this quantile of latency, not the mean (scoring.evaluate)

    @property
    def serves(self) -> Capability:
        """What the deployments routed to must serve."""
        return "chat" if self.embedding is None else "embeddings"


@dataclass(slots=True)
class Attempt:
    provider: str
    model: str
    latency_s: float
    error_class: str | None = None
    error: str | None = None
    status: int | None = None


@dataclass(slots=True)
class Result:
    """One target's answer (or why it has none)."""

    provider: str | None
    model: str | None
    text: str | None = None
    finish_reason: str | None = None
    stop_sequence: str | None = None     # which stop sequence ended the reply, when the provider said
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: list[dict[str, Any]] | None = None  # the choice's logprobs.content, when asked for
    usage: Usage | None = None
    vectors: list[list[float]] | None = None  # embeddings, one per input
    cost: float = 0.0
    response_time: float = 0.0          # seconds, the successful call
    provider_time: float = 0.0          # seconds waiting on providers, every attempt
    ttft: float | None = None
    cached: bool = False
    dwa_score: float | None = None
    selection_reason: str | None = None
    error: dict[str, Any] | None = None  # {"type", "message", "status"}
    attempts: list[Attempt] = field(default_factory=list)
    completion_id: str | None = None
    limit_reset_s: float | None = None  # its limit headers said none is left until then (not cached)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_cache(self) -> dict[str, Any]:
        usage = self.usage
        if self.vectors is not None:
            return {"provider": self.provider, "model": self.model, "vectors": self.vectors,
                    "usage": [usage.prompt_tokens, usage.completion_tokens, usage.total_tokens] if usage else None,
                    "response_time": self.response_time, "dwa_score": self.dwa_score}
        return {
            "provider": self.provider, "model": self.model, "text": self.text,
            "finish_reason": self.finish_reason, "stop_sequence": self.stop_sequence,
            "tool_calls": self.tool_calls, "logprobs": self.logprobs,
            "usage": [usage.prompt_tokens, usage.completion_tokens, usage.total_tokens] if usage else None,
            "response_time": self.response_time, "dwa_score": self.dwa_score,
        }

    @classmethod
    def from_cache(cls, entry: dict[str, Any]) -> "Result":
        usage = entry.get("usage")
        return cls(
            provider=entry.get("provider"), model=entry.get("model"), text=entry.get("text"),
            finish_reason=entry.get("finish_reason"), stop_sequence=entry.get("stop_sequence"),
            tool_calls=entry.get("tool_calls"),
            logprobs=entry.get("logprobs"), usage=Usage(*usage) if usage else None, vectors=entry.get("vectors"),
            response_time=0.0, cached=True,
            dwa_score=entry.get("dwa_score"), selection_reason="cache_hit",
        )


@dataclass(slots=True)
class Orchestration:
    request_id: str
    results: list[Result]
    strategy: RoutingStrategy
    total_time: float = 0.0
    provider_time: float = 0.0          # seconds spent waiting on providers
    cached: bool = False
    database_logged: bool = False
    verdict: Verdict | None = None      # the caller's limits as checked (None: none, or Redis down)

    @property
    def overhead_ms(self) -> float:
        return max(0.0, (self.total_time - self.provider_time) * 1000.0)

    @property
    def providers_tried(self) -> list[str]:
        return [a.provider for r in self.results for a in r.attempts]


@dataclass(slots=True)
class _Plan:
    """What the read round trip found, and what the record round trip will carry."""

    request: LLMRequest
    request_id: str
    started: float                      # perf_counter
    now: float                          # wall clock, seconds
    deadline: float                     # perf_counter
    slots: list[list[Adapter]]
    snapshot: Snapshot
    cache_key: str | None
    hit: dict[str, Any] | None
    verdict: Verdict | None = None
    commands: list[Any] = field(default_factory=list)
    entries: list[LogEntry] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    streaming: bool = False             # routed on time to first token
    picked: list[str] = field(default_factory=list)  # deployments picked so far, in order
    explored: set[str] = field(default_factory=set)  # deployments picked as a fresh look
    loads: dict[str, int] = field(default_factory=dict)  # each pick's load (Decision.load)
    on_pick: asyncio.Event | None = None  # set at the first pick (a hedge "auto" waits for it)
    won: Result | None = None  # a hedge's or race's answer, set before the calls it beat are cancelled


class Orchestrator:
    def __init__(self, *, registry: ProviderRegistry, router: Router, store: DWAStore,
                 kv: KV | None, db: Database, cache_ttl: int, default_timeout: float,
                 cache_mode: CacheMode = CacheMode.deterministic, embedding_model: str = "auto",
                 rate_limit_wait: float = 5.0, first_token_timeout: float | Literal["auto", "off"] = "auto") -> None:
        self.registry = registry
        self.first_token_timeout = first_token_timeout  # STREAM_FIRST_TOKEN_TIMEOUT: see _first_token_deadline
        self.rate_limit_wait = rate_limit_wait  # RATE_LIMIT_MAX_WAIT_SECONDS
        self.embedding_model = embedding_model  # EMBEDDING_MODEL: what embed_texts asks for by default
        self.router = router
        self.store = store
        self.kv = kv
        self.db = db
        self.cache_ttl = cache_ttl
        self.cache_mode = CacheMode(cache_mode)
        self.default_timeout = default_timeout
        self.scripts = {**store.scripts, **limits.SCRIPTS} if kv is not None else {}
        # Redis being unreachable is logged by the KV itself, once per outage; these are for
        # Redis answering commands with errors (out of memory, a script refused), the read
        # and the record apart: a full Redis still serves the read and refuses the record,
        # and one tracker for both logged a failure and a recovery on every request.
        self.redis_read_errors = Outage("Redis, answering the routing read with errors,", log)
        self.redis_record_errors = Outage("Redis, answering the record with errors,", log)
        self.postgres_outage = Outage("Postgres", log)

    # -- the request flow -------------------------------------------------------------
    async def complete(self, request: LLMRequest) -> Orchestration:
        plan = await self._prepare(request)
        strategy = request.strategy or self.router.strategy
        if plan.hit is not None:
            results = [Result.from_cache(entry) for entry in plan.hit["results"]]
            orchestration = Orchestration(plan.request_id, results, strategy, cached=True)
        else:
            if len(plan.slots) > 1 and request.mode == "race":
                started = time.perf_counter()
                results = await self._race(plan)
                provider_time = time.perf_counter() - started
            elif len(plan.slots) == 1 and request.hedge_after is not None and len(plan.slots[0]) > 1:
                results = [await self._hedged(plan, plan.slots[0], request.hedge_after)]
                provider_time = results[0].provider_time
            elif len(plan.slots) == 1:  # the common case: no task to spawn
                results = [await self._complete_slot(plan, plan.slots[0])]
                provider_time = results[0].provider_time
            else:
                results = list(await asyncio.gather(*(self._complete_slot(plan, slot) for slot in plan.slots)))
                provider_time = max(r.provider_time for r in results)
            orchestration = Orchestration(plan.request_id, results, strategy, provider_time=provider_time)
        await self._finish(plan, orchestration)
        return orchestration

    async def embed(self, request: LLMRequest) -> Orchestration:
        """Embeddings: `complete`'s flow — cache, the DWA's pick among the deployments
        that serve embeddings, failover, limits, record — for a request with `embedding`."""
        if request.embedding is None:
            raise ValueError("embed() needs a request with `embedding` set")
        return await self.complete(request)

    async def stream(self, request: LLMRequest) -> tuple[Orchestration, AsyncIterator[Chunk]]:
        """Start a streamed answer for a single-target request.

        Returns once the first chunk is in hand (or the answer is cached), so a failure
        before the first token fails over and a caller can still answer with an error
        status. The iterator yields the chunks; a failure after the first token ends it
        with a ProviderError; recording happens when it is exhausted or closed.
        """
        if request.chat is None:
            raise ValueError("only a chat request streams")
        plan = await self._prepare(request)
        plan.streaming = True
        strategy = request.strategy or self.router.strategy
        if plan.hit is not None:
            result = Result.from_cache(plan.hit["results"][0])
            orchestration = Orchestration(plan.request_id, [result], strategy, cached=True)
            await self._finish(plan, orchestration)
            return orchestration, _replay(result)

        result = Result(provider=None, model=None)
        orchestration = Orchestration(plan.request_id, [result], strategy, verdict=plan.verdict)
        slot = plan.slots[0]

        async def first_chunk(adapter: Adapter, request: LLMRequest,
                              timeout: float) -> tuple[AsyncIterator[Chunk], Chunk]:
            return await _first_chunk(adapter, request, timeout, self._first_token_deadline(plan, slot, adapter))

        attempt = await self._attempt(plan, slot, result, first_chunk)
        if attempt is None:
            orchestration.provider_time = result.provider_time
            await self._finish(plan, orchestration)
            return orchestration, _empty()
        adapter, (stream, first), started = attempt
        result.ttft = time.perf_counter() - started
        self.store.answering(adapter.name, _wall(started))  # its tokens are coming: not hanging
        # Answering: earlier attempts' errors stay in `attempts` only.
        result.provider, result.model, result.error = adapter.name, adapter.spec.model, None
        return orchestration, self._relay(plan, orchestration, result, adapter, stream, first, started)

    async def _relay(self, plan: _Plan, orchestration: Orchestration, result: Result, adapter: Adapter,
                     stream: AsyncIterator[Chunk], first: Chunk, started: float) -> AsyncIterator[Chunk]:
        parts: list[str] = []
        logprobs: list[Any] = []
        calls: dict[int, dict[str, Any]] = {}
        chunk = first
        recorded = False
        try:
            while True:
                if chunk.text:
                    parts.append(chunk.text)
                if chunk.tool_calls:
                    _add_tool_deltas(calls, chunk.tool_calls)
                if chunk.logprobs:
                    logprobs.extend(chunk.logprobs)
                if chunk.finish_reason:
                    result.finish_reason = chunk.finish_reason
                if chunk.is_final:
                    result.stop_sequence = chunk.stop_sequence
                    # Record before the last chunk goes out, so what the caller reads
                    # last (database_logged, the usage) is already true.
                    result.usage, result.completion_id = chunk.usage, chunk.id
                    result.model = chunk.model or result.model
                    result.limit_reset_s = chunk.limit_reset_s
                    result.text = "".join(parts)
                    result.logprobs = logprobs or None
                    result.tool_calls = [calls[i] for i in sorted(calls)] or None
                    self._succeeded(plan, result, adapter, started)
                    orchestration.provider_time = result.provider_time
                    await self._finish(plan, orchestration)
                    recorded = True
                    yield chunk
                    return
                yield chunk
                chunk = await stream.__anext__()
        except StopAsyncIteration:  # pragma: no cover - adapters end every stream with usage
            result.text = "".join(parts)
            self._failed(plan, result, adapter, ProviderStreamCut("the stream ended without usage",
                                                                  deployment=adapter.name), started)
        except ProviderError as exc:
            result.text = "".join(parts)
            self._failed(plan, result, adapter, exc, started)
            raise
        finally:
            if not recorded:
                # The server cancels a stream whose client went away; the record must
                # still be written, so nothing below may be cancelled half-way.
                with anyio.CancelScope(shield=True):
                    await self._abandon(plan, orchestration, result, adapter, stream, parts, started)

    async def _abandon(self, plan: _Plan, orchestration: Orchestration, result: Result, adapter: Adapter,
                       stream: AsyncIterator[Chunk], parts: list[str], started: float) -> None:
        """Close a stream that ended early and record how it ended."""
        close = getattr(stream, "aclose", None)
        if close is not None:  # release the provider connection and its slot
            await close()
        if result.ok:
            # The caller went away mid-stream: not the provider's fault, so no DWA
            # outcome; the log says what happened.
            self.store.finish(adapter.name, _wall(started))
            result.provider_time += time.perf_counter() - started
            result.text = "".join(parts)
            result.error = {"type": "client_disconnected", "status": 499,
                            "message": "the client closed the stream", "provider": adapter.name}
        orchestration.provider_time = result.provider_time
        await self._finish(plan, orchestration)

    # -- step 1: one read round trip -----------------------------------------------------
    async def _prepare(self, request: LLMRequest) -> _Plan:
        started = time.perf_counter()
        slots = self._slots(request)
        names = list(dict.fromkeys(a.name for slot in slots for a in slot))
        strategy = request.strategy or self.router.strategy
        round_robin = strategy is RoutingStrategy.round_robin
        policy = request.cache
        key = None
        chat = request.chat
        # Embeddings are deterministic: kept unless CACHE_MODE is off.
        cacheable = (self.cache_mode is not CacheMode.off if chat is None
                     else cache.applies(self.cache_mode, chat.temperature, chat.seed))
        if self.kv is not None and not (policy.no_cache and policy.no_store) and cacheable:
            key = cache.cache_key(self._cache_identity(request), namespace=policy.namespace,
                                  tenant=request.tenant)
        now = time.time()
        # A caller may ask for less time than the operator allows, never for more.
        timeout = min(request.timeout, self.default_timeout) if request.timeout else self.default_timeout
        hit, snapshot, verdict = None, None, None
        if self.kv is not None:
            commands = self.store.read_commands(names, round_robin=round_robin)
            read_cache = key is not None and not policy.no_cache
            if read_cache:
                commands = [cache.read_command(key), *commands]
            limited = request.limits is not None and request.caller is not None
            if limited:
                commands = [limits.check_command(request.caller, request.limits, now), *commands]
            try:
                replies = await self.kv.pipeline(commands, scripts=self.scripts)
            except KVError as exc:  # Redis down: route on priors, no cache, limits fail open, log to Postgres
                self._redis_failed(exc, self.redis_read_errors)
            else:
                self.redis_read_errors.recovered()
                if limited:
                    verdict = limits.parse_check(replies[0], now)
                    if not verdict.allowed:
                        raise LimitExceeded(verdict, request.limits)
                    replies = replies[1:]
                if read_cache:
                    hit = cache.parse_entry(replies[0])
                    replies = replies[1:]
                snapshot = self.store.parse(names, replies, now, round_robin=round_robin)
        else:
            try:
                snapshot = await self.store.read(names, now, round_robin=round_robin)
            except Exception as exc:  # noqa: BLE001 - Postgres down: route on priors
                self.postgres_outage.failed(exc)
        if snapshot is None:
            snapshot = Snapshot(now, tuple(names), {n: ProviderState(n, self.store.profile(n)) for n in names})
        return _Plan(request, "req_" + uuid.uuid4().hex, started, now, started + timeout, slots,
                     snapshot, key, hit if hit and hit.get("results") else None, verdict)

    def _slots(self, request: LLMRequest) -> list[list[Adapter]]:
        """The candidates of each target, among the deployments serving what it asks for."""
        capability = request.serves
        registry = self.registry
        if not request.targets:
            serving = registry.serving(capability)
            if not serving:
                raise NoDeployment(capability, registry.names)
            return [serving]
        slots = []
        for name in request.targets:
            adapters = registry.resolve(name, capability)
            if not adapters:
                serving = [a.name for a in registry.serving(capability)]
                if registry.resolve(name):
                    raise NotServed(name, capability, serving)
                raise UnknownProvider(name, serving, enable_hint(name))
            slots.append(adapters)
        return slots

    @staticmethod
    def _cache_identity(request: LLMRequest) -> dict[str, Any]:
        embedding = request.embedding
        if embedding is not None:  # its own key shape: never the key of a chat request
            return {"embeddings": embedding.input, "targets": request.targets or "auto",
                    "dimensions": embedding.dimensions}
        chat = request.chat
        assert chat is not None
        return {
            "messages": chat.messages, "targets": request.targets or "auto",
            "mode": request.mode if request.targets and len(request.targets) > 1 else None,
            "max_tokens": chat.max_tokens, "temperature": chat.temperature, "top_p": chat.top_p,
            "stop": chat.stop, "tools": chat.tools, "response_format": chat.response_format,
            "seed": chat.seed, "extra": chat.extra or None,
        }

    # -- step 2: routing and calling --------------------------------------------------------
    def _first_token_deadline(self, plan: _Plan, slot: list[Adapter], adapter: Adapter) -> float | None:
        """How long a stream to `adapter` waits for its first token before failing over:
        None (its whole timeout) when no other deployment of the slot is left to fail over
        to; else the deployment's first_token_timeout_seconds, or STREAM_FIRST_TOKEN_TIMEOUT's
        seconds, or for "auto" scoring.first_token_deadline of its TTFTs and the prompt."""
        if self.first_token_timeout == "off" or all(a.name in plan.picked for a in slot):
            return None
        if adapter.spec.first_token_timeout_seconds is not None:
            return adapter.spec.first_token_timeout_seconds
        if self.first_token_timeout != "auto":
            return self.first_token_timeout
        state = plan.snapshot.states.get(adapter.name)
        if state is None:
            return None
        prompt = estimate_messages(plan.request.chat.messages) if plan.request.chat is not None else 0
        return first_token_deadline(state, prompt, self.router.config)

    def _remaining(self, plan: _Plan) -> float:
        return max(0.001, plan.deadline - time.perf_counter())

    async def _pick(self, plan: _Plan, slot: list[Adapter], tried: list[str]) -> Decision | None:
        snapshot = plan.snapshot
        order = tuple(a.name for a in slot)
        if order != snapshot.order:
            snapshot = Snapshot(snapshot.now, order, snapshot.states, snapshot.rr_counter)
        explicit = slot[0].name if len(slot) == 1 and plan.request.targets else None
        if explicit is not None and tried:
            return None  # one named deployment: nothing to fail over to
        chat = plan.request.chat
        tokens = chat.max_tokens if chat is not None and not plan.streaming else None  # a long reply is not late
        try:
            decision = await self.router.pick_from(snapshot, strategy=plan.request.strategy, tokens=tokens,
                                                   started=time.time(), exclude=tried, provider=explicit,
                                                   stream=plan.streaming, quantile=plan.request.latency_quantile)
        except KVError:  # claiming a half-open probe failed with Redis: decide without it
            decision = self.router.decide(snapshot, strategy=plan.request.strategy, exclude=tried,
                                          provider=explicit, stream=plan.streaming,
                                          quantile=plan.request.latency_quantile)
            if decision is not None:
                self.store.start(decision.provider, time.time(), tokens, plan.streaming)
        if decision is not None:
            plan.picked.append(decision.provider)
            plan.loads[decision.provider] = decision.load
            if plan.on_pick is not None:
                plan.on_pick.set()
            if decision.explore:
                plan.explored.add(decision.provider)
        return decision

    async def _attempt(self, plan: _Plan, slot: list[Adapter], result: Result,
                       call: Call[T]) -> tuple[Adapter, T, float] | None:
        """THE request flow of one slot: pick a deployment, call it, and on a retryable
        failure record it and fail over (or wait out a 429's Retry-After) until one
        answers or nothing is left.

        Returns the deployment that answered, what `call` returned and when that call
        started (perf_counter); None when none answered (`result.error` says why).
        Every attempt's time is added to `result.provider_time`.
        """
        tried: list[str] = []
        while True:
            decision = await self._pick(plan, slot, tried)
            if decision is None:
                if result.error is None:
                    result.error = {"type": "no_provider", "message": "no provider could take the request",
                                    "status": 503}
                return None
            if decision.reason in ("all_circuits_open", "explicit_provider") \
                    and not await self._limit_waited(plan, decision, result):
                return None
            adapter = self.registry[decision.provider]
            tried.append(adapter.name)
            result.dwa_score, result.selection_reason = decision.score, decision.reason
            budget = self._remaining(plan)
            started = time.perf_counter()
            try:
                value = await call(adapter, plan.request, budget)
            except asyncio.CancelledError:  # lost a race or a hedge, or the caller left
                self.store.finish(adapter.name, _wall(started))
                elapsed = time.perf_counter() - started
                result.provider_time += elapsed
                if plan.won is not None:
                    self._cancelled(plan, adapter, elapsed, plan.won)
                raise
            except ProviderError as exc:
                result.provider_time += time.perf_counter() - started
                cut_short = (isinstance(exc, ProviderTimeout) and not isinstance(exc, ProviderFirstTokenLate)
                             and budget < adapter.spec.timeout_seconds)
                self._failed(plan, result, adapter, exc, started, decision, deadline_cut=cut_short)
                if exc.retryable and not cut_short and await self._may_retry(plan, exc, slot, tried):
                    continue
                return None
            return adapter, value, started

    async def _complete_slot(self, plan: _Plan, slot: list[Adapter]) -> Result:
        result = Result(provider=None, model=None)
        if plan.request.embedding is not None:
            embedded = await self._attempt(plan, slot, result, _embed)
            if embedded is not None:
                adapter, embeddings, started = embedded
                result.provider, result.model = adapter.name, embeddings.model or adapter.spec.embedding_model
                result.vectors, result.usage = embeddings.vectors, embeddings.usage
                self._succeeded(plan, result, adapter, started)
            return result
        attempt = await self._attempt(plan, slot, result, _complete)
        if attempt is not None:
            adapter, completion, started = attempt
            result.provider, result.model = adapter.name, completion.model or adapter.spec.model
            result.text, result.finish_reason = completion.text, completion.finish_reason
            result.stop_sequence = completion.stop_sequence
            result.tool_calls, result.usage = completion.tool_calls, completion.usage
            result.logprobs, result.completion_id = completion.logprobs, completion.id
            result.limit_reset_s = completion.limit_reset_s
            self._succeeded(plan, result, adapter, started)
        return result

    async def _limit_waited(self, plan: _Plan, decision: Decision, result: Result) -> bool:
        """Every candidate is cooling down and the router picked the one that reopens
        soonest, or the request named one deployment. Sooner than a 429's Retry-After it
        would only answer 429 again: wait it out if that is short (`rate_limit_wait`,
        within the deadline), else leave it uncalled and answer 429 with the wait (False)."""
        state = plan.snapshot.states.get(decision.provider)
        wait = state.rate_limited_until - time.time() if state is not None else 0.0
        if wait <= 0:
            return True  # a breaker opened on failures: a try beats no answer
        if wait <= self.rate_limit_wait and wait < plan.deadline - time.perf_counter():
            await asyncio.sleep(wait)
            return True
        self.store.finish(decision.provider)  # picked, never called
        result.error = {"type": "rate_limited", "status": 429, "retry_after": wait, "provider": decision.provider,
                        "message": f"rate limited: no deployment takes requests for {wait:.1f}s more"}
        return False

    async def _may_retry(self, plan: _Plan, exc: ProviderError, slot: list[Adapter],
                         tried: list[str]) -> bool:
        """Whether to try again: another candidate is left, or the only one asked us to
        wait (429 Retry-After) for no longer than `rate_limit_wait` and what remains of
        the deadline."""
        if plan.deadline - time.perf_counter() <= 0.001:
            return False
        left = [a for a in slot if a.name not in tried]
        if left and not (len(slot) == 1 and plan.request.targets):
            return True
        wait = exc.retry_after if isinstance(exc, ProviderRateLimited) else None
        if wait is not None and wait <= self.rate_limit_wait and wait < plan.deadline - time.perf_counter():
            await asyncio.sleep(wait)
            tried.pop()  # the same deployment again
            return True
        return False

    async def _hedged(self, plan: _Plan, slot: list[Adapter], after: float | Literal["auto"]) -> Result:
        """The slot's call, and if it has not answered within `after` seconds, the same
        call to another of its deployments: the first success wins, the other is cancelled
        (`_cancelled`: not a failure, but the time it is expected to have taken, so a
        provider whose calls keep losing looks as slow as it is).
        "auto": `after` is the picked deployment's hedge_delay (twice its mean latency);
        a deployment that has never answered is not hedged."""
        started = time.perf_counter()
        plan.on_pick = asyncio.Event() if after == "auto" else None
        first = asyncio.ensure_future(self._complete_slot(plan, slot))
        if plan.on_pick is not None:
            picked = asyncio.ensure_future(plan.on_pick.wait())
            await asyncio.wait([first, picked], return_when=asyncio.FIRST_COMPLETED)
            picked.cancel()
            state = plan.snapshot.states.get(plan.picked[0]) if plan.picked else None
            delay = hedge_delay(state, self.router.config) if state is not None else None
            if first.done() or delay is None:
                return await first
            after = max(0.0, delay - (time.perf_counter() - started))
        done, _ = await asyncio.wait([first], timeout=after)
        rest = [a for a in slot if a.name not in plan.picked]
        if done or not rest:
            return await first
        second = asyncio.ensure_future(self._complete_slot(plan, rest))
        tasks = [first, second]
        failed: Result | None = None
        try:
            for next_done in asyncio.as_completed(tasks):
                result = await next_done
                if result.ok:
                    if result.provider in {a.name for a in rest}:
                        result.selection_reason = "hedged"  # the second call answered first
                    plan.won = result
                    return result
                failed = failed or result
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert failed is not None
        return failed

    async def _race(self, plan: _Plan) -> list[Result]:
        """Several targets, first success wins; the others are cancelled (`_cancelled`)."""
        tasks = [asyncio.ensure_future(self._complete_slot(plan, slot)) for slot in plan.slots]
        winner: Result | None = None
        failures: list[Result] = []
        try:
            for next_done in asyncio.as_completed(tasks):
                result = await next_done
                if result.ok:
                    winner = plan.won = result
                    break
                failures.append(result)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return [winner] if winner else failures

    # -- bookkeeping of each attempt ----------------------------------------------------------
    def _succeeded(self, plan: _Plan, result: Result, adapter: Adapter, started: float) -> None:
        elapsed = time.perf_counter() - started
        usage = result.usage or Usage(0, 0, 0, "estimate")
        result.usage, result.error = usage, None  # earlier attempts' errors are in attempts
        result.response_time = elapsed
        result.provider_time += elapsed
        result.cost = adapter.spec.cost(usage)
        result.attempts.append(Attempt(adapter.name, _model(plan.request, adapter), elapsed))
        plan.outcomes.append(Outcome(adapter.name, OutcomeKind.SUCCESS, elapsed, time.time(),
                                     usage.prompt_tokens, usage.completion_tokens, ttft_s=result.ttft,
                                     retry_after_s=result.limit_reset_s, fresh=adapter.name in plan.explored,
                                     load=plan.loads.get(adapter.name, 0)))
        self._log_result(plan, result, elapsed)

    def _cancelled(self, plan: _Plan, adapter: Adapter, elapsed: float, winner: Result) -> None:
        """A call a hedge or race made moot, cancelled unanswered after `elapsed` s: an outcome whose
        latency is the one expected of a call slower than that (censored_latency), for a
        reply the winner's size; no failure, no log row (the caller's answer has one)."""
        tokens = winner.usage.completion_tokens if winner.usage else 0
        state = plan.snapshot.states.get(adapter.name)
        latency = censored_latency(state, elapsed, tokens, self.router.config) if state else elapsed
        plan.outcomes.append(Outcome(adapter.name, OutcomeKind.CANCELLED, latency, time.time(),
                                     output_tokens=tokens, load=plan.loads.get(adapter.name, 0)))

    def _failed(self, plan: _Plan, result: Result, adapter: Adapter, exc: ProviderError, started: float,
                decision: Decision | None = None, *, deadline_cut: bool = False) -> None:
        """Record a failed attempt: its DWA outcome, its log row, and the error it leaves.

        `deadline_cut`: the call timed out inside a budget the request's own deadline
        had shortened. Slow or not, the provider was not given its full time, so it is
        not held against it; otherwise any caller could open a healthy provider's
        circuit with a few requests of `timeout: 0.001`.
        """
        elapsed = time.perf_counter() - started
        error_class = "deadline_exceeded" if deadline_cut else exc.error_class
        model = _model(plan.request, adapter)
        result.attempts.append(Attempt(adapter.name, model, elapsed, error_class,
                                       exc.message, exc.status))
        if deadline_cut:
            self.store.finish(adapter.name, _wall(started))
        else:
            if isinstance(exc, ProviderClientError):
                kind = OutcomeKind.CLIENT_ERROR
            elif isinstance(exc, ProviderRateLimited):
                kind = OutcomeKind.RATE_LIMITED
            else:
                kind = OutcomeKind.FAILURE
            plan.outcomes.append(Outcome(adapter.name, kind, elapsed, time.time(), error=exc.error_class,
                                         retry_after_s=exc.retry_after, load=plan.loads.get(adapter.name, 0)))
        retry_after = None
        if isinstance(exc, ProviderClientError):
            status = exc.status or 400
        elif isinstance(exc, ProviderRateLimited):  # the caller may try again after it
            status, retry_after = 429, exc.retry_after or self.router.config.rate_limit_default_s
        else:
            status = 504 if isinstance(exc, ProviderTimeout) else 502
        message = exc.provider_message or exc.message
        if deadline_cut:
            message = f"the request's deadline passed before {adapter.name} answered"
        result.error = {"type": error_class, "message": message, "status": status, "provider": adapter.name}
        if retry_after is not None:
            result.error["retry_after"] = retry_after
        log.debug("%s failed after %.3fs: %s", adapter.name, elapsed, exc)
        self._log(plan, status="error", provider=adapter.name, model=model,
                  error_class=error_class, error=(exc.message or "")[:500],
                  latency_ms=elapsed * 1000.0, final=False,
                  selection_reason=decision.reason if decision else None,
                  dwa_score=decision.score if decision else None)

    def _log(self, plan: _Plan, **fields: Any) -> None:
        """Queue one request-log row; the fields every row of this request shares are filled in."""
        plan.entries.append(LogEntry(
            log_id=f"{plan.request_id}:{len(plan.entries)}", request_id=plan.request_id,
            endpoint=plan.request.endpoint, created_at=plan.now, caller_key_id=plan.request.caller,
            strategy=(plan.request.strategy or self.router.strategy).value, **fields,
        ))

    def _log_result(self, plan: _Plan, result: Result, elapsed: float) -> None:
        """The row of a result the caller got (a provider's answer, or a cached one)."""
        usage = result.usage
        self._log(
            plan, status="ok", provider=result.provider, model=result.model, latency_ms=elapsed * 1000.0,
            ttft_ms=result.ttft * 1000.0 if result.ttft is not None else None,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            total_tokens=usage.total_tokens if usage else 0, cost=result.cost, cached=result.cached,
            selection_reason=result.selection_reason, dwa_score=result.dwa_score,
        )

    @staticmethod
    def _redis_failed(exc: KVError, outage: Outage) -> None:
        if not isinstance(exc, KVUnavailable):
            outage.failed(exc)

    # -- step 3: one record round trip ---------------------------------------------------------
    async def _finish(self, plan: _Plan, orchestration: Orchestration) -> None:
        orchestration.verdict = plan.verdict
        if orchestration.cached:
            for result in orchestration.results:
                self._log_result(plan, result, 0.0)
        else:
            for result in orchestration.results:
                if not result.ok:  # the row of the error the caller saw
                    error = result.error or {}
                    self._log(plan, status="error", provider=result.provider or error.get("provider"),
                              model=result.model, error_class=error.get("type"),
                              error=str(error.get("message", ""))[:500],
                              latency_ms=sum(a.latency_s for a in result.attempts) * 1000.0)
        policy = plan.request.cache
        store_answer = (plan.cache_key is not None and not policy.no_store and not orchestration.cached
                        and orchestration.results and all(r.ok for r in orchestration.results))
        if self.kv is not None:
            commands = [self.store.record_command(o) for o in plan.outcomes]
            if store_answer:
                entry = {"results": [r.to_cache() for r in orchestration.results]}
                commands.append(cache.write_command(plan.cache_key, entry, policy.ttl or self.cache_ttl))
            if plan.cache_key is not None and not policy.no_cache:
                commands.append(cache.count_command(orchestration.cached))
            request = plan.request
            if request.limits is not None and request.caller is not None and not orchestration.cached:
                tokens = sum(r.usage.total_tokens for r in orchestration.results if r.usage)
                cost = sum(r.cost for r in orchestration.results)
                commands.append(limits.record_command(request.caller, request.limits, plan.now, tokens, cost))
            commands += [append_command(e) for e in plan.entries]
            try:
                await self.kv.pipeline(commands, scripts=self.scripts)
            except KVError as exc:
                self._redis_failed(exc, self.redis_record_errors)
            else:
                self.redis_record_errors.recovered()
                orchestration.database_logged = True
        else:
            try:
                for outcome in plan.outcomes:
                    await self.store.record(outcome)
            except Exception as exc:  # noqa: BLE001 - routing state is lost, the answer is not
                self.postgres_outage.failed(exc)
        if not orchestration.database_logged:
            try:
                await write_log(self.db, plan.entries)
            except Exception as exc:  # noqa: BLE001 - the answer still goes out; say it is not logged
                self.postgres_outage.failed(exc)
                log.error("request log lost for %s: %s", plan.request_id, type(exc).__name__)
            else:
                self.postgres_outage.recovered()
                orchestration.database_logged = True
        orchestration.total_time = time.perf_counter() - plan.started


def _model(request: LLMRequest, adapter: Adapter) -> str:
    """The model a request asks of a deployment (a simulated one names its embedding model apart)."""
    return adapter.spec.model if request.embedding is None else adapter.spec.embedding_model


def _wall(started: float) -> float:
    """The wall-clock time of `started` (a perf_counter reading): when a call began, as
    the DWA store's in-flight bookkeeping counts it."""
    return time.time() - (time.perf_counter() - started)


async def _complete(adapter: Adapter, request: LLMRequest, timeout: float) -> Completion:
    return await adapter.complete(request.chat, timeout=timeout)  # type: ignore[arg-type]


async def _embed(adapter: Adapter, request: LLMRequest, timeout: float) -> Embeddings:
    return await adapter.embed(request.embedding, timeout=timeout)  # type: ignore[arg-type]


async def _first_chunk(adapter: Adapter, request: LLMRequest, timeout: float,
                       first_token: float | None = None) -> tuple[AsyncIterator[Chunk], Chunk]:
    """Open a stream and wait for its first chunk: until then a failure can fail over.
    With `first_token` shorter than `timeout`, a first chunk later than that is a
    ProviderFirstTokenLate (the stream closed), so the call goes to another deployment."""
    stream = adapter.stream(request.chat, timeout=timeout)  # type: ignore[arg-type]
    try:
        if first_token is None or first_token >= timeout:
            return stream, await stream.__anext__()
        try:
            async with asyncio.timeout(first_token):
                return stream, await stream.__anext__()
        except TimeoutError:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
            raise ProviderFirstTokenLate(f"no first token within {first_token:.3g}s (STREAM_FIRST_TOKEN_TIMEOUT)",
                                         deployment=adapter.name) from None
    except StopAsyncIteration:
        raise ProviderStreamCut("the stream ended before its first chunk", deployment=adapter.name) from None


async def _replay(result: Result) -> AsyncIterator[Chunk]:
    """A cached answer as a stream: the text (and tool calls) in one chunk, then the final chunk."""
    calls = [{"index": i, **call} for i, call in enumerate(result.tool_calls or ())] or None
    if result.text or result.logprobs or calls:
        yield Chunk(text=result.text or "", logprobs=result.logprobs, tool_calls=calls)
    yield Chunk(finish_reason=result.finish_reason or "stop", usage=result.usage or Usage(0, 0, 0),
                model=result.model, stop_sequence=result.stop_sequence)


def _add_tool_deltas(calls: dict[int, dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    """Fold a stream's tool-call deltas into whole calls (OpenAI's shape), by `index`:
    the first delta of a call carries its id and name, later ones pieces of arguments."""
    for delta in deltas:
        if not isinstance(delta, dict):
            continue
        index = delta.get("index", len(calls))
        call = calls.setdefault(index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        if delta.get("id"):
            call["id"] = delta["id"]
        if delta.get("type"):
            call["type"] = delta["type"]
        function = delta.get("function")
        if isinstance(function, dict):
            if function.get("name"):
                call["function"]["name"] += function["name"]
            if function.get("arguments"):
                call["function"]["arguments"] += function["arguments"]


async def _empty() -> AsyncIterator[Chunk]:
    return
    yield  # pragma: no cover - makes this an async generator


def build_orchestrator(settings: Settings, db: Database, kv: KV | None, *,
                       provider_transport: httpx2.AsyncBaseTransport | None = None) -> Orchestrator:
    """The orchestrator this configuration describes: its providers, DWA store and router.

    `provider_transport`, when given, carries every provider call (tests: one that
    pytest-httpx answers); by default each deployment builds its own.
    """
    from core.dwa.profile import ProviderProfile
    from core.providers.registry import load_registry

    registry = load_registry(settings, transport=provider_transport)
    profiles = [
        ProviderProfile(a.name, a.spec.priority, a.spec.price_input_per_1k, a.spec.price_output_per_1k,
                        a.spec.max_concurrency)
        for a in registry
    ]
    if kv is not None:
        from core.dwa.store import RedisDWAStore

        store: DWAStore = RedisDWAStore(kv, profiles, settings.dwa_config)
    else:
        from core.dwa.pg_store import PostgresDWAStore

        store = PostgresDWAStore(db, profiles, settings.dwa_config)
    router = Router(store, strategy=settings.DWA_ROUTING_STRATEGY)
    return Orchestrator(registry=registry, router=router, store=store, kv=kv, db=db,
                        cache_ttl=settings.CACHE_EXPIRE_SECONDS, cache_mode=settings.CACHE_MODE,
                        default_timeout=settings.REQUEST_TIMEOUT_SECONDS,
                        embedding_model=settings.EMBEDDING_MODEL,
                        rate_limit_wait=settings.RATE_LIMIT_MAX_WAIT_SECONDS,
                        first_token_timeout=settings.STREAM_FIRST_TOKEN_TIMEOUT)
