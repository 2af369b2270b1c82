"""The `simulated` provider: no network, no key, realistic enough to route and measure.

It is what `orchesity serve` calls when no key is configured, and what benchmarks call.
Its behaviour comes from the deployment's `SimulationSpec`: latency to the first token
plus a cost per generated token, with jitter; a failure rate and a failure mode (the
same failures a real provider produces, raised as the same `ProviderError` classes).

Determinism: with a seed, the n-th call of an adapter always has the same latency and
outcome, and a given prompt always gets the same reply text, whatever ran before it.

Embeddings are a hashed bag of words (`embedding_vector`): the same text always gets the
same unit vector, on every simulated deployment, and texts that share words are closer
than texts that share none, which is enough for a knowledge-base search to make sense
offline. It is not a language model: synonyms are as far apart as any two words.

Time is injected: `sleep` and `clock` default to asyncio.sleep and time.monotonic;
`VirtualClock` provides both without real waiting, so a benchmark can run thousands of
simulated calls with their latencies accounted but not slept.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.providers import tokens
from core.providers.base import (
    ChatRequest,
    Chunk,
    Completion,
    EmbeddingRequest,
    Embeddings,
    ProviderBadResponse,
    ProviderClientError,
    ProviderError,
    ProviderRateLimited,
    ProviderStreamCut,
    ProviderTimeout,
    ProviderUnavailable,
    Slots,
    Usage,
    call_budget,
)
from core.providers.config import SimulationSpec

if TYPE_CHECKING:
    from core.providers.config import DeploymentSpec

Sleep = Callable[[float], Awaitable[object]]
Clock = Callable[[], float]

_MIXED = ("timeout", "rate_limited", "unavailable")

_OPENERS = (
    "Here is a short answer.",
    "Good question.",
    "In brief:",
    "Let me walk through it.",
    "There are a few things to consider.",
)
# Sentences of a generic, plausible answer; {topic} is filled from the prompt.
_SENTENCES = (
    "When it comes to {topic}, the first step is to be clear about the goal.",
    "Most of the difficulty with {topic} comes from details that are easy to overlook.",
    "A good rule of thumb is to start simple and measure before optimising.",
    "It helps to break the problem into smaller parts and check each one separately.",
    "The trade-off is usually between speed, cost and reliability.",
    "For {topic}, a common approach is to compare a few options on the same inputs.",
    "Keep in mind that the best choice depends on your constraints.",
    "If something fails, fall back to a known good option and look at what changed.",
    "Writing down the assumptions makes the result easier to review later.",
    "In practice, small and repeatable experiments teach more than one big attempt.",
    "The same idea applies whether you are working alone or with a larger team.",
    "Finally, revisit {topic} once you have real data, since early guesses tend to drift.",
)
_STOPWORDS = frozenset(
    "about after again being could does from have into just more most only other should some "
    "than that their them then there these they this those what when where which while with "
    "would your please explain tell write give".split()
)


class VirtualClock:
    """A clock that moves only when slept on: simulated latency without real waiting.

    Sleeps add up across tasks (it is a stopwatch, not an event scheduler), which is
    what a benchmark of per-call overhead wants: every simulated second is accounted.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.now += seconds
        await asyncio.sleep(0)  # still a scheduling point, like a real sleep


@dataclass(slots=True)
class _Plan:
    """What one call will do, drawn before it starts."""

    failure: str | None
    first_token_s: float
    per_token_s: float
    words: list[str]
    finish_reason: str
    number: int  # the adapter's call count: the reply id


class SimulatedAdapter:
    """An adapter that invents replies. Same interface as `OpenAICompatAdapter`."""

    def __init__(self, spec: DeploymentSpec, *, sleep: Sleep | None = None, clock: Clock | None = None) -> None:
        self.spec = spec
        self.simulation: SimulationSpec = spec.simulation or SimulationSpec()
        self._sleep = sleep or asyncio.sleep
        self._clock = clock or time.monotonic
        self._rng = random.Random(self.simulation.seed)  # None: seeded from the OS
        self._slots = Slots(spec.max_concurrency)
        self._calls = 0

    def __repr__(self) -> str:
        return f"<SimulatedAdapter {self.spec.name} {self.spec.model}>"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def in_flight(self) -> int:
        return self._slots.in_flight

    async def aclose(self) -> None:
        return None

    # --- planning --------------------------------------------------------------------------

    def _draw(self) -> tuple[str | None, float]:
        """This call's failure (None: it succeeds) and latency factor."""
        sim = self.simulation
        rng = self._rng
        self._calls += 1
        failure = None
        if sim.failure_rate and rng.random() < sim.failure_rate:
            failure = rng.choice(_MIXED) if sim.failure_mode == "mixed" else sim.failure_mode
        return failure, 1.0 + sim.jitter * (2.0 * rng.random() - 1.0)

    def _plan(self, request: ChatRequest) -> _Plan:
        sim = self.simulation
        failure, jitter = self._draw()
        length = max(1, round(sim.reply_tokens * (0.5 + self._rng.random())))
        words, finish = self._reply(request, length)
        return _Plan(
            failure, sim.latency_ms / 1000.0 * jitter, sim.ms_per_token / 1000.0 * jitter, words, finish, self._calls
        )

    def _reply(self, request: ChatRequest, target_tokens: int) -> tuple[list[str], str]:
        """Reply words (each but the first with its leading space): same prompt, same words."""
        prompt = _last_user_text(request.messages)
        digest = hashlib.blake2b(
            f"{self.simulation.seed}|{self.spec.name}|{prompt}".encode(errors="surrogatepass"), digest_size=8
        ).digest()
        rng = random.Random(int.from_bytes(digest, "big"))
        keywords = [w.strip(".,!?;:\"'()[]").lower() for w in prompt.split()]
        keywords = [w for w in keywords if len(w) > 3 and w.isalpha() and w not in _STOPWORDS]
        topic = " ".join(keywords[:3]) or "this"
        limit = request.max_tokens
        budget = min(target_tokens, limit) if limit else target_tokens
        finish = "length" if limit and target_tokens > limit else "stop"
        # About four characters per token (the estimate in tokens.py); usage is counted
        # from the final text.
        max_chars = budget * tokens.CHARS_PER_TOKEN
        words: list[str] = rng.choice(_OPENERS).split()
        chars = sum(len(w) + 1 for w in words)
        sentences = list(_SENTENCES)
        rng.shuffle(sentences)
        index = 0
        while chars < max_chars:
            for word in sentences[index % len(sentences)].format(topic=topic).split():
                if chars >= max_chars and finish == "length":
                    break
                words.append(word)
                chars += len(word) + 1
            index += 1
        while finish == "length" and len(words) > 1 and tokens.count_text(" ".join(words)) > budget:
            words.pop()  # a reply cut by max_tokens never reports more than max_tokens
        return [w if i == 0 else " " + w for i, w in enumerate(words)], finish

    def _usage(self, request: ChatRequest, text: str) -> Usage:
        prompt = tokens.count_messages(request.messages, self.spec.model)
        completion = tokens.count_text(text, self.spec.model)
        return Usage(prompt, completion, prompt + completion)  # reported, as a provider would

    async def _fail_before_reply(self, plan: _Plan, budget: float) -> None:
        """Spend the time the failure takes, then raise it (if the plan has one)."""
        name = self.spec.name
        failure = plan.failure
        if failure is None or failure == "stream_cut":
            return
        if failure == "timeout":
            await self._sleep(budget)
            raise ProviderTimeout(f"no reply within {budget:g}s (simulated)", deployment=name)
        await self._sleep(min(plan.first_token_s * 0.5, budget))
        if failure == "rate_limited":
            retry_after = self.simulation.retry_after_seconds
            raise ProviderRateLimited(
                "HTTP 429: rate limit reached (simulated)",
                deployment=name,
                status=429,
                retry_after=retry_after,
                provider_message="rate limit reached (simulated)",
            )
        if failure == "unavailable":
            raise ProviderUnavailable(
                "HTTP 500: internal server error (simulated)",
                deployment=name,
                status=500,
                provider_message="internal server error (simulated)",
            )
        if failure == "bad_response":
            raise ProviderBadResponse("unparseable reply: JSONDecodeError (simulated)", deployment=name)
        if failure == "client_error":
            raise ProviderClientError(
                "HTTP 400: invalid request (simulated)",
                deployment=name,
                status=400,
                provider_message="invalid request (simulated)",
            )
        raise ProviderError(f"unknown simulated failure {failure!r}", deployment=name)  # pragma: no cover

    # --- the adapter interface -------------------------------------------------------------

    async def complete(self, request: ChatRequest, *, timeout: float | None = None) -> Completion:
        spec = self.spec
        budget = call_budget(spec, timeout)
        await self._slots.acquire(budget, spec.name)
        try:
            plan = self._plan(request)
            await self._fail_before_reply(plan, budget)
            if plan.failure == "stream_cut":  # for a plain call: the connection dropped
                await self._sleep(min(plan.first_token_s, budget))
                raise ProviderUnavailable("connection failed (RemoteProtocolError, simulated)", deployment=spec.name)
            text = "".join(plan.words)
            usage = self._usage(request, text)
            duration = plan.first_token_s + plan.per_token_s * usage.completion_tokens
            if duration > budget:
                await self._sleep(budget)
                raise ProviderTimeout(f"no reply within {budget:g}s (simulated)", deployment=spec.name)
            await self._sleep(duration)
        finally:
            self._slots.release()
        return Completion(
            text=text,
            model=spec.model,
            finish_reason=plan.finish_reason,
            usage=usage,
            id=f"simcmpl-{plan.number:08d}",
        )

    async def embed(self, request: EmbeddingRequest, *, timeout: float | None = None) -> Embeddings:
        """One vector per text after the simulation's latency (no per-token time: an
        embedding generates nothing); its failures as for chat."""
        spec, sim = self.spec, self.simulation
        budget = call_budget(spec, timeout)
        await self._slots.acquire(budget, spec.name)
        try:
            failure, jitter = self._draw()
            latency = sim.latency_ms / 1000.0 * jitter
            await self._fail_before_reply(_Plan(failure, latency, 0.0, [], "stop", self._calls), budget)
            if failure == "stream_cut":  # no stream here: the connection dropped
                await self._sleep(min(latency, budget))
                raise ProviderUnavailable("connection failed (RemoteProtocolError, simulated)", deployment=spec.name)
            if latency > budget:
                await self._sleep(budget)
                raise ProviderTimeout(f"no reply within {budget:g}s (simulated)", deployment=spec.name)
            await self._sleep(latency)
        finally:
            self._slots.release()
        dimensions = request.dimensions or sim.embedding_dimensions
        counted = tokens.counted_input(request.input, spec.model)
        return Embeddings(vectors=[embedding_vector(text, dimensions) for text in request.input],
                          model=sim.embedding_model,
                          usage=Usage(counted.prompt_tokens, 0, counted.total_tokens))  # reported, as a provider would

    async def stream(self, request: ChatRequest, *, timeout: float | None = None) -> AsyncIterator[Chunk]:
        spec = self.spec
        budget = call_budget(spec, timeout)
        await self._slots.acquire(budget, spec.name)
        try:
            plan = self._plan(request)
            await self._fail_before_reply(plan, budget)
            if plan.first_token_s > budget:
                await self._sleep(budget)
                raise ProviderTimeout(f"no first token within {budget:g}s (simulated)", deployment=spec.name)
            await self._sleep(plan.first_token_s)
            cut_at = max(1, len(plan.words) // 2) if plan.failure == "stream_cut" else None
            for index, word in enumerate(plan.words):
                if index == cut_at:
                    raise ProviderStreamCut(
                        f"stream broke after {index} chunks (simulated)", deployment=spec.name
                    )
                if index:
                    await self._sleep(plan.per_token_s * tokens.count_text(word))
                yield Chunk(text=word)
            text = "".join(plan.words)
            yield Chunk(
                finish_reason=plan.finish_reason,
                usage=self._usage(request, text),
                model=spec.model,
                id=f"simcmpl-{plan.number:08d}",
            )
        finally:
            self._slots.release()


_WORD = re.compile(r"\w+")
_SPREAD = 3  # coordinates each word adds to: fewer exact collisions between two words


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for `text`: a hashed bag of its (lowercased) words.

    Each word adds +/-1 at a few coordinates chosen by its hash, so texts sharing words
    have a positive cosine and unrelated ones about zero. The whole text adds a smaller
    term of its own, so two texts with the same words in another order still differ,
    and a text without any word still gets a vector.
    """
    vector = [0.0] * dimensions
    features = [(word, 1.0) for word in _WORD.findall(text.lower())]
    features.append(("\x00" + text, 0.5))
    for feature, weight in features:
        digest = hashlib.blake2b(feature.encode(errors="surrogatepass"), digest_size=4 * _SPREAD + 1,
                                 person=b"orch-embed").digest()
        signs = digest[-1]
        for k in range(_SPREAD):
            index = int.from_bytes(digest[4 * k:4 * k + 4], "little") % dimensions
            vector[index] += weight if (signs >> k) & 1 else -weight
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0.0:  # every term cancelled out: possible only in very few dimensions
        vector[0], norm = 1.0, 1.0
    return [x / norm for x in vector]


def _last_user_text(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""
