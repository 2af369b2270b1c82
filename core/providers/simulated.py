"""The `simulated` provider: no network, no key, realistic enough to route and measure.

It is what `orchesity serve` calls when no key is configured, and what benchmarks call.
Its behaviour comes from the deployment's `SimulationSpec`: latency to the first token
plus a cost per generated token, with jitter; a failure rate and a failure mode (the
same failures a real provider produces, raised as the same `ProviderError` classes).

What it answers, in order:

- Tools (`tools` offered and `tool_choice` not "none"): one tool call, OpenAI's shape,
  `finish_reason="tool_calls"`, its `arguments` a valid instance of the tool's
  `parameters` (`core.providers.schema_instance`). With `tool_choice` naming a function
  (or "required") a call is always made, as OpenAI does. Otherwise ("auto") each offered
  tool is called once, in order, across the conversation: a tool some earlier assistant
  message already called is not called again, and once all have been, the answer is
  one of the kinds below. So offered [a, b]: call a, (tool result), call b, (tool
  result), final answer.
- `response_format` json_schema: a JSON document valid against the schema, the same for
  the same schema; json_object: a small JSON object about the prompt.
- Right after tool results (the last message is a `tool` one): a short text naming the
  tools called and quoting the start of what each returned.
- Otherwise: generic, plausible prose about the prompt's keywords.

A text reply, JSON included, is cut at `max_tokens` (finish_reason "length") as a real
model's would be; a tool call is not. Usage is counted from the reply (a tool call:
its name and arguments).
A stream delivers the same text, or the same tool call (name first, then the arguments
in pieces), in chunks.

Determinism: with a seed, the n-th call of an adapter always has the same latency and
outcome, and a given request always gets the same reply, whatever ran before it.

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
import json
import math
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
    words: list[str]  # the reply text in stream pieces, or a tool call's arguments
    finish_reason: str
    number: int  # the adapter's call count: the reply id
    tool_call: dict[str, Any] | None = None  # OpenAI's shape, with the whole arguments


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
        first_token_s, per_token_s = sim.latency_ms / 1000.0 * jitter, sim.ms_per_token / 1000.0 * jitter
        tool = _next_tool(request)
        if tool is not None:
            call = self._tool_call(request, tool)
            pieces = _pieces(call["function"]["arguments"])
            return _Plan(failure, first_token_s, per_token_s, pieces, "tool_calls", self._calls, call)
        structured = _structured_text(request)
        if structured is not None:
            words, finish = _cut(_pieces(structured), request.max_tokens)
        elif request.messages and request.messages[-1].get("role") == "tool" and _called_tools(request.messages):
            words, finish = _cut(_summary(request.messages), request.max_tokens)
        else:
            words, finish = self._reply(request, length)
        return _Plan(failure, first_token_s, per_token_s, words, finish, self._calls)

    def _tool_call(self, request: ChatRequest, function: dict[str, Any]) -> dict[str, Any]:
        """A call of `function` (a tool's `function` object): the same for the same request."""
        from core.providers.schema_instance import instance

        name = str(function.get("name") or "")
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        arguments = json.dumps(instance(parameters, name=name), ensure_ascii=False, separators=(",", ":"))
        digest = hashlib.blake2b(
            f"{self.simulation.seed}|{self.spec.name}|{len(request.messages)}|{name}".encode(errors="surrogatepass"),
            digest_size=12,
        ).hexdigest()
        return {"id": f"call_{digest}", "type": "function", "function": {"name": name, "arguments": arguments}}

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

    def _plan_usage(self, request: ChatRequest, plan: _Plan) -> Usage:
        if plan.tool_call is not None:
            function = plan.tool_call["function"]
            return self._usage(request, function["name"] + function["arguments"])
        return self._usage(request, "".join(plan.words))

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
            text = "" if plan.tool_call is not None else "".join(plan.words)
            usage = self._plan_usage(request, plan)
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
            tool_calls=[plan.tool_call] if plan.tool_call is not None else None,
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
            call = plan.tool_call
            cut_at = max(1, len(plan.words) // 2) if plan.failure == "stream_cut" else None
            if call is not None:  # as OpenAI streams one: id and name first, then the arguments
                yield Chunk(tool_calls=[{"index": 0, "id": call["id"], "type": "function",
                                         "function": {"name": call["function"]["name"], "arguments": ""}}])
            for index, word in enumerate(plan.words):
                if index == cut_at:
                    raise ProviderStreamCut(
                        f"stream broke after {index} chunks (simulated)", deployment=spec.name
                    )
                if index or call is not None:
                    await self._sleep(plan.per_token_s * tokens.count_text(word))
                if call is not None:
                    yield Chunk(tool_calls=[{"index": 0, "function": {"arguments": word}}])
                else:
                    yield Chunk(text=word)
            yield Chunk(
                finish_reason=plan.finish_reason,
                usage=self._plan_usage(request, plan),
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


# --- tools and structured output --------------------------------------------------------------


def _functions(request: ChatRequest) -> list[dict[str, Any]]:
    """The `function` objects of the offered tools, in order."""
    offered = []
    for tool in request.tools or ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and function.get("name"):
            offered.append(function)
    return offered


def _called_tools(messages: list[dict]) -> list[str]:
    """The names of the tools earlier assistant messages called, in order."""
    names = []
    for message in messages:
        if message.get("role") != "assistant":
            continue
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and function.get("name"):
                names.append(str(function["name"]))
    return names


def _next_tool(request: ChatRequest) -> dict[str, Any] | None:
    """The tool this turn calls, or None for an answer in text (see the module docstring)."""
    offered = _functions(request)
    choice = request.extra.get("tool_choice", "auto")
    if not offered or choice == "none":
        return None
    if isinstance(choice, dict):
        named = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        named = named or choice.get("name")  # the Responses API's flat shape
        return next((f for f in offered if f.get("name") == named), None)
    called = set(_called_tools(request.messages))
    pending = next((f for f in offered if f.get("name") not in called), None)
    if pending is None and choice == "required":
        return offered[0]
    return pending


def _structured_text(request: ChatRequest) -> str | None:
    """The JSON a `response_format` asks for, or None when it asks for text."""
    response_format = request.response_format
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_schema":
        from core.providers.schema_instance import instance

        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        name = spec.get("name") if isinstance(spec, dict) else None
        return json.dumps(instance(schema if schema is not None else {"type": "object"}, name=name or "value"),
                          ensure_ascii=False)
    if kind == "json_object":
        prompt = _last_user_text(request.messages)
        topic = " ".join(prompt.split()[:12]) or "this"
        return json.dumps({"answer": f"A simulated answer about {topic}.", "simulated": True}, ensure_ascii=False)
    return None


def _summary(messages: list[dict]) -> list[str]:
    """The final answer of a tool loop: which tools were called and what they returned."""
    names = {}  # tool_call_id -> the tool's name
    for message in messages:
        if message.get("role") == "assistant":
            for call in message.get("tool_calls") or ():
                if isinstance(call, dict) and isinstance(call.get("function"), dict):
                    names[call.get("id")] = call["function"].get("name")
    called = list(dict.fromkeys(_called_tools(messages)))
    parts = [f"I called {_and(called)}."]
    for message in messages:
        if message.get("role") == "tool":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            text = " ".join(str(content or "").split())
            if len(text) > 120:
                text = text[:117].rstrip() + "..."
            name = names.get(message.get("tool_call_id")) or message.get("name") or "a tool"
            parts.append(f"{name} returned: {text or '(nothing)'}")
    parts.append("That is everything needed to answer.")
    words = " ".join(parts).split()
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _pieces(text: str) -> list[str]:
    """`text` in stream-sized pieces (each with its leading whitespace) that join back to it."""
    return re.findall(r"\s*\S{1,16}|\s+$", text) or [text]


def _cut(pieces: list[str], limit: int | None) -> tuple[list[str], str]:
    """`pieces` cut to at most `limit` tokens, and the finish_reason that says whether they were."""
    if not limit or tokens.count_text("".join(pieces)) <= limit:
        return pieces, "stop"
    pieces = list(pieces)
    while len(pieces) > 1 and tokens.count_text("".join(pieces)) > limit:
        pieces.pop()
    return pieces, "length"
