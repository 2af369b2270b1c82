"""OpenAI's Responses API in terms of the chat flow: a create request as a ChatRequest,
and a Result (or the Chunks of a stream) as a Response object (or its stream events).

What translates (anything else is refused with the parameter named, never dropped):

- `input`: a string (one user message) or a list of items:
  - `message` (role user, assistant, system or developer; content a string or parts:
    `input_text`, `output_text`, `refusal` as text, `input_image` by URL) -> a chat
    message; developer becomes system, which every OpenAI-compatible server knows;
  - `function_call` -> a tool call of an assistant message (consecutive calls, and calls
    right after an assistant message, join that message: parallel calls);
  - `function_call_output` -> a tool message; its `call_id` must answer a function_call
    earlier in the conversation.
- `instructions` -> a system message ahead of everything (never stored, so never
  carried over to a continuation, as in OpenAI's API).
- `tools`: function tools, Responses' flat `{"type": "function", "name", ...}` -> chat's
  `{"type": "function", "function": {...}}`. Built-in tools (web_search, file_search,
  computer, ...) have nothing behind them here and are refused by type.
- `tool_choice` none/auto/required, or `{"type": "function", "name"}`.
- `text.format` json_schema / json_object -> `response_format`; text -> none.
- The answer: a `message` item with one `output_text` part when there is text (or
  nothing else), then a `function_call` item per tool call. finish_reason "length" ->
  status incomplete (max_output_tokens), "content_filter" -> incomplete (content_filter).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.json_schema import schema_problem
from core.providers.base import ChatRequest, Chunk, Usage

if TYPE_CHECKING:
    from core.orchestrator import Result

ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text")


class InvalidRequest(ValueError):
    """A create request the gateway cannot act on; `param` names what is wrong."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# -- the request -----------------------------------------------------------------------------


def _text_of(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(param, f"{param} must be a string")
    return value


def _part(part: Any, param: str) -> dict[str, Any]:
    """One content part of a message, in its stored form."""
    if not isinstance(part, dict):
        raise InvalidRequest(param, f"{param} must be an object with a type")
    kind = part.get("type")
    if kind in TEXT_PARTS:
        return {"type": kind, "text": _text_of(part.get("text"), f"{param}.text")}
    if kind == "refusal":
        return {"type": "refusal", "refusal": _text_of(part.get("refusal"), f"{param}.refusal")}
    if kind == "input_image":
        if part.get("file_id"):
            raise InvalidRequest(f"{param}.file_id", "images by file_id are not supported (there is no files "
                                                     "API here): give image_url, a URL or a data: URL")
        image = {"type": "input_image", "image_url": _text_of(part.get("image_url"), f"{param}.image_url")}
        if part.get("detail") is not None:
            image["detail"] = _text_of(part["detail"], f"{param}.detail")
        return image
    raise InvalidRequest(f"{param}.type", f"content part type {kind!r} is not supported; use input_text, "
                                          "output_text, refusal or input_image")


def _item(item: Any, param: str) -> dict[str, Any]:
    """One input item, checked, in its stored form (only the fields that matter)."""
    if not isinstance(item, dict):
        raise InvalidRequest(param, f"{param} must be an object")
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        if role not in ROLES:
            raise InvalidRequest(f"{param}.role", f"role {role!r} is not one of {', '.join(ROLES)}")
        content = item.get("content")
        if isinstance(content, list):
            content = [_part(p, f"{param}.content[{i}]") for i, p in enumerate(content)]
        elif not isinstance(content, str):
            raise InvalidRequest(f"{param}.content", "content must be a string or a list of content parts")
        return {"type": "message", "role": role, "content": content}
    if kind == "function_call":
        stored = {"type": "function_call",
                  "call_id": _text_of(item.get("call_id"), f"{param}.call_id"),
                  "name": _text_of(item.get("name"), f"{param}.name"),
                  "arguments": _text_of(item.get("arguments"), f"{param}.arguments")}
        if isinstance(item.get("id"), str):
            stored["id"] = item["id"]
        return stored
    if kind == "function_call_output":
        output = item.get("output")
        if isinstance(output, list):
            for i, part in enumerate(output):
                if not isinstance(part, dict) or part.get("type") != "input_text":
                    raise InvalidRequest(f"{param}.output[{i}]", "only input_text parts are supported in a "
                                                                  "function_call_output")
            output = "".join(_text_of(p.get("text"), f"{param}.output[{i}].text") for i, p in enumerate(output))
        return {"type": "function_call_output", "call_id": _text_of(item.get("call_id"), f"{param}.call_id"),
                "output": _text_of(output, f"{param}.output")}
    raise InvalidRequest(f"{param}.type", f"input item type {kind!r} is not supported; use message, "
                                          "function_call or function_call_output")


def input_items(value: str | list[Any]) -> list[dict[str, Any]]:
    """The items of `input` (a string is one user message), checked, in their stored form."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not value:
        raise InvalidRequest("input", "input is empty")
    return [_item(item, f"input[{i}]") for i, item in enumerate(value)]


def _chat_content(content: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        if part["type"] == "input_image":
            image = {"url": part["image_url"], **({"detail": part["detail"]} if "detail" in part else {})}
            parts.append({"type": "image_url", "image_url": image})
        else:
            parts.append({"type": "text", "text": part.get("text", part.get("refusal", ""))})
    if all(p["type"] == "text" for p in parts):  # text only: one string, what every server reads
        return "".join(p["text"] for p in parts)
    return parts


def chat_messages(prior: list[dict[str, Any]], items: Iterable[dict[str, Any]],
                  instructions: str | None) -> list[dict[str, Any]]:
    """The chat messages of a conversation: `prior` (a stored one) and then `items`, this
    request's input (both checked by `input_items`)."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    called: set[str] = set()
    for index, item in enumerate([*prior, *items], start=-len(prior)):
        kind = item["type"]
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            messages.append({"role": role, "content": _chat_content(item["content"])})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            called.add(item["call_id"])
        else:
            if item["call_id"] not in called:
                raise InvalidRequest(f"input[{index}].call_id", f"no function_call with call_id "
                                     f"{item['call_id']!r} comes before this function_call_output")
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages


def _tool(tool: Any, param: str) -> dict[str, Any]:
    """A function tool, checked, in the flat shape a Response echoes."""
    if not isinstance(tool, dict):
        raise InvalidRequest(param, f"{param} must be an object")
    kind = tool.get("type")
    if kind != "function":
        raise InvalidRequest(f"{param}.type", f"tool type {kind!r} is not supported: this gateway runs no "
                                              "built-in tools; declare a function tool and run it yourself")
    name = _text_of(tool.get("name"), f"{param}.name")
    if not name:
        raise InvalidRequest(f"{param}.name", "a function tool needs a name")
    parameters = tool.get("parameters")
    problem = schema_problem(parameters) if parameters is not None else None
    if problem is not None:
        raise InvalidRequest(f"{param}.parameters", f"parameters {problem}")
    description = tool.get("description")
    if description is not None:
        _text_of(description, f"{param}.description")
    strict = tool.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise InvalidRequest(f"{param}.strict", "strict must be a boolean")
    return {"type": "function", "name": name, "description": description, "parameters": parameters,
            "strict": strict}


def _chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = {"name": tool["name"]}
    for key in ("description", "parameters", "strict"):
        if tool[key] is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any, names: set[str]) -> Any:
    """`tool_choice` in chat's shape (checked against the declared tools)."""
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if name not in names:
            raise InvalidRequest("tool_choice.name", f"tool_choice names {name!r}, which is not among the "
                                                     "declared function tools")
        return {"type": "function", "function": {"name": name}}
    kind = choice.get("type") if isinstance(choice, dict) else choice
    raise InvalidRequest("tool_choice", f"tool_choice {kind!r} is not supported; use none, auto, required "
                                        'or {"type": "function", "name": ...}')


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest("text.format.schema", "a json_schema format needs its schema (an object)")
        problem = schema_problem(schema)
        if problem is not None:
            raise InvalidRequest("text.format.schema", f"the schema {problem}")
        name = _text_of(fmt.get("name"), "text.format.name")
        spec: dict[str, Any] = {"name": name, "schema": schema}
        for key in ("description", "strict"):
            if fmt.get(key) is not None:
                spec[key] = fmt[key]
        return {"type": "json_schema", "json_schema": spec}
    raise InvalidRequest("text.format.type", f"text.format type {kind!r} is not one of text, json_schema, "
                                             "json_object")


@dataclass(slots=True)
class CreateRequest:
    """A create request, checked: what the chat call is made of, and what its Response echoes."""

    model: str
    items: list[dict[str, Any]]              # this request's input items (stored form)
    instructions: str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)  # flat, as echoed
    tool_choice: Any = "auto"
    parallel_tool_calls: bool | None = None  # None: not asked (echoed as true, OpenAI's default)
    text: dict[str, Any] | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    previous_response_id: str | None = None
    store: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # chat parameters passed on as they are
    response_format: dict[str, Any] | None = None
    chat_tool_choice: Any = None

    @classmethod
    def checked(cls, *, input: str | list[Any], tools: list[Any] | None = None, tool_choice: Any = None,
                text: dict[str, Any] | None = None, **fields: Any) -> "CreateRequest":
        """Raises InvalidRequest naming the first parameter it cannot translate."""
        flat = [_tool(t, f"tools[{i}]") for i, t in enumerate(tools or ())]
        names = {t["name"] for t in flat}
        chat_choice = None if tool_choice is None else _tool_choice(tool_choice, names)
        if chat_choice is not None and chat_choice != "none" and not flat:
            raise InvalidRequest("tool_choice", "tool_choice needs tools to choose from")
        return cls(items=input_items(input), tools=flat, tool_choice=tool_choice or "auto", text=text,
                   response_format=_response_format(text), chat_tool_choice=chat_choice, **fields)

    def chat(self, prior: list[dict[str, Any]]) -> ChatRequest:
        """The chat request of this turn: `prior` (a stored conversation) and this input."""
        extra = dict(self.extra)
        if self.tools:
            if self.chat_tool_choice is not None:
                extra["tool_choice"] = self.chat_tool_choice
            if self.parallel_tool_calls is not None:
                extra["parallel_tool_calls"] = self.parallel_tool_calls
        return ChatRequest(messages=chat_messages(prior, self.items, self.instructions),
                           max_tokens=self.max_output_tokens, temperature=self.temperature, top_p=self.top_p,
                           tools=[_chat_tool(t) for t in self.tools] or None,
                           response_format=self.response_format, user=self.user, extra=extra)

    def response(self, response_id: str, model: str, *, created_at: int, status: str = "in_progress",
                 output: list[dict[str, Any]] | None = None, usage: Usage | None = None,
                 incomplete: str | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        """The Response object, every field OpenAI's schema requires, and what it echoes."""
        response: dict[str, Any] = {
            "id": response_id, "object": "response", "created_at": created_at, "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error, "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": self.instructions, "model": model, "output": output or [],
            "tools": self.tools, "tool_choice": self.tool_choice,
            "parallel_tool_calls": True if self.parallel_tool_calls is None else self.parallel_tool_calls,
            "temperature": self.temperature, "top_p": self.top_p, "max_output_tokens": self.max_output_tokens,
            "previous_response_id": self.previous_response_id, "metadata": self.metadata,
            "text": {"format": {"type": "text"}, **(self.text or {})},
            "store": self.store, "truncation": "disabled", "background": False, "reasoning": None,
        }
        if usage is not None:  # no usage until the answer is in (the schema has no null for it)
            response["usage"] = usage_json(usage)
        if self.user is not None:
            response["user"] = self.user
        return response


# -- the answer --------------------------------------------------------------------------------


def usage_json(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0}}


def incomplete_reason(finish_reason: str | None) -> str | None:
    """Why an answer that ended so is incomplete (None: it is complete)."""
    if finish_reason == "length":
        return "max_output_tokens"
    if finish_reason == "content_filter":
        return "content_filter"
    return None


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [_text_part(text)] if text is not None else []
    return {"type": "message", "id": item_id, "role": "assistant", "status": status, "content": content}


def _function_call(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def output_items(result: Result) -> list[dict[str, Any]]:
    """The output items of a finished answer."""
    status = "incomplete" if incomplete_reason(result.finish_reason) else "completed"
    items = []
    if result.text or not result.tool_calls:
        items.append(_message(new_id("msg"), result.text or "", status))
    for call in result.tool_calls or ():
        function = call.get("function") or {}
        items.append(_function_call(new_id("fc"), call.get("id") or new_id("call"), function.get("name", ""),
                                    function.get("arguments", ""), "completed"))
    return items


def finished(request: CreateRequest, response_id: str, result: Result, created_at: int) -> dict[str, Any]:
    """The Response of a finished (non-streamed) answer."""
    reason = incomplete_reason(result.finish_reason)
    return request.response(response_id, result.model or request.model, created_at=created_at,
                            status="incomplete" if reason else "completed", output=output_items(result),
                            usage=result.usage or Usage(0, 0, 0), incomplete=reason)


class EventStream:
    """The events of a streamed Response, made from the chunks of the chat stream.

    `start` gives response.created and response.in_progress; each `chunk` the events of
    its text and tool-call deltas (an item is opened when its first delta comes and
    closed, with its .done events, when another item starts or the answer ends);
    `finish` closes what is open and gives response.completed (or .incomplete), and
    `fail` gives response.failed after a failure mid-stream. `response` is the Response
    as it stands.
    """

    def __init__(self, request: CreateRequest, response_id: str, model: str) -> None:
        self.request = request
        self.response = request.response(response_id, model, created_at=int(time.time()))
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None  # the item being streamed
        self._calls: dict[int, dict[str, Any]] = {}  # chat's tool-call index -> its item

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def _lifecycle(self, kind: str) -> dict[str, Any]:
        return self._event(kind, response={**self.response, "output": list(self.output)})

    def start(self) -> list[dict[str, Any]]:
        return [self._lifecycle("response.created"), self._lifecycle("response.in_progress")]

    def _add(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close("completed")
        self.output.append(item)
        self._open = item
        events.append(self._event("response.output_item.added", output_index=len(self.output) - 1,
                                  item={**item, "content": []} if item["type"] == "message" else dict(item)))
        if item["type"] == "message":
            events.append(self._event("response.content_part.added", item_id=item["id"],
                                      output_index=len(self.output) - 1, content_index=0, part=_text_part("")))
        return events

    def _close(self, status: str) -> list[dict[str, Any]]:
        item, self._open = self._open, None
        if item is None:
            return []
        index = self.output.index(item)
        item["status"] = status
        events = []
        if item["type"] == "message":
            part = item["content"][0]
            events.append(self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                      content_index=0, text=part["text"], logprobs=[]))
            events.append(self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                      content_index=0, part=dict(part)))
        else:
            events.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                      output_index=index, name=item["name"], arguments=item["arguments"]))
        events.append(self._event("response.output_item.done", output_index=index, item=_copy(item)))
        return events

    def chunk(self, chunk: Chunk) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if chunk.text:
            if self._open is None or self._open["type"] != "message":
                events += self._add(_message(new_id("msg"), "", "in_progress"))
            assert self._open is not None
            self._open["content"][0]["text"] += chunk.text
            events.append(self._event("response.output_text.delta", item_id=self._open["id"],
                                      output_index=len(self.output) - 1, content_index=0, delta=chunk.text,
                                      logprobs=[]))
        for delta in chunk.tool_calls or ():
            function = delta.get("function") or {}
            item = self._calls.get(delta.get("index", 0))
            if item is None:
                item = _function_call(new_id("fc"), delta.get("id") or new_id("call"), function.get("name") or "",
                                      "", "in_progress")
                self._calls[delta.get("index", 0)] = item
                events += self._add(item)
            elif function.get("name"):
                item["name"] += function["name"]
            if function.get("arguments"):
                item["arguments"] += function["arguments"]
                events.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                          output_index=self.output.index(item), delta=function["arguments"]))
        return events

    def finish(self, final: Chunk, model: str | None) -> list[dict[str, Any]]:
        reason = incomplete_reason(final.finish_reason)
        events = []
        if not self.output:  # nothing was said: an empty message, as a plain answer has
            events += self._add(_message(new_id("msg"), "", "in_progress"))
        events += self._close("incomplete" if reason else "completed")
        self.response = self.request.response(
            self.response["id"], model or self.response["model"], created_at=self.response["created_at"],
            status="incomplete" if reason else "completed", output=[_copy(i) for i in self.output],
            usage=final.usage, incomplete=reason)
        events.append(self._event("response.incomplete" if reason else "response.completed", response=self.response))
        return events

    def fail(self, message: str) -> list[dict[str, Any]]:
        events = self._close("incomplete")
        self.response = {**self.response, "status": "failed", "output": [_copy(i) for i in self.output],
                         "error": {"code": "server_error", "message": message}}
        events.append(self._event("response.failed", response=self.response))
        return events


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    if item["type"] == "message":
        return {**item, "content": [dict(p) for p in item["content"]]}
    return dict(item)
