"""The simulated provider: deterministic, realistic enough, failing on demand, instant on a virtual clock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from core.providers import (
    ChatRequest,
    Chunk,
    Completion,
    DeploymentSpec,
    ProviderBadResponse,
    ProviderBusy,
    ProviderClientError,
    ProviderError,
    ProviderRateLimited,
    ProviderStreamCut,
    ProviderTimeout,
    ProviderUnavailable,
    build_adapter,
    tokens,
)
from core.providers.simulated import SimulatedAdapter, VirtualClock

PROMPT = [{"role": "user", "content": "Explain how response caching works in an LLM gateway."}]


def adapter(clock: VirtualClock | None = None, **simulation: Any) -> SimulatedAdapter:
    clock = clock or VirtualClock()
    spec_fields = {k: simulation.pop(k) for k in ("timeout_seconds", "max_concurrency") if k in simulation}
    spec = DeploymentSpec(name="simulated", kind="simulated", simulation=simulation, **spec_fields)
    made = build_adapter(spec, sleep=clock.sleep, clock=clock.time)
    assert isinstance(made, SimulatedAdapter)
    return made


def request(**fields: Any) -> ChatRequest:
    return ChatRequest(messages=fields.pop("messages", PROMPT), **fields)


async def outcomes(a: SimulatedAdapter, n: int) -> list[str]:
    results = []
    for _ in range(n):
        try:
            completion = await a.complete(request(), timeout=5)
            results.append(f"ok:{completion.usage.completion_tokens}")
        except ProviderError as exc:
            results.append(exc.error_class)
    return results


async def test_reply_is_plausible_with_real_looking_usage() -> None:
    completion = await adapter(seed=1).complete(request(), timeout=5)
    assert isinstance(completion, Completion)
    assert completion.model == "orchesity-simulated-1" and completion.finish_reason == "stop"
    assert completion.id and completion.id.startswith("simcmpl-")
    assert len(completion.text.split()) > 10 and completion.text.endswith(".")
    usage = completion.usage
    assert usage.prompt_tokens == tokens.count_messages(PROMPT, "orchesity-simulated-1")
    assert usage.completion_tokens == tokens.count_text(completion.text, "orchesity-simulated-1")
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 20 <= usage.completion_tokens <= 120  # reply_tokens 60, varied 0.5x-1.5x


async def test_same_seed_same_everything() -> None:
    first = await outcomes(adapter(seed=7, failure_rate=0.4), 30)
    second = await outcomes(adapter(seed=7, failure_rate=0.4), 30)
    other = await outcomes(adapter(seed=8, failure_rate=0.4), 30)
    assert first == second
    assert first != other
    assert {"timeout", "rate_limited", "unavailable"} & set(first)  # mixed failures drawn
    assert any(o.startswith("ok:") for o in first)


async def test_same_prompt_same_text_whatever_ran_before() -> None:
    a = adapter(seed=3)
    first = await a.complete(request(), timeout=5)
    await a.complete(request(messages=[{"role": "user", "content": "Something else entirely"}]), timeout=5)
    again = await adapter(seed=3).complete(request(), timeout=5)
    assert again.text.split(".")[0] == first.text.split(".")[0]


async def test_latency_is_base_plus_per_token_with_jitter() -> None:
    clock = VirtualClock()
    a = adapter(clock, latency_ms=100, ms_per_token=10, jitter=0, seed=1)
    completion = await a.complete(request(), timeout=60)
    assert clock.now == pytest.approx(0.1 + 0.01 * completion.usage.completion_tokens)

    clock = VirtualClock()
    a = adapter(clock, latency_ms=100, ms_per_token=0, jitter=0.5, seed=1)
    await a.complete(request(), timeout=60)
    assert 0.05 <= clock.now <= 0.15 and clock.now != pytest.approx(0.1)


async def test_virtual_clock_means_no_real_sleeping() -> None:
    clock = VirtualClock()
    a = adapter(clock, latency_ms=2000, ms_per_token=50, seed=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(20):
        await a.complete(request(), timeout=600)
    assert loop.time() - started < 1.0
    assert clock.now > 40  # 20 calls of 2 s or more each were accounted


async def test_real_sleep_by_default() -> None:
    spec = DeploymentSpec(name="sim", kind="simulated", simulation={"latency_ms": 50, "ms_per_token": 0, "jitter": 0})
    a = build_adapter(spec)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await a.complete(request(), timeout=5)
    assert loop.time() - started >= 0.045


async def test_max_tokens_cuts_the_reply() -> None:
    completion = await adapter(seed=1, reply_tokens=200).complete(request(max_tokens=12), timeout=5)
    assert completion.finish_reason == "length"
    assert 0 < completion.usage.completion_tokens <= 12


@pytest.mark.parametrize(
    ("mode", "error", "status"),
    [
        ("timeout", ProviderTimeout, None),
        ("rate_limited", ProviderRateLimited, 429),
        ("unavailable", ProviderUnavailable, 500),
        ("bad_response", ProviderBadResponse, None),
        ("client_error", ProviderClientError, 400),
    ],
)
async def test_fixed_failure_modes(mode: str, error: type[ProviderError], status: int | None) -> None:
    with pytest.raises(error) as info:
        await adapter(failure_rate=1.0, failure_mode=mode, retry_after_seconds=2.5).complete(request(), timeout=5)
    assert info.value.status == status
    assert info.value.deployment == "simulated" and "simulated" in str(info.value)
    if mode == "rate_limited":
        assert info.value.retry_after == 2.5


async def test_timeout_failure_takes_the_whole_timeout() -> None:
    clock = VirtualClock()
    with pytest.raises(ProviderTimeout):
        await adapter(clock, failure_rate=1.0, failure_mode="timeout").complete(request(), timeout=3)
    assert clock.now == pytest.approx(3)


async def test_slow_reply_times_out() -> None:
    clock = VirtualClock()
    with pytest.raises(ProviderTimeout):
        await adapter(clock, latency_ms=5000).complete(request(), timeout=1)
    assert clock.now == pytest.approx(1)


async def test_failure_rate_is_roughly_honoured() -> None:
    results = await outcomes(adapter(seed=11, failure_rate=0.3, failure_mode="unavailable"), 400)
    share = results.count("unavailable") / len(results)
    assert 0.22 < share < 0.38


async def test_streaming_success() -> None:
    clock = VirtualClock()
    a = adapter(clock, seed=5, latency_ms=100, ms_per_token=10, jitter=0)
    chunks: list[Chunk] = [c async for c in a.stream(request(), timeout=60)]
    content, final = chunks[:-1], chunks[-1]
    assert len(content) > 5 and all(c.text and c.usage is None for c in content)
    assert final.is_final and final.finish_reason == "stop" and final.model == "orchesity-simulated-1"
    text = "".join(c.text for c in content)
    assert final.usage is not None and final.usage.completion_tokens == tokens.count_text(text)
    assert clock.now > 0.1
    # the streamed reply is the same one a plain call gives for the prompt
    plain = await adapter(seed=5).complete(request(), timeout=60)
    assert plain.text.split(".")[0] == text.split(".")[0]


async def test_stream_cut_mid_way() -> None:
    a = adapter(failure_rate=1.0, failure_mode="stream_cut", seed=2)
    received = []
    with pytest.raises(ProviderStreamCut) as info:
        async for chunk in a.stream(request(), timeout=5):
            received.append(chunk)
    assert received and all(c.text for c in received)
    assert info.value.retryable
    with pytest.raises(ProviderUnavailable):  # a plain call sees a dropped connection
        await a.complete(request(), timeout=5)


async def test_stream_failure_before_first_chunk() -> None:
    a = adapter(failure_rate=1.0, failure_mode="rate_limited")
    iterator = a.stream(request(), timeout=5)
    with pytest.raises(ProviderRateLimited):
        await iterator.__anext__()
    assert a.in_flight == 0


async def test_max_concurrency_queues_then_reports_busy() -> None:
    # real (tiny) sleeps: slots are held across real scheduling
    spec = DeploymentSpec(name="sim", kind="simulated", max_concurrency=2,
                          simulation={"latency_ms": 200, "ms_per_token": 0, "jitter": 0})
    a = build_adapter(spec)
    results = await asyncio.gather(*(a.complete(request(), timeout=0.1) for _ in range(3)), return_exceptions=True)
    kinds = sorted(type(r).__name__ for r in results)
    assert kinds == ["ProviderBusy", "ProviderTimeout", "ProviderTimeout"]
    assert a.in_flight == 0
    busy = next(r for r in results if isinstance(r, ProviderBusy))
    assert busy.retryable and busy.error_class == "busy" and "max_concurrency=2" in str(busy)

    results = await asyncio.gather(*(a.complete(request(), timeout=1) for _ in range(3)))
    assert len(results) == 3  # the third waited for a free slot within its deadline


async def test_no_time_left() -> None:
    with pytest.raises(ProviderTimeout):
        await adapter().complete(request(), timeout=0)
