"""Runs that plan and learn: agent steps (killed mid-loop and resumed), aggregate and
evaluate steps, goals planned into pipelines (offline on the simulated provider, and
against a provider faked at its HTTP boundary), and the knowledge base of runs.

Offline, the simulated provider answers tool calls and structured output by itself
(core/providers/simulated.py): offered tools [a, b], it calls a, then b, then answers.
"""

from __future__ import annotations

import asyncio
import subprocess
import json
import time
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from tests.conftest import ROOT, providers_file
from tests.test_runs import ORCHESITY, finished, gateway, start_run, submit_runs, wait_ended, worker


def _tool(name: str, url: str, delay: float) -> dict[str, Any]:
    """An http tool of the `effects` server that takes `delay` seconds, once per Idempotency-Key."""
    return {"name": name, "description": f"applies the {name} effect", "kind": "http",
            "http": {"method": "POST", "url": url + "/effect?delay={{ delay }}", "allow_hosts": ["localhost"]},
            "timeout": 30, "parameters": {"type": "object", "required": ["delay"], "additionalProperties": False,
                                          "properties": {"delay": {"type": "number", "const": delay}}}}


@pytest.fixture
def agent_env(worker_env: dict[str, str], effects: tuple[str, dict[str, Any]], tmp_path: Path) -> dict[str, str]:
    """The workers' settings with two more tools: `reserve` (quick) and `charge` (3 s)."""
    url, _ = effects
    path = Path(worker_env["ORCHESITY_TOOLS_FILE"])
    tools = json.loads(path.read_text())["tools"]
    mine = tmp_path / "agent_tools.json"
    mine.write_text(json.dumps({"tools": tools + [_tool("reserve", url, 0.0), _tool("charge", url, 3.0)]}))
    return {**worker_env, "ORCHESITY_TOOLS_FILE": str(mine), "SIMULATED_LATENCY_MS": "2",
            "SIMULATED_MS_PER_TOKEN": "0"}


AGENT = {"id": "book", "kind": "agent", "instructions": "Reserve, then charge, then confirm.",
         "input": "Book {{ inputs.what }}", "tools": ["reserve", "charge"], "max_iterations": 5}


async def test_an_agent_killed_after_its_first_tool_call_resumes_without_calling_it_again(
        agent_env: dict[str, str], effects: tuple[str, dict[str, Any]]) -> None:
    _, seen = effects
    svc, [run_id] = await submit_runs(agent_env, [{"pipeline": {"steps": [AGENT]}, "inputs": {"what": "a room"}}])
    try:
        with worker(agent_env) as first:
            end = time.monotonic() + 30
            while not (len(seen["requests"]) == 2 and seen["requests"][1]["end"] is None):
                assert first.poll() is None and time.monotonic() < end, f"the agent never reached charge: {seen}"
                await asyncio.sleep(0.02)
            first.kill()  # SIGKILL while `charge` is under way: reserve is done and checkpointed
            first.wait()
        with worker(agent_env):
            shown = (await wait_ended(svc, [run_id], timeout=30))[run_id]
        from core.progress import events_after

        events = await events_after(svc.db, svc.kv, run_id)
    finally:
        await svc.close()
    assert shown["status"] == "succeeded", shown
    output = shown["result"]["output"]
    assert output["tool_calls"] == ["reserve", "charge"] and output["text"]
    by_key: dict[str, list[dict[str, Any]]] = {}
    for request in seen["requests"]:
        by_key.setdefault(request["key"], []).append(request)
    reserve, charge = sorted(by_key.values(), key=lambda rs: rs[0]["start"])
    assert len(reserve) == 1  # the finished call was not repeated
    assert len(charge) == 2 and seen["applied"][charge[0]["key"]] == 1  # the interrupted one: same key, once
    progress = [e.message for e in events if e.type == "step.progress"]
    assert progress[:2] == ["book: turn 1: calls reserve", "book: reserve answered"]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_aggregate_and_evaluate_steps_give_the_run_its_answer_and_quality_score(
        runs_settings: Settings) -> None:
    body = {"goal": "Name two colours", "pipeline": {"steps": [
        {"id": "a", "kind": "llm", "messages": [{"role": "user", "content": "One colour for: {{ inputs.goal }}"}]},
        {"id": "b", "kind": "llm", "messages": [{"role": "user", "content": "Another colour: {{ inputs.goal }}"}]},
        {"id": "both", "kind": "aggregate", "needs": ["a", "b"], "instructions": "List both colours."},
        {"id": "judge", "kind": "evaluate", "needs": ["both"]}]}}
    with gateway(runs_settings) as client:
        started = (await start_run(client, body)).json()
        run = await finished(client, started["status_url"])
    assert run["status"] == "succeeded", run
    judged = run["result"]["steps"]["judge"]
    assert 0 <= judged["score"] <= 1 and judged["reason"]
    assert run["result"]["output"] == run["result"]["steps"]["both"]  # the answer, not the judgement
    assert run["goal"] == "Name two colours"
    assert run["quality"]["score"] == pytest.approx(judged["score"]) == run["quality"]["judge_score"]


async def test_an_agent_step_is_checked_before_the_run_exists(runs_settings: Settings) -> None:
    steps = [{"id": "a", "kind": "agent", "instructions": "x", "tools": ["text_stats", "no_such_tool"]},
             {"id": "b", "kind": "agent", "instructions": "x"},
             {"id": "c", "kind": "evaluate", "needs": []},
             {"id": "d", "kind": "aggregate", "needs": ["a"], "tools": ["text_stats"]}]
    with gateway(runs_settings) as client:
        answers = [await start_run(client, {"pipeline": {"steps": [step]}}) for step in steps]
    assert [a.status_code for a in answers] == [422] * 4
    details = [a.json()["error"]["details"] for a in answers]
    assert details[0] == ["steps[0] ('a'): tools[1]: there is no tool 'no_such_tool'"] or \
        details[0][0].startswith("steps[0] ('a'): tools[1]:")
    assert details[1][0].startswith("steps[0] ('b'): tools: a step of kind 'agent' needs it")
    assert details[2][0].startswith("steps[0] ('c'): needs: a step of kind 'evaluate' needs it")
    assert details[3][0].startswith("steps[0] ('d'): tools: a step of kind 'aggregate' takes no tools")


# --- planning a goal ------------------------------------------------------------------------------

async def test_a_goal_is_planned_and_run_end_to_end_offline(runs_settings: Settings) -> None:
    with gateway(runs_settings) as client:
        dry = await start_run(client, {"goal": "Write a haiku about autumn", "dry_run": True})
        started = await start_run(client, {"goal": "Write a haiku about autumn"})
        assert started.status_code == 202, started.text
        run = await finished(client, started.json()["status_url"])
    assert dry.status_code == 200, dry.text
    planned = dry.json()["pipeline"]
    assert planned["steps"] and all(step["kind"] in ("llm", "tool", "agent", "aggregate", "evaluate")
                                    for step in planned["steps"])
    assert started.json()["planned"]["pipeline"] == planned  # the same goal, the same plan
    assert run["status"] == "succeeded", run
    assert run["goal"] == "Write a haiku about autumn" and run["result"]["output"]


def _plan_reply(steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": "chatcmpl-plan", "object": "chat.completion", "created": 1, "model": "planner-model",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": json.dumps({"steps": steps})}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}


UNKNOWN_TOOL = [{"id": "look", "kind": "tool", "tool": "crystal_ball", "needs": [], "arguments": {}}]
FIXED = [{"id": "answer", "kind": "llm", "needs": [], "prompt": "{{ inputs.goal }}"}]


@pytest.mark.parametrize("second", [FIXED, UNKNOWN_TOOL])
async def test_a_plan_naming_an_unknown_tool_is_repaired_once_or_refused_with_the_reasons(
        httpx_mock: Any, open_gateway: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        second: list[dict[str, Any]]) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-planner")
    httpx_mock.add_response(url="https://planner.example/v1/chat/completions", json=_plan_reply(UNKNOWN_TOOL))
    httpx_mock.add_response(url="https://planner.example/v1/chat/completions", json=_plan_reply(second))
    path = providers_file(tmp_path, [{"name": "planner", "provider": "openai", "model": "planner-model",
                                      "base_url": "https://planner.example/v1", "api_key_env": "OPENAI_API_KEY"}])
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, PLANNER_EXAMPLES=0) as gw:
        answer = await gw.client.post("/api/runs", json={"goal": "Predict tomorrow", "dry_run": True})
    asked = [json.loads(r.content) for r in httpx_mock.get_requests()]
    assert len(asked) == 2
    assert asked[0]["response_format"]["type"] == "json_schema"  # structured output of the plan model
    assert "text_stats" in asked[0]["messages"][0]["content"]  # shown the registry's tools
    repair = asked[1]["messages"][-1]["content"]
    assert "steps[0] ('look'): tool:" in repair and "crystal_ball" in repair  # told why
    if second is FIXED:
        assert answer.status_code == 200, answer.text
        assert answer.json()["planned"]["repaired"] is True
        assert answer.json()["pipeline"]["steps"][0]["messages"][0]["content"] == "{{ inputs.goal }}"
    else:
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["details"][0].startswith("plan: steps[0] ('look'): tool:")


def test_orchesity_run_plans_a_goal_shows_the_plan_and_follows_it(agent_env: dict[str, str]) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ORCHESITY, "run", *args], env=agent_env, cwd=ROOT, capture_output=True, text=True,
                              timeout=90)

    ran, dry, neither = cli("Write a haiku about autumn"), cli("Write a haiku", "--dry-run"), cli()
    assert ran.returncode == 0 and ran.stdout.startswith("succeeded"), ran.stdout + ran.stderr
    assert "plan" in ran.stderr and "answer" in ran.stderr and "evaluate" in ran.stderr  # the plan, shown
    assert dry.returncode == 0 and json.loads(dry.stdout)["steps"][0]["messages"], dry.stdout + dry.stderr
    assert neither.returncode != 0 and "give a pipeline, a named pipeline, or a goal" in neither.stderr


# --- the knowledge base ---------------------------------------------------------------------------

# What the faked embedding provider answers, by a word of the text (the goal's) or the
# query; any other text (the other tests' runs, embedded again by this model) is opposite.
VECTORS = {"red": [1.0, 0.1, 0.0], "blue": [1.0, 0.3, 0.0], "bread": [0.0, 0.0, 1.0], "QUERY": [1.0, 0.0, 0.0]}
OTHER = [-1.0, 0.0, 0.0]


def _embedding_reply(request: Any) -> Any:
    import httpx2

    texts = json.loads(request.content)["input"]
    vectors = [next((v for word, v in VECTORS.items() if word in text), OTHER) for text in texts]
    return httpx2.Response(200, json={
        "object": "list", "model": "embed-model", "usage": {"prompt_tokens": 3, "total_tokens": 3},
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]})


async def test_similar_runs_are_the_nearest_vectors_and_feedback_changes_their_ranking(
        httpx_mock: Any, open_gateway: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-embed")
    httpx_mock.add_callback(_embedding_reply, url="https://embed.example/v1/embeddings", is_reusable=True)
    path = providers_file(tmp_path, [
        {"name": "chat", "kind": "simulated", "simulation": {"latency_ms": 1, "ms_per_token": 0, "jitter": 0}},
        {"name": "embedder", "provider": "openai", "model": "embed-model", "serves": ["embeddings"],
         "base_url": "https://embed.example/v1", "api_key_env": "OPENAI_API_KEY"}])
    step = {"id": "a", "kind": "llm", "messages": [{"role": "user", "content": "{{ inputs.goal }}"}]}
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, EMBEDDING_MODEL="embedder") as gw:
        ids = {}
        for goal in ("paint the fence red", "paint the fence blue", "bake bread"):
            started = (await gw.client.post("/api/runs", json={"goal": goal, "pipeline": {"steps": [step]}})).json()
            ids[goal.split()[-1]] = started["id"]
            assert (await finished(gw.client, started["status_url"]))["status"] == "succeeded"
        before = (await gw.client.get("/api/runs/similar", params={"q": "QUERY", "limit": 3})).json()
        rated = [await gw.client.post(f"/api/runs/{ids[name]}/feedback", json={"rating": rating, "comment": name})
                 for name, rating in (("red", 1), ("blue", 5))]
        after = (await gw.client.get("/api/runs/similar", params={"q": "QUERY", "limit": 2})).json()
        planned = (await gw.client.post("/api/runs", json={"goal": "QUERY: paint it", "dry_run": True})).json()
        bad = [await gw.client.post(f"/api/runs/{ids['red']}/feedback", json=body)
               for body in ({"rating": 6}, {"rating": 3, "surprise": 1}, {})]
        blank = await gw.client.get("/api/runs/similar", params={"q": " "})
    assert [r["id"] for r in before["runs"]] == [ids["red"], ids["blue"], ids["bread"]]  # nearest first
    assert before["runs"][0]["similarity"] == pytest.approx(0.995037, abs=1e-5)
    assert before["runs"][0]["pipeline"]["steps"][0]["id"] == "a" and before["runs"][0]["goal"] == "paint the fence red"
    assert [r.status_code for r in rated] == [200, 200] and rated[1].json()["quality_score"] == 1.0
    assert [r["id"] for r in after["runs"]] == [ids["blue"], ids["red"]]  # the well-rated one now comes first
    assert after["runs"][0]["feedback"] == {"rating": 5, "comment": "blue"}
    assert planned["planned"]["examples"][:2] == [ids["blue"], ids["red"]]  # the planner's examples, best first
    assert [r.status_code for r in bad] == [422, 422, 422] and blank.status_code == 422
    sent = [json.loads(r.content) for r in httpx_mock.get_requests()]
    assert all(body["model"] == "embed-model" for body in sent)


async def test_a_change_of_embedding_model_loses_no_run_and_reembeds_them(open_gateway: Any, tmp_path: Path) -> None:
    def sim(name: str, model: str, dims: int) -> dict[str, Any]:
        return {"name": name, "kind": "simulated", "simulation": {
            "latency_ms": 1, "ms_per_token": 0, "jitter": 0, "embedding_model": model, "embedding_dimensions": dims}}

    path = providers_file(tmp_path, [sim("small", "tiny-embed", 16), sim("large", "wide-embed", 48)])
    step = {"id": "a", "kind": "llm", "messages": [{"role": "user", "content": "{{ inputs.goal }}"}]}
    goal = "sort the marbles by colour"
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, EMBEDDING_MODEL="small", OPEN_ACCESS=False) as gw:
        from core.auth import create_key

        key, _ = await create_key(gw.services.db, name="learner", scopes=["runs"], created_by="test")
        mine = {"authorization": f"Bearer {key}"}  # a key sees only its own runs
        started = (await gw.client.post("/api/runs", json={"goal": goal, "pipeline": {"steps": [step]}},
                                        headers=mine)).json()
        await finished(gw.client, started["status_url"])
        first = (await gw.client.get("/api/runs/similar", params={"q": goal}, headers=mine)).json()
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, EMBEDDING_MODEL="large", OPEN_ACCESS=False) as gw:
        second = (await gw.client.get("/api/runs/similar", params={"q": goal}, headers=mine)).json()
        from sqlalchemy import text

        async with gw.services.db.engine.connect() as conn:
            row = (await conn.execute(text("SELECT embedding_model, vector_dims(embedding) AS dims FROM runs "
                                           "WHERE id = :id"), {"id": started["id"]})).one()
            indexes = (await conn.scalars(text(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'runs' AND indexname LIKE 'ix_runs_embedding_%'"
            ))).all()
    assert [r["id"] for r in first["runs"]] == [started["id"]]
    assert [r["id"] for r in second["runs"]] == [started["id"]]  # found again, embedded by the new model
    assert (row.embedding_model, row.dims) == ("wide-embed", 48)
    assert any("vector(16)" in i and "tiny-embed" in i for i in indexes)
    assert any("vector(48)" in i and "wide-embed" in i and "hnsw" in i for i in indexes)


async def test_a_planning_model_that_fails_is_a_503_naming_the_goal_and_stores_nothing(
        httpx_mock: Any, open_gateway: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-planner")
    httpx_mock.add_response(url="https://planner.example/v1/chat/completions", status_code=500,
                            json={"error": {"message": "upstream exploded"}}, is_reusable=True)
    path = providers_file(tmp_path, [{"name": "planner", "provider": "openai", "model": "planner-model",
                                      "base_url": "https://planner.example/v1", "api_key_env": "OPENAI_API_KEY"}])
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path, PLANNER_EXAMPLES=0) as gw:
        from sqlalchemy import text

        async def runs() -> int:
            async with gw.services.db.engine.connect() as conn:
                return await conn.scalar(text("SELECT count(*) FROM runs"))

        before = await runs()
        answer = await gw.client.post("/api/runs", json={"goal": "Predict tomorrow"})
        after = await runs()
    assert answer.status_code == 503, answer.text
    error = answer.json()["error"]
    assert error["param"] == "goal" and error["code"] == "planner_unavailable" and "sk-test-planner" not in answer.text
    assert after == before  # nothing stored


async def test_an_agent_is_told_of_a_failing_tool_and_goes_on_and_max_iterations_bounds_it(
        runs_settings: Settings, tmp_path: Path) -> None:
    tools = json.loads((ROOT / "tools.json").read_text())["tools"]
    broken = {"name": "flaky_lookup", "description": "always fails", "kind": "python",
              "python": {"entry": "tests.tool_functions:broken"},
              "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}
    path = tmp_path / "tools.json"
    path.write_text(json.dumps({"tools": [*tools, broken]}))
    agent = {"id": "look", "kind": "agent", "instructions": "Look it up, then count it.", "input": "hello world",
             "tools": ["flaky_lookup", "text_stats"]}
    with gateway(runs_settings, ORCHESITY_TOOLS_FILE=path) as client:
        told = await finished(client, (await start_run(client, {"pipeline": {"steps": [agent]}})).json()["status_url"])
        bounded = (await start_run(client, {"pipeline": {"steps": [{**agent, "max_iterations": 1}]}})).json()
        cut = await finished(client, bounded["status_url"])
        events = (await client.get(bounded["events_url"])).json()["events"]
    assert told["status"] == "succeeded", told
    assert told["result"]["output"]["tool_calls"] == ["flaky_lookup", "text_stats"]  # the failure did not end it
    assert cut["status"] == "failed" and cut["error"]["type"] == "max_iterations", cut
    assert "look: flaky_lookup failed" in [e["message"] for e in events]


async def test_without_an_embeddings_model_similar_runs_is_a_503_and_planning_goes_on(
        open_gateway: Any, tmp_path: Path) -> None:
    path = providers_file(tmp_path, [{"name": "chat_only", "kind": "simulated", "serves": ["chat"],
                                      "simulation": {"latency_ms": 1, "ms_per_token": 0, "jitter": 0}}])
    async with open_gateway(ORCHESITY_PROVIDERS_FILE=path) as gw:
        similar = await gw.client.get("/api/runs/similar", params={"q": "haiku"})
        planned = await gw.client.post("/api/runs", json={"goal": "Write a haiku", "dry_run": True})
    assert similar.status_code == 503, similar.text
    assert similar.json()["error"]["code"] == "embeddings_unavailable" and "embeddings" in similar.text
    assert planned.status_code == 200 and planned.json()["planned"]["examples"] == []  # planned without examples
