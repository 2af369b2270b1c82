"""The dashboard's page, assets and routes, through the real gateway (Postgres, Redis, HTTP).

The browser drives the same routes in tests/test_dashboard_browser.py; here are what a
browser cannot easily show: the stream tokens' refusals, the filters' 4xx, the 503s.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from core import stream_tokens
from core.auth import OPEN, Principal
from core.settings import Settings
from functions.gateway import build_app
from tests.conftest import TEST_MODULES
from tests.servers import serve

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hello dashboard"}], "temperature": 0}
SHOUT = {"steps": [{"id": "a", "kind": "python", "entry": "tests.tool_functions:shout", "arguments": {"text": "hi"}}]}
ASSETS = Path(__file__).resolve().parents[1] / "functions" / "dashboard_assets"


def _events(body: str) -> list[tuple[str, Any]]:
    """The (event, data) pairs of a Server-Sent Events body."""
    found = []
    for block in body.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "data" in lines:
            found.append((lines.get("event", "message"), json.loads(lines["data"])))
    return found


async def _finished(client: httpx.AsyncClient, run_id: str, headers: dict[str, str]) -> dict[str, Any]:
    for _ in range(200):
        run = (await client.get(f"/api/runs/{run_id}", headers=headers)).json()
        if run["status"] in ("succeeded", "failed", "cancelled", "timed_out"):
            return run
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish")


# --- the page -----------------------------------------------------------------------------------

async def test_the_page_and_its_assets_have_their_types_caching_and_a_strict_policy(open_gateway: Any) -> None:
    async with open_gateway() as gw:
        page = await gw.client.get("/dashboard")
        script_url = re.search(r'src="(/dashboard/assets/app\.js\?v=[0-9a-f]{12})"', page.text).group(1)
        style_url = re.search(r'href="(/dashboard/assets/app\.css\?v=[0-9a-f]{12})"', page.text).group(1)
        script, style = await gw.client.get(script_url), await gw.client.get(style_url)
        unversioned = await gw.client.get("/dashboard/assets/app.js")
        unchanged = await gw.client.get("/dashboard/assets/app.js", headers={"if-none-match": unversioned.headers["etag"]})
        missing = await gw.client.get("/dashboard/assets/secrets.py")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"  # a new release's asset URLs are seen at once
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "unsafe" not in policy
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert style.headers["content-type"] == "text/css; charset=utf-8"
    assert script.headers["cache-control"] == style.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert unversioned.status_code == 200 and unversioned.headers["cache-control"] == "no-cache"
    assert unchanged.status_code == 304 and unchanged.content == b""  # revalidated: not sent again
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_asset"


def test_no_asset_names_another_host_nor_runs_inline_code() -> None:
    for path in ASSETS.iterdir():
        text = path.read_text(encoding="utf-8")
        hosts = set(re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text)) - {"http://www.w3.org"}  # SVG's namespace
        assert hosts == set(), (path.name, hosts)
    page = (ASSETS / "index.html").read_text(encoding="utf-8")
    assert re.findall(r"<script>|\sstyle=|\son[a-z]+=", page) == []  # what the policy would block


def test_the_wheel_carries_the_assets(tmp_path: Path) -> None:
    import subprocess
    import zipfile

    root = Path(__file__).resolve().parents[1]
    subprocess.run(["uv", "build", "--wheel", "--out-dir", str(tmp_path), "--quiet"], cwd=root, check=True,
                   capture_output=True, timeout=300)
    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    assert {f"functions/dashboard_assets/{n}" for n in ("index.html", "app.js", "app.css")} <= set(names)


# --- stream tokens ------------------------------------------------------------------------------

async def test_a_run_stream_needs_a_token_for_that_run_issued_to_who_may_read_it(keyed: Any) -> None:
    async with keyed({"ORCHESITY_TOOL_MODULES": TEST_MODULES}, boss=dict(scopes=["admin"]),
                     alice=dict(scopes=["runs"]), bob=dict(scopes=["runs"]), chatter=dict(scopes=["llm"])) as k:
        client = k.gw.client
        alices = (await client.post("/api/runs", json={"pipeline": SHOUT}, headers=k.headers("alice"))).json()["id"]
        bobs = (await client.post("/api/runs", json={"pipeline": SHOUT}, headers=k.headers("bob"))).json()["id"]
        await _finished(client, alices, k.headers("alice"))
        await _finished(client, bobs, k.headers("bob"))

        minted = await client.post(f"/api/dashboard/runs/{alices}/stream-token", headers=k.headers("alice"))
        grant = minted.json()
        streamed = await client.get(grant["stream_url"])
        by_admin = await client.post(f"/api/dashboard/runs/{alices}/stream-token", headers=k.headers("boss"))
        admin_stream = await client.get(by_admin.json()["stream_url"])

        not_bobs = await client.post(f"/api/dashboard/runs/{alices}/stream-token", headers=k.headers("bob"))
        bobs_token = (await client.post(f"/api/dashboard/runs/{bobs}/stream-token", headers=k.headers("bob"))).json()
        bob_on_alices = await client.get(f"/api/dashboard/runs/{alices}/stream", params={"token": bobs_token["token"]})
        no_scope = await client.post(f"/api/dashboard/runs/{alices}/stream-token", headers=k.headers("chatter"))
        providers_token = (await client.post("/api/dashboard/providers/stream-token",
                                             headers=k.headers("chatter"))).json()["token"]
        wrong_stream = await client.get(f"/api/dashboard/runs/{bobs}/stream", params={"token": providers_token})
        no_token = await client.get(f"/api/dashboard/runs/{alices}/stream")
        forged_payload = grant["token"][:8] + ("A" if grant["token"][8] != "A" else "B") + grant["token"][9:]
        forged = await client.get(f"/api/dashboard/runs/{alices}/stream", params={"token": forged_payload})
        as_key = await client.get(f"/api/runs/{alices}", headers={"authorization": f"Bearer {grant['token']}"})
        as_key_query = await client.get(f"/api/runs/{alices}", params={"token": grant["token"]})

    assert minted.status_code == 200 and grant["token"].startswith("ost_")
    assert k.keys["alice"] not in minted.text and grant["expires_at"] - time.time() == pytest.approx(300, abs=5)
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    events = _events(streamed.text)
    assert [name for name, _ in events] == ["run"]  # one snapshot of a finished run, then the stream ends
    run = events[0][1]["run"]
    assert run["status"] == "succeeded" and run["steps"][0]["status"] == "succeeded"
    assert run["outputs"] == {"a": {"text": "HI"}}
    assert [e["type"] for e in events[0][1]["events"]][-1] == "run.succeeded"
    assert admin_stream.status_code == 200 and _events(admin_stream.text)[0][1]["run"]["id"] == alices

    refusals = {"bob asks for alice's run": (not_bobs, 404, "unknown_run"),
                "bob's token on alice's run": (bob_on_alices, 401, "invalid_stream_token"),
                "an llm key asks for a run": (no_scope, 403, "insufficient_scope"),
                "a providers token on a run": (wrong_stream, 401, "invalid_stream_token"),
                "no token": (no_token, 401, "missing_stream_token"),
                "a forged token": (forged, 401, "invalid_stream_token"),
                "a token as a key": (as_key, 401, "invalid_api_key"),
                "a token on a route needing a key": (as_key_query, 401, "missing_api_key")}
    for what, (response, status, code) in refusals.items():
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), (what, response.text)
    assert "is for 'providers', not this stream" in wrong_stream.json()["error"]["message"]
    assert f"is for 'run:{bobs}'" in bob_on_alices.json()["error"]["message"]
    assert "signature" in forged.json()["error"]["message"]


def test_a_token_expires_and_never_outlives_its_key(settings: Settings) -> None:
    keyed_settings = settings.model_copy(update={"SECRET_KEY": SecretStr("s" * 40)})
    now = time.time()
    token, expires = stream_tokens.issue(keyed_settings, OPEN, "providers", now - 301)
    with pytest.raises(stream_tokens.TokenRefused, match="expired"):
        stream_tokens.verify(keyed_settings, token, "providers", now)
    short_lived = Principal(id="k1", kind="key", name="k", scopes=frozenset({"runs"}), tenant="k1",
                            expires_at=now + 30)
    _, expires = stream_tokens.issue(keyed_settings, short_lived, "run:x", now)
    assert expires == now + 30


async def test_instances_sharing_secret_key_accept_each_others_tokens_and_others_do_not(
        gateway_settings: Settings) -> None:
    shared = gateway_settings.model_copy(update={"SECRET_KEY": SecretStr("a-long-random-secret-shared-by-all")})
    other = gateway_settings.model_copy(update={"SECRET_KEY": SecretStr("another-deployment-altogether-123")})
    with serve(build_app(settings=shared)) as one, serve(build_app(settings=shared)) as two, \
            serve(build_app(settings=other)) as elsewhere:
        async with httpx.AsyncClient(timeout=20) as client:
            token = (await client.post(f"{one}/api/dashboard/providers/stream-token")).json()["token"]
            kept = []
            for url in (one, two):
                async with client.stream("GET", f"{url}/api/dashboard/providers/stream", params={"token": token}) as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            kept.append(json.loads(line[6:]))
                            break
            refused = await client.get(f"{elsewhere}/api/dashboard/providers/stream", params={"token": token})
    assert [len(snapshot["providers"]) > 0 for snapshot in kept] == [True, True]
    assert refused.status_code == 401 and "another SECRET_KEY" in refused.json()["error"]["message"]


async def test_the_providers_stream_pushes_snapshots_and_ends_with_its_token(gateway_settings: Settings) -> None:
    own = gateway_settings.model_copy(update={"STREAM_TOKEN_TTL_SECONDS": 3.0})
    with serve(build_app(settings=own)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            await client.post("/v1/chat/completions", json=CHAT)
            token = (await client.post("/api/dashboard/providers/stream-token")).json()
            started, snapshots = time.monotonic(), []
            async with client.stream("GET", token["stream_url"]) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        snapshots.append(json.loads(line[6:]))
            lasted = time.monotonic() - started
            after = await client.get(token["stream_url"])
    assert 2.0 < lasted < 6.0  # it ended when its token did
    assert len(snapshots) >= 2  # every PUSH_S
    first = {p["name"]: p for p in snapshots[0]["providers"]}
    assert first and all({"availability", "in_flight", "circuit_state", "mean_latency_ms", "traffic_share",
                          "cost_usd", "cost_last_minute", "model"} <= set(p) for p in first.values())
    assert sum(p["attempts_last_minute"] for p in first.values()) >= 1
    assert sum(p["traffic_share"] for p in first.values()) == pytest.approx(1.0, abs=0.01)
    assert after.status_code == 401 and "expired" in after.json()["error"]["message"]


# --- requests, spend, weights, pipelines -----------------------------------------------------------

async def test_the_request_log_filters_and_spend_per_key_per_day(keyed: Any) -> None:
    async with keyed(boss=dict(scopes=["admin"]), ann=dict(scopes=["llm"]), ben=dict(scopes=["llm"])) as k:
        client = k.gw.client
        for name, prompt in (("ann", "one"), ("ann", "two"), ("ann", "one"), ("ben", "three")):
            body = {**CHAT, "messages": [{"role": "user", "content": prompt}]}
            assert (await client.post("/v1/chat/completions", json=body, headers=k.headers(name))).status_code == 200
        admin = k.headers("boss")

        async def rows(**params: Any) -> list[dict[str, Any]]:
            answer = await client.get("/api/dashboard/requests", params=params, headers=admin)
            assert answer.status_code == 200, answer.text
            return answer.json()["requests"]

        anns, cached = await rows(key=k.ids["ann"]), await rows(key=k.ids["ann"], cached="true")
        fresh, bens = await rows(key=k.ids["ann"], cached="false"), await rows(key=k.ids["ben"], status="ok")
        provider = anns[0]["provider"]
        by_provider = await rows(key=k.ids["ann"], provider=provider)
        errors = await rows(key=k.ids["ann"], status="error")
        spend = (await client.get("/api/dashboard/spend", params={"days": 1}, headers=admin)).json()
        refused = {param: await client.get(path, params={param: value}, headers=admin) for path, param, value in [
            ("/api/dashboard/requests", "cached", "maybe"), ("/api/dashboard/requests", "status", "weird"),
            ("/api/dashboard/requests", "limit", "0"), ("/api/dashboard/requests", "provider", "no spaces"),
            ("/api/dashboard/spend", "days", "0"), ("/api/dashboard/weights", "hours", "x")]}
        not_admin = await client.get("/api/dashboard/requests", headers=k.headers("ann"))
    assert len(anns) == 3 and {r["caller_key_id"] for r in anns} == {k.ids["ann"]}
    assert len(cached) == 1 and cached[0]["cached"] is True and len(fresh) == 2
    assert len(bens) == 1 and bens[0]["status"] == "ok" and errors == []
    assert by_provider and all(r["provider"] == provider for r in by_provider)
    mine = {row["key_name"]: row for row in spend["spend"] if row["key"] in k.ids.values()}
    assert set(mine) == {"ann", "ben"} and mine["ann"]["requests"] == 3 and mine["ben"]["requests"] == 1
    assert mine["ann"]["day"] == time.strftime("%Y-%m-%d", time.gmtime()) and mine["ann"]["tokens"] > 0
    for param, response in refused.items():
        assert response.status_code == 422, (param, response.text)
        assert response.json()["error"]["param"] == param
    assert not_admin.status_code == 403


async def test_the_weight_history_the_recompute_wrote(open_gateway: Any) -> None:
    from core.dwa.recompute import recompute

    async with open_gateway() as gw:
        for i in range(3):
            await gw.client.post("/v1/chat/completions", json={**CHAT, "temperature": 1, "seed": i})
        from core import requestlog

        await requestlog.drain(gw.services.kv, gw.services.db)
        written = await recompute(gw.services.db, None, window_seconds=60, min_samples=1)
        history = (await gw.client.get("/api/dashboard/weights", params={"hours": 1})).json()
        one = (await gw.client.get("/api/dashboard/weights", params={"provider": written[0]["provider"]})).json()
    points = {(p["provider"], p["window_end"]) for p in history["points"]}
    assert {(r["provider"], r["window_end"].isoformat()) for r in written} <= points
    assert all(p["weight"] is None or 0 <= p["weight"] <= 1 for p in history["points"])
    assert one["points"] and {p["provider"] for p in one["points"]} == {written[0]["provider"]}
    ends = [p["window_end"] for p in history["points"]]
    assert ends == sorted(ends)  # oldest first: what a chart draws left to right


async def test_the_saved_pipelines_and_the_inputs_they_read(open_gateway: Any, tmp_path: Path) -> None:
    path = tmp_path / "pipelines.json"
    steps = [{"id": "a", "kind": "python", "entry": "tests.tool_functions:shout", "arguments": {"text": "{{ inputs.who }}"}},
             {"id": "b", "kind": "python", "entry": "tests.tool_functions:shout", "needs": ["a"],
              "arguments": {"text": "{{ inputs.greeting }} {{ inputs.who }}"}}]
    path.write_text(json.dumps({"pipelines": {"greet": {"version": "2", "steps": steps}}}))
    async with open_gateway(ORCHESITY_PIPELINES_FILE=path, ORCHESITY_TOOL_MODULES=TEST_MODULES) as gw:
        listed = (await gw.client.get("/api/dashboard/pipelines")).json()
    assert listed["pipelines"] == [{"name": "greet", "version": "2", "inputs": ["who", "greeting"],
                                    "steps": [{"id": "a", "kind": "python"}, {"id": "b", "kind": "python"}]}]


# --- what is down -------------------------------------------------------------------------------

async def test_with_redis_down_live_state_is_a_503_naming_it_and_the_log_still_reads(open_gateway: Any,
                                                                                    tmp_path: Path) -> None:
    from core.embedded import start_redis

    own_redis = start_redis(tmp_path)
    async with open_gateway(REDIS_URL=SecretStr(f"unix://{own_redis.socket_path}"), REDIS_DB=0) as gw:
        await gw.client.post("/v1/chat/completions", json=CHAT)
        own_redis.kill()
        live = await gw.client.get("/api/dashboard/providers")
        log = await gw.client.get("/api/dashboard/requests")
        page = await gw.client.get("/dashboard")
    assert live.status_code == 503 and live.json()["error"]["code"] == "redis_unavailable"
    assert log.status_code == 200 and "Redis is unavailable" in log.json()["note"]
    assert page.status_code == 200


async def test_with_postgres_down_the_reads_are_503s_naming_it(open_gateway: Any) -> None:
    dead = SecretStr("postgresql://nobody:hunter2@127.0.0.1:9/none")
    async with open_gateway(DATABASE_URL=dead) as gw:
        answers = [await gw.client.get(path) for path in ("/api/dashboard/requests", "/api/dashboard/spend",
                                                          "/api/dashboard/weights", "/api/dashboard/providers")]
        token = await gw.client.post(f"/api/dashboard/runs/{uuid.uuid4()}/stream-token")
        page = await gw.client.get("/dashboard")
    for answer in [*answers, token]:
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "database_unavailable" and "hunter2" not in answer.text
    assert page.status_code == 200
