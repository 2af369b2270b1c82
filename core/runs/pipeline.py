"""A pipeline: the steps of a run, checked before the run exists.

    {"steps": [
        {"id": "a", "kind": "llm", "messages": [{"role": "user", "content": "Summarise: {{ inputs.text }}"}]},
        {"id": "b", "kind": "tool", "tool": "text_stats", "arguments": {"text": "{{ steps.a.output.text }}"}}
    ]}

Step kinds:
- `llm`: a messages template, routed through the gateway's orchestrator (the DWA picks);
- `tool`: a registry tool (`name` or `name@version`) called with `arguments`;
- `python`: an entry point under ORCHESITY_TOOL_MODULES, called with the `arguments`;
- `agent`: a tool-calling loop: `instructions` (the system prompt) and `input` (the
  task; the run's inputs as JSON without it), the registry `tools` it may call, at most
  `max_iterations` model turns; every turn and every tool call is checkpointed, so a
  resumed agent never repeats a call that finished;
- `aggregate`: one answer combined by an LLM from the outputs of the steps it `needs`;
- `evaluate`: an LLM judge scores the outputs of the steps it `needs` against the goal
  (`instructions`, or the run's `inputs.goal`): `{"score": 0..1, "reason": …}`, which
  becomes the run's quality score.
Arguments, messages, instructions and input are templates of core/templates.py over
`{"inputs": …, "steps": {id: {"output": …}}}`: no code runs in them. A step runs once
every step it `needs` (or refers to) has ended; independent steps run concurrently.
Each step has a `timeout`, `retries` (exponential backoff from `backoff_seconds`, with
jitter) and `on_error`: `fail` ends the run, `continue` lets the steps after it run
(its output is then null).

`check(pipeline, registry)` refuses, with every problem naming the step and the field:
a reference to a step that does not exist, a cycle, an unknown tool (of a tool or an agent step), a python entry
point outside the allowed modules, a tool pair the tools' compatibility rule refuses;
`check_inputs(pipeline, inputs)` a placeholder of the run's inputs that they do not hold.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core import templates

if TYPE_CHECKING:
    from core.settings import Settings
    from core.tools.registry import Entry, ToolRegistry

STEP_ID = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"


Kind = Literal["llm", "tool", "python", "agent", "aggregate", "evaluate"]
# What each kind needs, and which kinds take each field (any other kind refusing it).
_NEEDED = {"llm": "messages", "tool": "tool", "python": "entry", "agent": "tools", "aggregate": "needs",
           "evaluate": "needs"}
_TAKEN_BY = {"messages": ("llm",), "tool": ("tool",), "entry": ("python",), "tools": ("agent",),
             "input": ("agent",), "instructions": ("agent", "aggregate", "evaluate")}


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=STEP_ID, examples=["step_1"])
    kind: Kind
    needs: list[str] = Field(default_factory=list)
    timeout: float = Field(default=120.0, gt=0, le=3600)
    retries: int = Field(default=0, ge=0, le=10)
    backoff_seconds: float = Field(default=1.0, ge=0, le=600)
    on_error: Literal["fail", "continue"] = "fail"
    # the kinds that call a model (llm, agent, aggregate, evaluate)
    messages: list[dict[str, str]] | None = None
    model: str = "auto"
    max_tokens: int | None = Field(default=None, ge=1, le=100_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    instructions: str | None = Field(default=None, max_length=20_000)
    # agent
    tools: list[str] | None = Field(default=None, max_length=32)
    input: str | None = Field(default=None, max_length=20_000)
    max_iterations: int = Field(default=8, ge=1, le=50)
    # tool / python
    tool: str | None = None
    entry: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$")
    arguments: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _fields_of_its_kind(self) -> Step:
        wanted = _NEEDED[self.kind]
        if getattr(self, wanted) in (None, []):
            raise ValueError(f"{wanted}: a step of kind {self.kind!r} needs it")
        for name, kinds in _TAKEN_BY.items():
            if getattr(self, name) is not None and self.kind not in kinds:
                raise ValueError(f"{name}: a step of kind {self.kind!r} takes no {name}")
        if self.arguments and self.kind not in ("tool", "python"):
            raise ValueError(f"arguments: a step of kind {self.kind!r} takes no arguments")
        return self

    def template(self) -> Any:
        """What is rendered over the run's context before the step runs."""
        if self.kind == "llm":
            return self.messages
        if self.kind in ("tool", "python"):
            return self.arguments
        return {"instructions": self.instructions, "input": self.input}

    def template_field(self) -> str:
        """The field `template` comes from, for error messages."""
        return {"llm": "messages", "tool": "arguments", "python": "arguments"}.get(self.kind, "instructions")

    def referenced_steps(self) -> set[str]:
        """The steps this step's templates read (`steps.<id>…`)."""
        found = set()
        for path in templates.references(self.template()):
            head, _, rest = path.partition(".")
            if head == "steps" and rest:
                found.add(rest.split(".")[0])
        return found

    def dependencies(self) -> set[str]:
        return set(self.needs) | self.referenced_steps()


class Pipeline(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, max_length=128)
    version: str | None = Field(default=None, max_length=32)
    steps: list[Step] = Field(min_length=1, max_length=100)

    @property
    def digest(self) -> str:
        """A hash of the pipeline: what a run pinned, whatever its name says."""
        canonical = json.dumps(self.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def by_id(self) -> dict[str, Step]:
        return {step.id: step for step in self.steps}

    def index(self) -> dict[str, int]:
        """Each step's position in the pipeline, by id."""
        return {step.id: i for i, step in enumerate(self.steps)}

    def order(self) -> list[str]:
        """The step ids in an order where every step comes after what it depends on."""
        steps, done, order = self.by_id(), set(), []
        while len(order) < len(steps):
            ready = [s for s in steps if s not in done and steps[s].dependencies() <= done]
            if not ready:  # check() refuses cycles; a pipeline here has none
                raise ValueError("the steps depend on each other in a cycle")
            order += ready
            done |= set(ready)
        return order


class RunInvalid(ValueError):
    """The run cannot start; `problems` has each reason, naming where: "steps[i] ('id'):
    field: message" for a pipeline's, "callback_url: …" for the request's."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class PlanUnavailable(RuntimeError):
    """A goal could not be planned (core/runs/planner.py): the planning model failed, or
    the caller's key is over a limit (`status` 429; 503 otherwise). Nothing is wrong
    with the request itself."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse(document: Any) -> Pipeline:
    """A pipeline from JSON; RunInvalid with every problem the model finds."""
    from pydantic import ValidationError

    try:
        return Pipeline.model_validate(document)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            loc = list(error.get("loc", ()))
            where = ""
            if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
                steps = document.get("steps") if isinstance(document, dict) else None
                step_id = steps[loc[1]].get("id") if isinstance(steps, list) and loc[1] < len(steps) \
                    and isinstance(steps[loc[1]], dict) else None
                where = f"steps[{loc[1]}]" + (f" ({step_id!r})" if isinstance(step_id, str) else "")
                loc = loc[2:]
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            if error.get("type") == "extra_forbidden":
                message = "unknown field"
            elif error.get("type") == "missing":
                message = "required"
            field = ".".join(map(str, loc))
            problems.append(": ".join(part for part in (where, field, message) if part))
        raise RunInvalid(problems) from None


def check_inputs(pipeline: Pipeline, inputs: Mapping[str, Any]) -> None:
    """RunInvalid naming each `{{ inputs.… }}` placeholder that names nothing in `inputs`:
    the step reading it would fail the run, so the run is refused before it starts."""
    problems: dict[str, str] = {}
    context = {"inputs": inputs}
    for index, step in enumerate(pipeline.steps):
        for path in templates.references(step.template()):
            if path.startswith("inputs.") and path not in problems:
                try:
                    templates.lookup(context, path)
                except templates.TemplateError:
                    problems[path] = (f"inputs: steps[{index}] ({step.id!r}) reads {{{{ {path} }}}}, which the "
                                      "run's inputs do not hold")
    if problems:
        raise RunInvalid(list(problems.values()))


async def check(pipeline: Pipeline, registry: ToolRegistry, settings: Settings) -> dict[str, Entry]:
    """Every problem that would stop the pipeline, at once (RunInvalid); else the
    registry entries its tool steps resolve to, by step id (an agent's i-th tool under
    "<step id>.tools[i]")."""
    from core.tools.compat import check as compatible
    from core.tools.registry import ToolNotFound

    problems: list[str] = []
    steps = pipeline.by_id()
    labels = {step.id: f"steps[{i}] ({step.id!r})" for i, step in enumerate(pipeline.steps)}
    if len(steps) != len(pipeline.steps):
        seen: set[str] = set()
        for step in pipeline.steps:
            if step.id in seen:
                problems.append(f"{labels[step.id]}: id: another step has this id")
            seen.add(step.id)
    entries: dict[str, Entry] = {}
    for step in pipeline.steps:
        label = labels[step.id]
        try:
            paths = list(templates.references(step.template()))
        except templates.TemplateError as exc:
            problems.append(f"{label}: {step.template_field()}: {exc}")
            paths = []
        for path in paths:
            head, _, rest = path.partition(".")
            if head not in ("inputs", "steps"):
                problems.append(f"{label}: {{{{ {path} }}}}: a template reads inputs.… or steps.<id>.output…")
            elif head == "steps" and rest.split(".")[0] not in steps:
                problems.append(f"{label}: {{{{ {path} }}}}: there is no step {rest.split('.')[0]!r}")
            elif head == "steps" and rest.split(".")[0] == step.id:
                problems.append(f"{label}: {{{{ {path} }}}}: a step cannot read its own output")
        for need in step.needs:
            if need not in steps:
                problems.append(f"{label}: needs: there is no step {need!r}")
        if step.kind == "tool":
            try:
                entries[step.id] = await registry.get(step.tool or "")
            except ToolNotFound as exc:
                problems.append(f"{label}: tool: {exc}")
        for index, ref in enumerate(step.tools or []):
            try:
                entries[f"{step.id}.tools[{index}]"] = await registry.get(ref)
            except ToolNotFound as exc:
                problems.append(f"{label}: tools[{index}]: {exc}")
        if step.kind == "python":
            module = (step.entry or "").partition(":")[0]
            allowed = settings.tool_module_prefixes
            if not any(module == p or module.startswith(p + ".") for p in allowed):
                problems.append(f"{label}: entry: {module} is not under an allowed module prefix "
                                f"({', '.join(allowed)}; ORCHESITY_TOOL_MODULES)")
    if not problems:
        cycle = _cycle(steps)
        if cycle:
            problems.append(f"{labels[cycle[0]]}: needs: the steps {' -> '.join(cycle)} depend on each other in a cycle")
    for step_id, entry in entries.items():  # the seed's rule, for each tool step fed by another
        if step_id not in steps:
            continue  # an agent's tool: the model, not a template, feeds it
        for upstream_id in steps[step_id].referenced_steps():
            upstream = entries.get(upstream_id)
            if upstream is not None:
                refusal = compatible(upstream.tool, entry.tool)
                if refusal:
                    problems.append(f"{labels[step_id]}: tool: {refusal}")
    if problems:
        raise RunInvalid(problems)
    return entries


def _cycle(steps: dict[str, Step]) -> list[str] | None:
    """A dependency cycle among `steps`, as the ids around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(step_id: str) -> list[str] | None:
        state[step_id] = 1
        path.append(step_id)
        for dependency in sorted(steps[step_id].dependencies()):
            if dependency not in steps:
                continue
            if state.get(dependency) == 1:
                return path[path.index(dependency):] + [dependency]
            if state.get(dependency) is None:
                found = visit(dependency)
                if found:
                    return found
        path.pop()
        state[step_id] = 2
        return None

    for step_id in steps:
        if state.get(step_id) is None:
            found = visit(step_id)
            if found:
                return found
    return None
