"""Anthropic's Messages API and the gateway's internal chat request and reply, both ways.

The internal request is OpenAI-shaped (`ChatRequest`: chat messages, function tools,
`tool_choice` in `extra`) and so are replies (`Completion`, `Chunk`: `tool_calls`,
`finish_reason`). Every mapping between that and Anthropic's wire format is here, once:

    internal -> Anthropic     request_body()       what the native adapter sends
    Anthropic -> internal     completion(),        what the native adapter reads back
                              StreamReader
    Anthropic -> internal     chat_request()       the body of POST /v1/messages
    internal -> Anthropic     message(),           what POST /v1/messages answers
                              StreamWriter

What one side cannot express is never dropped: it raises `Untranslatable`, naming the
field (the adapter turns it into a ProviderClientError, the surface into a 400). A
malformed provider reply raises `MalformedReply` (the adapter: ProviderBadResponse).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from core import fastjson
from core.json_schema import schema_problem
from core.providers.base import ChatRequest, Chunk, Completion, Usage

if TYPE_CHECKING:
    from core.orchestrator import Result

VERSION = "2023-06-01"  # the anthropic-version the adapter sends and the surface defaults to
FALLBACK_MAX_TOKENS = 4096  # Anthropic requires max_tokens; used when neither request nor spec has one

# Anthropic stop_reason -> OpenAI finish_reason, and back.
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
           "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter"}
_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
         "content_filter": "refusal"}

# Extras an internal request may carry that mean nothing to change on Anthropic's side.
_HARMLESS = {"n": 1, "parallel_tool_calls": True, "store": False, "logprobs": False}
_MESSAGE_KEYS = {"role", "content", "tool_calls", "tool_call_id"}


class Untranslatable(ValueError):
    """A field has no counterpart in the other API; `field` is its path in the request."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


class MalformedReply(ValueError):
    """A provider's reply is not a Messages API reply."""


def finish_reason(stop_reason: str | None) -> str | None:
    return _FINISH.get(stop_reason, stop_reason) if stop_reason is not None else None


def stop_reason(finish: str | None, stop_sequence: str | None = None) -> str:
    if stop_sequence is not None:
        return "stop_sequence"
    return _STOP.get(finish or "stop", "end_turn")


# --- internal -> Anthropic: the native adapter's request ---------------------------------------------


def request_body(request: ChatRequest, *, model: str, max_tokens: int | None, stream: bool) -> dict[str, Any]:
    """The Messages API body for `request`, sent to `model`."""
    system, messages = _wire_messages(request.messages)
    body: dict[str, Any] = {"model": model, "max_tokens": request.max_tokens or max_tokens or FALLBACK_MAX_TOKENS,
                            "messages": messages}
    if system:
        body["system"] = system[0]["text"] if len(system) == 1 else system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop is not None:
        body["stop_sequences"] = [request.stop] if isinstance(request.stop, str) else list(request.stop)
    if request.tools:
        body["tools"] = [_wire_tool(tool, f"tools[{i}]") for i, tool in enumerate(request.tools)]
    if request.response_format is not None and request.response_format.get("type") != "text":
        raise Untranslatable("response_format", "Anthropic's Messages API has no response_format")
    if request.seed is not None:
        raise Untranslatable("seed", "Anthropic's Messages API has no seed (a deployment may list it in "
                                     "drop_params to serve seeded requests without it)")
    if request.user is not None:
        body["metadata"] = {"user_id": request.user}
    extra = dict(request.extra)
    choice = _wire_tool_choice(extra.pop("tool_choice", None), extra.pop("parallel_tool_calls", None))
    if choice is not None:
        body["tool_choice"] = choice
    for name, value in extra.items():
        if name in ("top_k",):
            body[name] = value
        elif name == "metadata" and isinstance(value, dict) and set(value) <= {"user_id"}:
            body["metadata"] = {**body.get("metadata", {}), **value}
        elif value is not None and _HARMLESS.get(name, ...) != value:
            raise Untranslatable(name, "has no counterpart in Anthropic's Messages API")
    if stream:
        body["stream"] = True
    return body


def _wire_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system text blocks, alternating user/assistant messages) of internal chat messages.

    System messages are hoisted to `system`, wherever they stand; tool results become
    tool_result blocks of a user turn; consecutive turns of one role are merged.
    """
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role")
        for key, value in message.items():
            if key not in _MESSAGE_KEYS and value:  # null refusal/audio of an echoed reply: nothing to lose
                raise Untranslatable(f"{where}.{key}", "has no counterpart in Anthropic's Messages API")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(_wire_text_blocks(content, f"{where}.content"))
        elif role == "user":
            _append(out, "user", content if isinstance(content, str) else _wire_parts(content, f"{where}.content"))
        elif role == "assistant":
            blocks = [b for b in _wire_text_blocks(content, f"{where}.content") if b["text"]]
            for j, call in enumerate(message.get("tool_calls") or ()):
                blocks.append(_wire_tool_use(call, f"{where}.tool_calls[{j}]"))
            _append(out, "assistant", blocks)
        elif role == "tool":
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
            if not isinstance(result["tool_use_id"], str):
                raise Untranslatable(f"{where}.tool_call_id", "a tool message needs the id of the call it answers")
            result["content"] = content if isinstance(content, str) else _wire_text_blocks(content, f"{where}.content")
            _append(out, "user", [result])
        else:
            raise Untranslatable(f"{where}.role", f"role {role!r} has no counterpart in Anthropic's Messages API")
    return system, out


def _append(out: list[dict[str, Any]], role: str, content: str | list[dict[str, Any]]) -> None:
    if out and out[-1]["role"] == role:
        last = out[-1]
        if isinstance(last["content"], str):
            last["content"] = [{"type": "text", "text": last["content"]}]
        last["content"].extend([{"type": "text", "text": content}] if isinstance(content, str) else content)
    else:
        out.append({"role": role, "content": content})


def _wire_text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for j, part in enumerate(content if isinstance(content, list) else ()):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise Untranslatable(f"{where}[{j}]", "only text parts can go here")
        blocks.append({"type": "text", "text": part["text"]})
    return blocks


def _wire_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        raise Untranslatable(where, "give a string or a list of content parts")
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            blocks.append({"type": "image", "source": _image_source(url, f"{where}[{j}].image_url.url")})
        else:
            raise Untranslatable(f"{where}[{j}].type", f"{kind!r} parts have no counterpart in Anthropic's "
                                                       "Messages API (text and image_url do)")
    return blocks


def _image_source(url: Any, where: str) -> dict[str, Any]:
    if isinstance(url, str) and url.startswith("data:") and ";base64," in url:
        media_type, data = url[5:].split(";base64,", 1)
        return {"type": "base64", "media_type": media_type, "data": data}
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        return {"type": "url", "url": url}
    raise Untranslatable(where, "an image must be a base64 data: URL or an http(s) URL")


def _wire_tool_use(call: Any, where: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(call.get("id"), str):
        raise Untranslatable(where, "a tool call needs an id and a function")
    arguments = function.get("arguments") or "{}"
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise Untranslatable(f"{where}.function.arguments", "must be a JSON object")
    return {"type": "tool_use", "id": call["id"], "name": function.get("name"), "input": parsed}


def _wire_tool(tool: Any, where: str) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise Untranslatable(where, "only function tools have a counterpart in Anthropic's Messages API")
    if function.get("strict"):
        raise Untranslatable(f"{where}.function.strict", "Anthropic's Messages API has no strict tools")
    wire: dict[str, Any] = {"name": function["name"],
                            "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
    if function.get("description"):
        wire["description"] = function["description"]
    return wire


def _wire_tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None:
        wire: dict[str, Any] | None = None
    elif choice == "auto":
        wire = {"type": "auto"}
    elif choice == "none":
        wire = {"type": "none"}
    elif choice == "required":
        wire = {"type": "any"}
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        wire = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise Untranslatable("tool_choice", "expected auto, none, required or a function by name")
    if parallel is False:
        wire = {**(wire or {"type": "auto"}), "disable_parallel_tool_use": True}
    return wire


# --- Anthropic -> internal: the native adapter's reply ------------------------------------------------


def usage(raw: Any) -> Usage | None:
    """Anthropic's usage as ours: cached prompt tokens (read and written) are prompt tokens."""
    if not isinstance(raw, dict) or not isinstance(raw.get("output_tokens"), int):
        return None
    prompt = sum(raw.get(k) or 0 for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"))
    return Usage(prompt, raw["output_tokens"], prompt + raw["output_tokens"])


def completion(data: Any) -> Completion:
    """A Message object as a Completion (usage None when the reply has none: the caller counts)."""
    if not isinstance(data, dict) or not isinstance(data.get("content"), list):
        raise MalformedReply("reply is not a message with content")
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in data["content"]:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input") or {})}})
        # thinking blocks (a deployment's params may turn thinking on) are not part of the answer
    return Completion(text="".join(text), model=data.get("model") or "", finish_reason=finish_reason(
        data.get("stop_reason")), usage=usage(data.get("usage")) or Usage(0, 0, 0, "estimate"), id=data.get("id"),
        tool_calls=calls or None, stop_sequence=data.get("stop_sequence"))


class StreamReader:
    """Anthropic's stream events, fed one at a time, as content Chunks.

    `feed` returns the Chunk an event carries (text, or a tool-call delta in OpenAI's
    shape: the first with id and name, then argument pieces), or None. What the events
    say about the whole reply accumulates on the reader: `done` once message_stop came.
    """

    def __init__(self) -> None:
        self.id: str | None = None
        self.model: str | None = None
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.done = False
        self.events = 0
        self._usage: dict[str, Any] = {}
        self._calls: dict[int, int] = {}  # content block index -> tool call index

    @property
    def usage(self) -> Usage | None:
        return usage(self._usage)

    def feed(self, event: Any) -> Chunk | None:
        if not isinstance(event, dict):
            raise MalformedReply("stream event is not a JSON object")
        self.events += 1
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.id, self.model = message.get("id"), message.get("model")
            self._usage.update(message.get("usage") or {})
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "text" and block.get("text"):
                return Chunk(text=block["text"])
            if block.get("type") == "tool_use":
                index = self._calls.setdefault(event.get("index", len(self._calls)), len(self._calls))
                arguments = json.dumps(block["input"]) if block.get("input") else ""
                return Chunk(tool_calls=[{"index": index, "id": block.get("id"), "type": "function",
                                          "function": {"name": block.get("name"), "arguments": arguments}}])
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return Chunk(text=delta["text"])
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                index = self._calls.get(event.get("index"))  # type: ignore[arg-type]
                if index is None:
                    raise MalformedReply("input_json_delta outside a tool_use block")
                return Chunk(tool_calls=[{"index": index, "function": {"arguments": delta["partial_json"]}}])
            # thinking and signature deltas are not part of the answer
        elif kind == "message_delta":
            delta = event.get("delta") or {}
            self.stop_reason = delta.get("stop_reason") or self.stop_reason
            self.stop_sequence = delta.get("stop_sequence") or self.stop_sequence
            self._usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
        elif kind == "message_stop":
            self.done = True
        return None  # ping, content_block_stop; an `error` event is the adapter's to raise


# --- Anthropic -> internal: POST /v1/messages' body ---------------------------------------------------


def chat_request(body: dict[str, Any]) -> ChatRequest:
    """The internal request of a validated Messages API body (a dict of its fields)."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": system if isinstance(system, str)
                         else _text_parts(system, "system")})
    for i, message in enumerate(body["messages"]):
        where = f"messages[{i}]"
        content = message["content"]
        if message["role"] == "user":
            messages.extend(_user_messages(content, f"{where}.content"))
        else:
            messages.append(_assistant_message(content, f"{where}.content"))
    extra: dict[str, Any] = {}
    tool_choice = body.get("tool_choice")
    if tool_choice is not None:
        kind = tool_choice.get("type")
        if kind == "tool" and not isinstance(tool_choice.get("name"), str):
            raise Untranslatable("tool_choice.name", "required with type 'tool'")
        extra["tool_choice"] = ({"type": "function", "function": {"name": tool_choice.get("name")}}
                                if kind == "tool" else {"auto": "auto", "any": "required", "none": "none"}[kind])
        if tool_choice.get("disable_parallel_tool_use"):
            extra["parallel_tool_calls"] = False
    if body.get("top_k") is not None:
        extra["top_k"] = body["top_k"]
    thinking = body.get("thinking")
    if thinking and thinking.get("type") != "disabled":
        raise Untranslatable("thinking", "extended thinking is not served through the gateway: its replies carry "
                                         "no thinking blocks; send thinking: {type: disabled} or leave it out")
    tools = body.get("tools")
    stop = body.get("stop_sequences")
    return ChatRequest(messages=messages, max_tokens=body["max_tokens"], temperature=body.get("temperature"),
                       top_p=body.get("top_p"), stop=list(stop) if stop else None,
                       tools=[_openai_tool(t, f"tools[{i}]") for i, t in enumerate(tools)] if tools else None,
                       user=(body.get("metadata") or {}).get("user_id"), extra=extra)


def _refuse_cache_control(block: dict[str, Any], where: str) -> None:
    if block.get("cache_control") is not None:
        raise Untranslatable(f"{where}.cache_control", "prompt caching controls are not served through the gateway")


def _text_parts(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    parts = []
    for j, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise Untranslatable(f"{where}[{j}]", "expected a text block {type: text, text}")
        parts.append(_one_text(block, f"{where}[{j}]"))
    return parts


def _refuse_keys(block: dict[str, Any], allowed: set[str], where: str) -> None:
    for key, value in block.items():
        if key not in allowed and value is not None:
            raise Untranslatable(f"{where}.{key}", "is not served through the gateway")


def _user_messages(content: str | list[Any], where: str) -> list[dict[str, Any]]:
    """A user turn: its tool_result blocks as tool messages, the rest as a user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            if parts:
                out.append({"role": "user", "content": parts})
                parts = []
            out.append(_tool_message(block, at))
        elif kind == "text":
            parts.append(_one_text(block, at))
        elif kind == "image":
            _refuse_cache_control(block, at)
            _refuse_keys(block, {"type", "source", "cache_control"}, at)
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source"), f"{at}.source")}})
        else:
            raise Untranslatable(f"{at}.type", f"{kind!r} blocks are not served through the gateway "
                                               "(text, image and tool_result are)")
    if parts:
        out.append({"role": "user", "content": parts})
    return out


def _one_text(block: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(block.get("text"), str):
        raise Untranslatable(f"{where}.text", "a text block needs its text")
    _refuse_cache_control(block, where)
    _refuse_keys(block, {"type", "text", "cache_control"}, where)
    return {"type": "text", "text": block["text"]}


def _image_url(source: Any, where: str) -> str:
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source.get("media_type"), str) and isinstance(source.get("data"), str):
        return f"data:{source['media_type']};base64,{source['data']}"
    if kind == "url" and isinstance(source.get("url"), str):
        return source["url"]
    raise Untranslatable(where, "expected {type: base64, media_type, data} or {type: url, url}")


def _tool_message(block: dict[str, Any], where: str) -> dict[str, Any]:
    _refuse_cache_control(block, where)
    if block.get("is_error"):
        raise Untranslatable(f"{where}.is_error", "a tool error has no counterpart in the internal request; "
                                                  "say so in the result's content")
    _refuse_keys(block, {"type", "tool_use_id", "content", "is_error", "cache_control"}, where)
    if not isinstance(block.get("tool_use_id"), str):
        raise Untranslatable(f"{where}.tool_use_id", "a tool_result needs the id of the tool_use it answers")
    content = block.get("content")
    if content is None:
        content = ""
    elif not isinstance(content, str):
        if not isinstance(content, list):
            raise Untranslatable(f"{where}.content", "give a string or a list of text blocks")
        content = _text_parts(content, f"{where}.content")
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": content}


def _assistant_message(content: str | list[Any], where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text.append(_one_text(block, at)["text"])
        elif kind == "tool_use":
            _refuse_cache_control(block, at)
            _refuse_keys(block, {"type", "id", "name", "input", "cache_control"}, at)
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str) \
                    or not isinstance(block.get("input"), dict):
                raise Untranslatable(at, "a tool_use block needs id, name and an input object")
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": json.dumps(block["input"])}})
        else:
            raise Untranslatable(f"{at}.type", f"{kind!r} blocks are not served through the gateway "
                                               "(text and tool_use are)")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _openai_tool(tool: dict[str, Any], where: str) -> dict[str, Any]:
    if tool.get("type") not in (None, "custom"):
        raise Untranslatable(f"{where}.type", f"server tool {tool.get('type')!r} is not served through the gateway")
    _refuse_cache_control(tool, where)
    _refuse_keys(tool, {"type", "name", "description", "input_schema", "cache_control"}, where)
    if not isinstance(tool.get("name"), str) or not isinstance(tool.get("input_schema"), dict):
        raise Untranslatable(where, "a tool needs a name and an input_schema object")
    problem = schema_problem(tool["input_schema"])
    if problem is not None:
        raise Untranslatable(f"{where}.input_schema", f"input_schema {problem}")
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


# --- internal -> Anthropic: what POST /v1/messages answers --------------------------------------------


def _tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as the input object Anthropic's tool_use block carries."""
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) and arguments else arguments or {}
    except ValueError:
        raise MalformedReply("a tool call's arguments are not JSON") from None
    if not isinstance(parsed, dict):
        raise MalformedReply("a tool call's arguments are not a JSON object")
    return parsed


def wire_usage(counted: Usage | None, **fields: Any) -> dict[str, Any]:
    """A Usage as Anthropic's: how much of the prompt was cached is not known here (null)."""
    return {"input_tokens": counted.prompt_tokens if counted else 0,
            "output_tokens": counted.completion_tokens if counted else 0,
            "cache_creation_input_tokens": None, "cache_read_input_tokens": None, **fields}


def message(result: Result, *, message_id: str, model: str) -> dict[str, Any]:
    """The Message object of a result."""
    content: list[dict[str, Any]] = []
    if result.text:
        content.append({"type": "text", "text": result.text, "citations": None})
    for call in result.tool_calls or ():
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
                        "input": _tool_input(function.get("arguments"))})
    return {"id": message_id, "type": "message", "role": "assistant", "content": content,
            "model": result.model or model, "stop_reason": stop_reason(result.finish_reason, result.stop_sequence),
            "stop_sequence": result.stop_sequence, "usage": wire_usage(result.usage)}


def _event(kind: str, payload: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {fastjson.dumps({'type': kind, **payload}).decode()}\n\n"


class StreamWriter:
    """Chunks as Anthropic's stream events: message_start and ping before the first,
    a content block per text run or tool call, message_delta and message_stop at the end."""

    def __init__(self, *, message_id: str, model: str, input_tokens: int) -> None:
        self.message_id, self.model, self.input_tokens = message_id, model, input_tokens
        self._started = False
        self._open: tuple[str, int] | None = None  # ("text" | "tool", the tool call's index) of the open block
        self._blocks = 0  # content blocks started so far

    def write(self, chunk: Chunk, served_by: str | None) -> str:
        out = ""
        if not self._started:
            self._started = True
            out += _event("message_start", {"message": {
                "id": self.message_id, "type": "message", "role": "assistant", "content": [],
                "model": served_by or self.model, "stop_reason": None, "stop_sequence": None,
                "usage": wire_usage(None, input_tokens=self.input_tokens)}})
            out += _event("ping", {})
        if chunk.text:
            if self._open is None or self._open[0] != "text":
                out += self._start({"type": "text", "text": "", "citations": None}, ("text", 0))
            out += _event("content_block_delta", {"index": self._blocks - 1,
                                                  "delta": {"type": "text_delta", "text": chunk.text}})
        for delta in chunk.tool_calls or ():
            index = delta.get("index", 0)
            function = delta.get("function") or {}
            if self._open != ("tool", index):
                out += self._start({"type": "tool_use", "id": delta.get("id"), "name": function.get("name"),
                                    "input": {}}, ("tool", index))
            if function.get("arguments"):
                out += _event("content_block_delta", {"index": self._blocks - 1, "delta": {
                    "type": "input_json_delta", "partial_json": function["arguments"]}})
        if chunk.is_final:
            out += self._stop()
            out += _event("message_delta", {
                "delta": {"stop_reason": stop_reason(chunk.finish_reason, chunk.stop_sequence),
                          "stop_sequence": chunk.stop_sequence},
                "usage": wire_usage(chunk.usage)})
            out += _event("message_stop", {})
        return out

    def error(self, kind: str, message: str) -> str:
        return _event("error", {"error": {"type": kind, "message": message}})

    def _start(self, block: dict[str, Any], opened: tuple[str, int]) -> str:
        out = self._stop()
        self._open = opened
        self._blocks += 1
        return out + _event("content_block_start", {"index": self._blocks - 1, "content_block": block})

    def _stop(self) -> str:
        if self._open is None:
            return ""
        self._open = None
        return _event("content_block_stop", {"index": self._blocks - 1})
