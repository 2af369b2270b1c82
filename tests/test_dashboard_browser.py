"""The dashboard in a real browser: Debian's Chromium, driven by Playwright, against a real
server (uvicorn on loopback, the session's Postgres and Redis).

One browser and one page for the module; the tests run in order on it, as a person
would use the page. Playwright never downloads a browser here: it drives
/usr/bin/chromium. Screenshots go to $DASHBOARD_SCREENSHOTS (default /tmp/orchesity-dashboard).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.settings import Settings
from tests.conftest import TEST_MODULES, providers_file
from tests.servers import serve

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="the browser tests need Chromium at /usr/bin/chromium: "
                                "`sudo apt-get install chromium` (Debian/Ubuntu), as .ci/run does")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("DASHBOARD_SCREENSHOTS", "/tmp/orchesity-dashboard"))
REDIS_DB = 3  # this module's own Redis database, emptied when it starts
DEPLOYMENTS = [("fast", 0.002, 2), ("steady", 0.0005, 20)]  # name, price per 1k tokens, latency in ms


def _python(step_id: str, entry: str, arguments: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"id": step_id, "kind": "python", "entry": f"tests.tool_functions:{entry}", "arguments": arguments, **fields}


PIPELINES = {"pipelines": {
    "three_steps": {"steps": [_python("first", "slow", {"seconds": 1.0}),
                              _python("second", "slow", {"seconds": 1.0}, needs=["first"]),
                              _python("loud", "shout", {"text": "{{ inputs.text }}"}, needs=["second"])]},
    "long": {"steps": [_python("wait", "slow", {"seconds": 30}, timeout=60),
                       _python("never", "shout", {"text": "x"}, needs=["wait"])]},
}}
# A tool whose schema refuses short text: the form must show the schema's own words.
GREETER = {"name": "greeter", "version": "1", "kind": "python", "description": "Shouts a name back.",
           "python": {"entry": "tests.tool_functions:shout"},
           "parameters": {"type": "object", "properties": {"text": {"type": "string", "minLength": 3,
                                                                      "description": "a name"}},
                          "required": ["text"], "additionalProperties": False}}


@pytest.fixture(scope="module")
def dash_settings(settings: Settings, migrated: None, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    from core.kv import open_kv

    directory = tmp_path_factory.mktemp("dashboard")
    pipelines = directory / "pipelines.json"
    pipelines.write_text(json.dumps(PIPELINES))
    providers = providers_file(directory, [
        {"name": name, "kind": "simulated", "price_input_per_1k": price, "price_output_per_1k": price,
         "simulation": {"latency_ms": latency, "seed": 1}} for name, price, latency in DEPLOYMENTS])
    own = settings.model_copy(update={
        "OPEN_ACCESS": False, "REDIS_DB": REDIS_DB, "ORCHESITY_PIPELINES_FILE": pipelines,
        "ORCHESITY_PROVIDERS_FILE": providers,
        "ORCHESITY_TOOL_MODULES": TEST_MODULES, "SIMULATED_LATENCY_MS": 2.0, "SIMULATED_MS_PER_TOKEN": 0.0,
        "AUTH_CACHE_SECONDS": 0.0, "RUN_LEASE_SECONDS": 2.0, "WORKER_POLL_SECONDS": 0.1})

    async def flush() -> None:
        kv = open_kv(own)
        assert kv is not None
        await kv.execute("FLUSHDB")  # test Redis only
        await kv.close()

    asyncio.run(flush())
    return own


@pytest.fixture(scope="module")
def weight_history(dash_settings: Settings) -> None:
    """Twelve hourly windows of weights per deployment, as the cron recompute writes them."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy.dialects.postgresql import insert

    from core.db import Database
    from core.models import ProviderWeight

    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    rows = [{"provider": name, "window_end": hour - timedelta(hours=12 - i), "window_seconds": 3600, "samples": 40,
             "p50_latency_ms": latency, "p95_latency_ms": latency * 2, "error_rate": 0.0,
             "cost_per_1k_tokens": price, "weight": round(0.9 - n * 0.3 + 0.05 * ((i + n) % 3), 3)}
            for n, (name, price, latency) in enumerate(DEPLOYMENTS) for i in range(12)]

    async def write() -> None:
        db = Database.from_settings(dash_settings)
        try:
            async with db.engine.begin() as conn:
                await conn.execute(insert(ProviderWeight).values(rows).on_conflict_do_nothing())
        finally:
            await db.close()

    asyncio.run(write())


@pytest.fixture(scope="module")
def server(dash_settings: Settings) -> Iterator[str]:
    from functions.gateway import build_app

    with serve(build_app(settings=dash_settings), startup_timeout=30) as url:
        yield url


@pytest.fixture(scope="module")
def api(server: str, admin_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers={"authorization": f"Bearer {admin_key}"}, timeout=20) as client:
        yield client


@dataclass
class Browsing:
    page: Any
    url: str
    requests: list[str]  # every URL the browser asked for
    problems: list[str]  # console errors and uncaught exceptions


@pytest.fixture(scope="module")
def browsing(server: str, admin_key: str, weight_history: None) -> Iterator[Browsing]:
    """The module's browser and page (after the key is issued: Playwright's sync API keeps
    an event loop running in this thread, where asyncio.run cannot start another)."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="orchesity-chromium-") as profile, sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": 1280, "height": 900})
        requests: list[str] = []
        problems: list[str] = []
        context.on("request", lambda request: requests.append(request.url))
        page = context.pages[0] if context.pages else context.new_page()
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.set_default_timeout(10_000)
        SHOTS.mkdir(parents=True, exist_ok=True)
        try:
            yield Browsing(page, server, requests, problems)
        finally:
            context.close()


def _expect(locator: Any) -> Any:
    from playwright.sync_api import expect

    return expect(locator)


def _prefix(key: str) -> str:
    return key.split("_")[1]  # osk_<prefix>_<secret>: what the keys list shows


def _go(page: Any, view: str) -> None:
    page.get_by_role("navigation", name="Sections").get_by_role("link", name=view).click()
    _expect(page.get_by_role("heading", level=2, name=view)).to_be_visible()


# --- the tests, in the order a person would go -----------------------------------------------------

def test_sign_in_and_see_every_deployment_live(browsing: Browsing, api: httpx.Client, admin_key: str) -> None:
    page = browsing.page
    for i in range(3):  # some traffic for the last minute's share
        api.post("/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": f"hi {i}"}]})
    names = [p["name"] for p in api.get("/api/dashboard/providers").json()["providers"]]
    page.goto(f"{browsing.url}/dashboard")
    page.get_by_label("Admin key").fill("osk_abcdefgh_not-a-real-key")
    page.get_by_role("button", name="Sign in").click()
    _expect(page.locator("#sign-in-error")).to_contain_text("unknown API key")
    page.get_by_label("Admin key").fill(admin_key)
    page.get_by_label("Admin key").press("Enter")
    _expect(page.get_by_role("heading", level=2, name="Providers")).to_be_visible()
    assert names == [name for name, _, _ in DEPLOYMENTS]
    for name in names:
        _expect(page.locator(f'tr[data-provider="{name}"]')).to_contain_text("Serving")
    chart = page.get_by_role("img", name="Weight of each provider over the last 24 hours")
    for name in names:  # one line per deployment (and one for any other the history holds)
        _expect(chart.locator(f'polyline[data-provider="{name}"]')).to_have_count(1)
    latest = {p["provider"]: p["weight"] for p in api.get("/api/dashboard/weights").json()["points"]}
    for name in names:
        _expect(page.locator(".legend")).to_contain_text(f"{name} (now {latest[name]:.3f})")
    _expect(page.locator("#providers-live")).to_contain_text("Live, updated")  # a snapshot came over the stream
    share = page.locator("#providers-table tbody").inner_text()
    assert re.search(r"[1-9]\d*\.\d%", share), share  # some deployment served part of the last minute
    assert page.evaluate("sessionStorage.getItem('orchesity.key')") == admin_key
    assert page.evaluate("localStorage.length") == 0  # for this tab only
    page.screenshot(path=str(SHOTS / "providers-desktop.png"), full_page=True)


def test_a_reset_asks_first(browsing: Browsing) -> None:
    page = browsing.page
    row = page.locator("#providers-table tbody tr").first
    name = row.get_attribute("data-provider")
    page.once("dialog", lambda dialog: dialog.dismiss())
    row.get_by_role("button", name=f"Reset {name}").click()
    _expect(page.locator("#providers-live")).not_to_contain_text("Reset:")
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name=f"Reset {name}").click()
    _expect(page.locator("#providers-live")).to_contain_text(f"Reset: {name}")


def test_a_run_started_through_the_api_changes_state_on_the_page_without_a_reload(browsing: Browsing,
                                                                                 api: httpx.Client) -> None:
    page = browsing.page
    _go(page, "Runs")
    page.evaluate("window.sameDocument = true")
    started = api.post("/api/runs", json={"pipeline": "three_steps", "inputs": {"text": "hey"}})
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]
    page.get_by_role("button", name="Refresh").click()
    page.locator(f'a[data-run="{run_id}"]').click()
    second = page.locator('#run-steps li[data-step="second"]')
    _expect(second).to_have_attribute("data-status", "running")
    _expect(second).to_contain_text("Running")
    _expect(page.locator('#run-steps li[data-step="loud"]')).to_contain_text("Queued")
    _expect(second).to_have_attribute("data-status", "succeeded")
    _expect(page.locator("#run-status")).to_contain_text("Succeeded")
    loud = page.locator('#run-steps li[data-step="loud"]')
    _expect(loud).to_contain_text("Succeeded")
    output = loud.locator("details")
    assert output.get_attribute("open") is None  # outputs are folded
    output.locator("summary").click()
    _expect(output.locator("pre")).to_contain_text('"text": "HEY"')
    _expect(page.locator("#run-events")).to_contain_text("run.succeeded")
    _expect(page.locator("#run-cancel")).to_be_disabled()
    assert page.evaluate("window.sameDocument") is True  # all of it without a reload
    page.screenshot(path=str(SHOTS / "runs-desktop.png"), full_page=True)


def test_a_run_started_from_a_saved_pipeline_is_cancelled_from_the_page(browsing: Browsing,
                                                                       api: httpx.Client) -> None:
    page = browsing.page
    page.get_by_label("Saved pipeline").select_option("long")
    page.get_by_role("button", name="Start run").click()
    wait = page.locator('#run-steps li[data-step="wait"]')
    _expect(wait).to_have_attribute("data-status", "running")
    run_id = page.locator("#runs-table tr.selected a").get_attribute("data-run")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel run").click()
    _expect(page.locator("#run-status")).to_contain_text("Cancelled", timeout=15_000)
    _expect(page.locator('#run-steps li[data-step="never"]')).not_to_contain_text("Succeeded")
    assert api.get(f"/api/runs/{run_id}").json()["status"] == "cancelled"


def test_a_key_is_created_shown_once_and_revoked(browsing: Browsing, server: str) -> None:
    page = browsing.page
    _go(page, "Keys")
    page.get_by_label("Name").fill("ci robot")
    page.get_by_role("checkbox", name="runs").check()
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#key-secret")
    _expect(secret).to_have_text(re.compile(r"^osk_[a-z0-9]{8}_\S+$"))
    key = secret.inner_text()
    assert httpx.get(f"{server}/api/runs", headers={"authorization": f"Bearer {key}"}).status_code == 200
    row = page.locator("#keys-table tbody tr", has_text="ci robot")
    _expect(row).to_contain_text("llm, runs")
    page.get_by_role("button", name="I have copied it").click()
    _expect(secret).to_be_hidden()
    assert key not in page.content()  # shown once
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name=re.compile("^Revoke ci robot")).click()
    _expect(row).to_have_count(0)
    refused = httpx.get(f"{server}/api/runs", headers={"authorization": f"Bearer {key}"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "revoked_api_key"


def test_a_tool_is_invoked_from_its_schema_form_and_bad_input_refused_in_the_schema_words(
        browsing: Browsing, api: httpx.Client) -> None:
    page = browsing.page
    assert api.post("/api/tools", json=GREETER).status_code in (200, 201)
    _go(page, "Tools")
    row = page.locator('#tools-table tr[data-tool="greeter"]')
    _expect(row).to_contain_text("api")  # its source: registered through the API
    row.get_by_role("button", name="Invoke greeter@1").click()
    field = page.get_by_label("text *")
    _expect(field).to_be_focused()
    _expect(page.locator("#tool-versions")).to_contain_text("Versions: 1")
    field.fill("ab")
    page.locator("#tool-form").get_by_role("button", name="Invoke").click()
    refusal = api.post("/api/tools/greeter/invoke", json={"arguments": {"text": "ab"}}).json()["error"]["message"]
    assert "shorter than 3" in refusal  # the schema's minLength, in the validator's words
    _expect(page.locator("#tool-outcome .error")).to_have_text(f"Refused: {refusal}")
    field.fill("ada")
    page.locator("#tool-form").get_by_role("button", name="Invoke").click()
    _expect(page.locator("#tool-outcome pre")).to_contain_text('"text": "ADA"')
    page.screenshot(path=str(SHOTS / "tools-desktop.png"), full_page=True)


def test_the_request_log_filters_from_the_page(browsing: Browsing, api: httpx.Client, admin_key: str) -> None:
    page = browsing.page
    _go(page, "Requests")
    admin_id = next(k["id"] for k in api.get("/api/keys").json()["keys"] if k["prefix"] == _prefix(admin_key))
    provider = next(r["provider"] for r in api.get("/api/dashboard/requests", params={"key": admin_id}).json()["requests"]
                    if r["endpoint"] == "chat.completions")
    calls = api.get("/api/dashboard/requests", params={"key": admin_id, "provider": provider}).json()["requests"]
    page.get_by_label("Key id").fill(admin_id)
    page.get_by_label("Provider", exact=True).select_option(provider)
    page.get_by_role("button", name="Apply filters").click()
    rows = page.locator("#requests-table tbody tr")
    _expect(rows).to_have_count(len(calls))
    _expect(page.locator("#requests-table tbody")).to_contain_text("chat.completions")
    for row in rows.all():
        _expect(row).to_contain_text(admin_id)
        _expect(row).to_contain_text(provider)
    page.get_by_label("Cached").select_option("true")
    page.get_by_role("button", name="Apply filters").click()
    _expect(page.locator("#requests-table tbody")).to_contain_text("No request matches these filters.")
    _expect(page.locator("#spend-table tbody tr", has_text=admin_id)).to_contain_text("test admin")
    page.screenshot(path=str(SHOTS / "requests-desktop.png"), full_page=True)


# The visible elements reaching past the window's right edge (what makes a page scroll sideways).
WIDER = """[...document.querySelectorAll('body *')].filter(e => e.offsetParent !== null
  && e.getBoundingClientRect().right > window.innerWidth + 1).slice(0, 8)
  .map(e => `${e.tagName.toLowerCase()}#${e.id}.${e.className} ${Math.round(e.getBoundingClientRect().right)}px`)"""


def test_the_views_fit_a_phone_and_work_from_the_keyboard(browsing: Browsing) -> None:
    page = browsing.page
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        for view in ("Providers", "Requests", "Runs", "Tools", "Keys"):
            link = page.get_by_role("navigation", name="Sections").get_by_role("link", name=view)
            link.focus()
            page.keyboard.press("Enter")
            _expect(page.get_by_role("heading", level=2, name=view)).to_be_visible()
            _expect(link).to_have_attribute("aria-current", "page")
            page.wait_for_timeout(300)  # its data drawn
            page.screenshot(path=str(SHOTS / f"{view.lower()}-narrow.png"), full_page=True)
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, (f"{view} scrolls sideways by {overflow}px at 390px wide", page.evaluate(WIDER))
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})


def test_the_page_asked_no_host_but_the_server_and_never_put_the_key_in_a_url(browsing: Browsing,
                                                                             admin_key: str) -> None:
    """Over everything the tests above did (the two after it open pages on servers of their own)."""
    assert browsing.requests
    elsewhere = [url for url in browsing.requests if not url.startswith(browsing.url + "/") and not url.startswith("data:")]
    assert elsewhere == []
    assert [url for url in browsing.requests if admin_key.split("_", 2)[2] in url] == []  # nor its secret part
    streams = [url for url in browsing.requests if "/stream?" in url]
    assert streams and all(re.search(r"[?&]token=ost_", url) for url in streams)
    # Nothing broke: no uncaught error, nothing the Content-Security-Policy refused. The
    # browser logs every failed load: the 401 of the wrong key, the 422 of the bad tool input.
    expected = ("status of 401 (Unauthorized)", "status of 422 (Unprocessable Entity)")
    assert [p for p in browsing.problems if not p.endswith(expected)] == []


def test_with_redis_down_the_page_says_what_is_unavailable(browsing: Browsing, dash_settings: Settings,
                                                           admin_key: str, tmp_path: Path) -> None:
    from pydantic import SecretStr

    from core.embedded import start_redis
    from functions.gateway import build_app

    own_redis = start_redis(tmp_path)
    settings = dash_settings.model_copy(update={"REDIS_URL": SecretStr(f"unix://{own_redis.socket_path}"),
                                                "REDIS_DB": 0})
    with serve(build_app(settings=settings), startup_timeout=30) as url:
        own_redis.kill()
        page = browsing.page.context.new_page()
        try:
            page.goto(f"{url}/dashboard")
            page.get_by_label("Admin key").fill(admin_key)
            page.get_by_role("button", name="Sign in").click()
            _expect(page.locator("#health")).to_contain_text("Redis (cache, live state): down")
            _expect(page.locator("#providers-error")).to_contain_text("Redis is unavailable")
            _expect(page.get_by_role("heading", level=2, name="Providers")).to_be_visible()
            _go(page, "Keys")
            _expect(page.locator(f'#keys-table tr[data-key="{_prefix(admin_key)}"]')).to_be_visible()  # Postgres serves
            _go(page, "Providers")
            page.screenshot(path=str(SHOTS / "redis-down-desktop.png"), full_page=True)
        finally:
            page.close()


def test_locally_with_no_key_the_page_opens_without_one(browsing: Browsing, dash_settings: Settings) -> None:
    from functions.gateway import build_app

    open_access = dash_settings.model_copy(update={"OPEN_ACCESS": True})  # `orchesity serve` on loopback, no key yet
    with serve(build_app(settings=open_access), startup_timeout=30) as url:
        page = browsing.page.context.new_page()
        try:
            page.goto(f"{url}/dashboard#runs")
            _expect(page.get_by_role("heading", level=2, name="Runs")).to_be_visible()
            _expect(page.locator("#who")).to_contain_text("Open access")
            _expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
            _expect(page.get_by_label("Saved pipeline")).to_contain_text("three_steps")
        finally:
            page.close()
