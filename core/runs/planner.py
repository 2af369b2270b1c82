"""Intent inference: a goal in plain words becomes a pipeline.

A LangChain chat model (`ChatOpenAI`) pointed at Orchesity's own `/v1`, so the DWA routes
the planning call, the cache and the request log see it, and it counts against the
limits of the key that asked. "Pointed at" is in process: its HTTP client's transport
(`GatewayTransport`) answers `POST /v1/chat/completions` from the orchestrator, so no key,
URL or socket is needed for it, on a server or on Lambda alike.

The model answers with structured output (`with_structured_output(Plan, method=
"json_schema")`) of `Plan`: the pipeline model in the shape a model writes best, one
variant per step kind with exactly the fields that kind needs, turned into a `Pipeline`
by `Plan.pipeline()`. It is shown the registry's tools and the most similar successful
past runs (core/runs/knowledge.py) as examples. The plan is checked like any pipeline
(core/runs/pipeline.py); an invalid one goes back to the model once with the problems,
and if it is still invalid, RunInvalid lists them ("plan: …").

LangChain is imported here and only here, when a goal is planned.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.runs.pipeline import STEP_ID, Pipeline, PlanUnavailable, RunInvalid, parse

if TYPE_CHECKING:
    import httpx2

    from core.runs.knowledge import Similar
    from core.runs.submit import Caller
    from core.services import Services

log = logging.getLogger("orchesity.runs")

PLANNING_TIMEOUT_S = 60.0
ALL_STEP_FIELDS = ("id", "kind", "needs", "model", "instructions", "input", "tools", "max_iterations", "tool",
                   "arguments")


# --- what the model writes --------------------------------------------------------------------

class _PlanStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=STEP_ID, description="a short name for the step, unique in the plan",
                    examples=["answer"])
    needs: list[str] = Field(default_factory=list, description="ids of the steps that must end before this one")


class LlmPlanStep(_PlanStep):
    kind: Literal["llm"]
    prompt: str = Field(description="the prompt; {{ inputs.goal }} is the goal, {{ steps.<id>.output }} an "
                                    "earlier step's output", examples=["{{ inputs.goal }}"])


class ToolPlanStep(_PlanStep):
    kind: Literal["tool"]
    tool: str = Field(description="a tool's name, from the tools listed")
    arguments: dict[str, Any] = Field(default_factory=dict, description="the tool's arguments; values may be "
                                                                          "templates like {{ steps.a.output }}")


class AgentPlanStep(_PlanStep):
    kind: Literal["agent"]
    instructions: str = Field(description="what the agent is to do, as its system prompt")
    input: str = Field(description="its task", examples=["{{ inputs.goal }}"])
    tools: list[str] = Field(min_length=1, description="the names of the tools it may call")
    max_iterations: int = Field(default=6, ge=1, le=20)


class AggregatePlanStep(_PlanStep):
    kind: Literal["aggregate"]
    needs: list[str] = Field(min_length=1, description="the steps whose outputs are combined")
    instructions: str = Field(description="how to combine them")


class EvaluatePlanStep(_PlanStep):
    kind: Literal["evaluate"]
    needs: list[str] = Field(min_length=1, description="the steps whose outputs are judged against the goal")


PlanStep = Annotated[LlmPlanStep | AgentPlanStep | ToolPlanStep | AggregatePlanStep | EvaluatePlanStep,
                     Field(discriminator="kind")]


class Plan(BaseModel):
    """A pipeline for the goal: steps that run in order of their needs, the last one (or
    the last before an evaluate step) giving the answer."""

    model_config = ConfigDict(extra="forbid")

    steps: list[PlanStep] = Field(min_length=1, max_length=20, examples=[[
        {"id": "answer", "kind": "llm", "needs": [], "prompt": "{{ inputs.goal }}"},
        {"id": "judge", "kind": "evaluate", "needs": ["answer"]}]])

    def pipeline(self, name: str | None = None) -> dict[str, Any]:
        """The plan as a pipeline document (parse() then checks it like any other)."""
        steps = []
        for step in self.steps:
            fields = step.model_dump(exclude_none=True)
            if isinstance(step, LlmPlanStep):
                fields["messages"] = [{"role": "user", "content": fields.pop("prompt")}]
            if not fields.get("needs"):
                fields.pop("needs", None)
            steps.append(fields)
        return {"name": name, "steps": steps} if name else {"steps": steps}


def as_plan(pipeline: dict[str, Any]) -> dict[str, Any]:
    """A stored pipeline in the plan's shape (how examples are shown to the model)."""
    steps = []
    for step in pipeline.get("steps", []):
        shown = {k: v for k, v in step.items() if k in ALL_STEP_FIELDS and v not in (None, [], {})}
        if step.get("kind") == "llm":
            shown["prompt"] = "\n\n".join(m.get("content", "") for m in step.get("messages", []))
        if isinstance(shown.get("tool"), str):
            shown["tool"] = shown["tool"].split("@")[0]
        if isinstance(shown.get("tools"), list):
            shown["tools"] = [ref.split("@")[0] for ref in shown["tools"]]
        steps.append(shown)
    return {"steps": steps}


# --- the in-process /v1 -----------------------------------------------------------------------

def _transport(svc: Services, caller: Caller) -> httpx2.AsyncBaseTransport:
    import httpx2

    from core import openai_wire
    from core.tools.kinds import ToolFailed, chat

    class GatewayTransport(httpx2.AsyncBaseTransport):
        """POST /v1/chat/completions, answered by the orchestrator on behalf of `caller`."""

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            if request.method != "POST" or not request.url.path.endswith("/chat/completions"):
                return httpx2.Response(404, json={"error": {"message": f"{request.url.path} is not served here"}})
            body = json.loads(await request.aread())
            try:
                result = await chat(svc.orchestrator, body["messages"], model=body.get("model") or "auto",
                                    max_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
                                    temperature=body.get("temperature"), endpoint="run.plan", caller=caller.id,
                                    tenant=caller.tenant, limits=caller.limits, timeout=PLANNING_TIMEOUT_S,
                                    tools=body.get("tools"), response_format=body.get("response_format"))
            except ToolFailed as exc:
                status = 429 if exc.kind != "llm_error" else 502
                return httpx2.Response(status, json={"error": {"type": exc.kind, "message": exc.message}})
            return httpx2.Response(200, json=openai_wire.completion(result, body.get("model") or "auto"))

    return GatewayTransport()


# --- planning ---------------------------------------------------------------------------------

INSTRUCTIONS = """You plan pipelines for Orchesity, a workflow engine. Given a goal, answer with a plan:
steps of these kinds, each with exactly its fields:
- llm: one model call with a prompt;
- tool: one call of a tool below, with arguments matching its parameters;
- agent: a model that calls the tools it is given, in a loop, until it can answer;
- aggregate: combines the outputs of the steps it needs into one answer;
- evaluate: judges the outputs of the steps it needs against the goal (put one last).
Prompts, arguments, instructions and inputs are templates: {{ inputs.goal }} is the goal,
{{ inputs.<name> }} another input, {{ steps.<id>.output }} the output of an earlier step
(which must then be in its needs, or is added). Use only the tools listed, by name.
Keep plans short: the fewest steps that achieve the goal."""


def _reason(exc: Exception) -> str:
    body = getattr(exc, "body", None)  # an openai APIStatusError: the transport's error
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Planned:
    pipeline: Pipeline
    examples: list[str]  # the ids of the past runs shown as examples
    repaired: bool  # the first plan was invalid, and the model corrected it


async def _context(svc: Services, goal: str, caller: Caller, owner: str | None) -> tuple[str, list[Similar]]:
    from core.runs.knowledge import KnowledgeUnavailable, similar
    from core.tools.export import openai_tool

    tools = [openai_tool(entry)["function"] for entry in await svc.tools.entries() if entry.unavailable is None]
    examples: list[Similar] = []
    if svc.settings.PLANNER_EXAMPLES and svc.settings.KNOWLEDGE_BATCH:
        try:
            examples = await similar(svc, goal, limit=svc.settings.PLANNER_EXAMPLES, owned_by=owner, caller=caller)
        except KnowledgeUnavailable as exc:
            log.warning("planning without examples: %s", exc)
    lines = [INSTRUCTIONS, "", "Tools:", json.dumps(tools, separators=(",", ":")) if tools else "(none)"]
    if examples:
        lines += ["", "Plans that worked for similar goals (best first):"]
        lines += [json.dumps({"goal": e.goal, "plan": as_plan(e.pipeline)}, separators=(",", ":")) for e in examples]
    return "\n".join(lines), examples


async def plan(svc: Services, goal: str, inputs: dict[str, Any], *, caller: Caller,
               owner: str | None) -> Planned:
    """A checked pipeline for `goal`: RunInvalid when the plan, repaired once, is still
    invalid; PlanUnavailable when the model could not be asked. Examples come from
    `owner`'s runs (None: all)."""
    import httpx2
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    from core.runs.submit import pin

    system, examples = await _context(svc, goal, caller, owner)
    client = httpx2.AsyncClient(transport=_transport(svc, caller))
    model = ChatOpenAI(model=svc.settings.PLANNER_MODEL, base_url="http://orchesity.in-process/v1",
                       api_key="in-process", http_async_client=client, max_retries=0, timeout=PLANNING_TIMEOUT_S)
    planner = model.with_structured_output(Plan, method="json_schema", include_raw=True)
    named = ", ".join(sorted(inputs)) if inputs else "none besides the goal"
    messages: list[Any] = [SystemMessage(system), HumanMessage(f"Goal: {goal}\nInputs: {named}")]
    problems: list[str] = []
    try:
        for attempt in range(2):
            answer = await planner.ainvoke(messages)
            parsed, raw = answer.get("parsed"), answer.get("raw")
            try:
                if parsed is None:
                    raise RunInvalid([f"the answer is not a plan: {answer.get('parsing_error')}"])
                pipeline = await pin(svc, parse(parsed.pipeline()))
                return Planned(pipeline, [str(e.id) for e in examples], repaired=attempt > 0)
            except RunInvalid as exc:
                problems = exc.problems
            messages += [raw if isinstance(raw, AIMessage) else AIMessage(str(raw)),
                         HumanMessage("That plan cannot run:\n- " + "\n- ".join(problems)
                                      + "\nAnswer with a corrected plan.")]
    except RunInvalid:
        raise
    except Exception as exc:  # noqa: BLE001 - the model could not be reached, or the caller's limits refused it
        status = getattr(exc, "status_code", None)
        raise PlanUnavailable(429 if status == 429 else 503, _reason(exc)) from None
    finally:
        await client.aclose()
    raise RunInvalid([f"plan: {problem}" for problem in problems])

