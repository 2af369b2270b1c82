"""The steps of a run that think: `agent`, `aggregate` and `evaluate`.

Each is called by the executor with the step's rendered `instructions` / `input` and a
`save(partial, message, data)` that checkpoints its progress (executor.py).

An agent's loop runs through the gateway in OpenAI's tool-call format: a model turn, the
tool calls it asks for, their results back to it, until it answers without calling a
tool or `max_iterations` turns are spent. Its transcript is its checkpoint: saved after
every model turn and every tool call, and read back when the step runs again after a
crash, so a finished tool call is never repeated and an interrupted one is sent again
with the same idempotency key (`run:step:call id`). A tool that fails, or is called with
arguments its schema refuses, is not the step's failure: the model is told and may try
again, as a model calling tools expects.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from core import fastjson
from core.runs.executor import StepFailed

if TYPE_CHECKING:
    from core.runs.executor import Executor, RunState, Save
    from core.runs.pipeline import Step

AGENT_INSTRUCTIONS = "You are a careful assistant. Use the tools when they help, then answer."
AGGREGATE_INSTRUCTIONS = "Combine the results below into one complete, consistent answer to the task."
RESULT_CHARS = 8_000  # of each result shown to a model: enough to judge, short of its context

# The judge answers in this shape (Structured Outputs: every field required, no other).
JUDGEMENT = {"type": "json_schema", "json_schema": {"name": "judgement", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["score", "reason"],
    "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1,
                             "description": "how well the result achieves the goal, 0 (not at all) to 1 (fully)"},
                   "reason": {"type": "string", "description": "why, in one or two sentences"}}}}}


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else fastjson.dumps(value).decode()
    return text if len(text) <= RESULT_CHARS else text[:RESULT_CHARS] + " …[cut]"


def _results(state: RunState, step: Step) -> str:
    return "\n\n".join(f"## {name}\n{_text(state.steps[name].output)}" for name in step.needs)


# --- agent -----------------------------------------------------------------------------------


def _transcript(state: RunState, step: Step, rendered: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation so far: what the step saved before, or its opening."""
    saved = state.steps[step.id].output
    if isinstance(saved, dict) and isinstance(saved.get("messages"), list):
        return saved["messages"]
    task = rendered["input"] if rendered["input"] is not None else fastjson.dumps(state.inputs).decode()
    return [{"role": "system", "content": rendered["instructions"] or AGENT_INSTRUCTIONS},
            {"role": "user", "content": task}]


def _unanswered(transcript: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tool calls of the last model turn that have no result yet."""
    for index in range(len(transcript) - 1, -1, -1):
        message = transcript[index]
        if message["role"] == "assistant":
            answered = {m.get("tool_call_id") for m in transcript[index + 1:] if m["role"] == "tool"}
            return [call for call in message.get("tool_calls") or [] if call.get("id") not in answered]
    return []


async def _call(ex: Executor, state: RunState, step: Step, tools: dict[str, Any], call: dict[str, Any]) -> tuple[Any, bool]:
    """One tool call the model asked for: (what to tell it, whether the tool answered)."""
    from core.tools.invoke import ArgumentsInvalid, ToolUnavailable

    function = call.get("function") or {}
    entry = tools.get(function.get("name"))
    if entry is None:
        return {"error": f"there is no tool {function.get('name')!r}; the tools are {', '.join(tools)}"}, False
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except json.JSONDecodeError as exc:
        return {"error": f"the arguments are not JSON: {exc}"}, False
    if not isinstance(arguments, dict):
        return {"error": "the arguments must be a JSON object"}, False
    try:
        outcome = await ex.invoke_tool(state, entry, arguments, f"{state.id}:{step.id}:{call.get('id')}")
    except (ArgumentsInvalid, ToolUnavailable) as exc:
        return {"error": str(exc)}, False
    if outcome.status != "ok":
        return {"error": (outcome.error or {}).get("message", "the tool failed")}, False
    return outcome.result, True


async def agent(ex: Executor, state: RunState, step: Step, rendered: dict[str, Any], save: Save) -> Any:
    """The tool-calling loop (see the module's docstring); its final answer and its calls."""
    from core.tools.export import openai_tool

    tools = {}
    for ref in step.tools or []:
        entry = await ex.svc.tools.get(ref)
        tools[entry.tool.name] = entry
    offered = [openai_tool(entry) for entry in tools.values()]
    transcript = _transcript(state, step, rendered)
    turns = sum(1 for m in transcript if m["role"] == "assistant")
    while True:
        pending = _unanswered(transcript)
        for call in pending:
            told, ok = await _call(ex, state, step, tools, call)
            transcript.append({"role": "tool", "tool_call_id": call.get("id"), "content": _text(told)})
            name = (call.get("function") or {}).get("name")
            await save({"messages": transcript}, f"{name} {'answered' if ok else 'failed'}",
                       {"tool": name, "call": call.get("id"), "ok": ok})
        last = transcript[-1]
        if not pending and last["role"] == "assistant":  # it answered without calling a tool
            calls = [c["function"]["name"] for m in transcript if m["role"] == "assistant"
                     for c in m.get("tool_calls") or []]
            return {"text": last.get("content") or "", "turns": turns, "tool_calls": calls}
        if turns >= step.max_iterations:
            raise StepFailed("max_iterations", f"no answer after {turns} model turns (max_iterations)")
        result = await ex.chat(state, step, transcript, tools=offered or None)
        turns += 1
        message: dict[str, Any] = {"role": "assistant", "content": result.text or ""}
        if result.tool_calls:
            message["tool_calls"] = [{"id": c.get("id"), "type": "function", "function": c.get("function")}
                                     for c in result.tool_calls]
        transcript.append(message)
        asked = [c["function"]["name"] for c in message.get("tool_calls", [])]
        await save({"messages": transcript}, f"turn {turns}: " + (f"calls {', '.join(asked)}" if asked else "answered"),
                   {"turn": turns, "calls": asked})


# --- aggregate and evaluate ------------------------------------------------------------------


async def aggregate(ex: Executor, state: RunState, step: Step, rendered: dict[str, Any], save: Save) -> Any:
    """One answer combined from the outputs of the steps `step` needs."""
    goal = state.inputs.get("goal")
    task = f"Task: {goal}\n\n" if isinstance(goal, str) and goal else ""
    messages = [{"role": "system", "content": rendered["instructions"] or AGGREGATE_INSTRUCTIONS},
                {"role": "user", "content": f"{task}Results:\n\n{_results(state, step)}"}]
    return (await ex.chat(state, step, messages)).text


async def evaluate(ex: Executor, state: RunState, step: Step, rendered: dict[str, Any], save: Save) -> Any:
    """{"score": 0..1, "reason"}: how well the outputs of the steps `step` needs achieve the
    goal (its instructions, or the run's inputs.goal). The run's quality score."""
    goal = rendered["instructions"] or state.inputs.get("goal")
    if not isinstance(goal, str) or not goal.strip():
        raise StepFailed("no_goal", "an evaluate step needs instructions, or a run with inputs.goal, to judge against")
    messages = [{"role": "system", "content": "You judge results against a goal. Score 0 to 1, and say why."},
                {"role": "user", "content": f"Goal: {goal}\n\nResults:\n\n{_results(state, step)}"}]
    result = await ex.chat(state, step, messages, response_format=JUDGEMENT)
    try:
        judgement = json.loads(result.text or "")
        score, reason = float(judgement["score"]), str(judgement["reason"])
    except (ValueError, TypeError, KeyError) as exc:
        raise StepFailed("bad_judgement", f"the judge's answer is not {{score, reason}}: {exc}") from None
    if not 0 <= score <= 1:
        raise StepFailed("bad_judgement", f"the judge's score {score} is outside 0..1")
    return {"score": score, "reason": reason}
