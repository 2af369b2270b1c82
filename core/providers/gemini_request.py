"""A `ChatRequest` (OpenAI's chat schema) as the body of Gemini's `generateContent`.

    messages      system / developer      -> systemInstruction.parts (all of them, in order)
                  user                    -> contents, role "user": text, inlineData (data: URLs
                                             of image_url, input_audio, file parts)
                  assistant               -> contents, role "model": text, functionCall per tool call
                  tool (tool_call_id)     -> contents, role "user": functionResponse, named after
                                             the assistant's tool call with that id
    tools                                 -> tools[0].functionDeclarations (gemini_schema.py)
    tool_choice   auto | none | required  -> toolConfig.functionCallingConfig.mode AUTO | NONE | ANY
                  {"function": {"name"}}  -> mode ANY, allowedFunctionNames [name]
    max_tokens, temperature, top_p, stop, seed, frequency_penalty, presence_penalty
                                          -> generationConfig (maxOutputTokens, ... stopSequences)
    response_format json_object           -> generationConfig.responseMimeType application/json
                    json_schema           -> the same, plus responseJsonSchema: the schema as it is
                                             (that field takes JSON Schema itself)

Consecutive messages of one role become one `contents` entry (Gemini wants the tool
results of one turn together). The deployment's `params` are Gemini-native fields merged
into every body (safetySettings, generationConfig.thinkingConfig, ...), the request's
own values winning; `drop_params` names OpenAI parameters not to translate. Any other
OpenAI parameter (logprobs, n, user, logit_bias, parallel_tool_calls, ...) has no
counterpart here and is not sent. What cannot be said to Gemini raises `Untranslatable`.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from core.providers.gemini_schema import Untranslatable, function_parameters

if TYPE_CHECKING:
    from core.providers.base import ChatRequest
    from core.providers.config import DeploymentSpec

_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)(?:;[^,;]*)*;base64,(.*)", re.DOTALL)
_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}


def generate_body(request: ChatRequest, spec: DeploymentSpec) -> dict[str, Any]:
    """The JSON body of `:generateContent` / `:streamGenerateContent` for `request`."""
    wanted: dict[str, Any] = {
        "max_tokens": request.max_tokens or spec.default_max_tokens, "temperature": request.temperature,
        "top_p": request.top_p, "stop": request.stop, "seed": request.seed, "tools": request.tools,
        "response_format": request.response_format, "tool_choice": request.extra.get("tool_choice"),
        "frequency_penalty": request.extra.get("frequency_penalty"),
        "presence_penalty": request.extra.get("presence_penalty"),
    }
    for name in spec.drop_params:
        wanted.pop(name, None)
    body: dict[str, Any] = dict(spec.params)
    system, contents = _contents(request.messages)
    if system:
        body["systemInstruction"] = {"parts": system}
    body["contents"] = contents
    if wanted.get("tools"):
        body["tools"] = [{"functionDeclarations": _declarations(wanted["tools"])}]
    if wanted.get("tool_choice") is not None:
        body["toolConfig"] = {"functionCallingConfig": _calling_config(wanted["tool_choice"])}
    config = dict(body.get("generationConfig") or {})
    for name, field in (("max_tokens", "maxOutputTokens"), ("temperature", "temperature"), ("top_p", "topP"),
                        ("seed", "seed"), ("frequency_penalty", "frequencyPenalty"),
                        ("presence_penalty", "presencePenalty")):
        if wanted.get(name) is not None:
            config[field] = wanted[name]
    stop = wanted.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    if wanted.get("response_format"):
        config.update(_response_format(wanted["response_format"]))
    if config:
        body["generationConfig"] = config
    return body


# --- messages -------------------------------------------------------------------------------


def _contents(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(systemInstruction parts, contents) of a conversation."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name, for the tool messages that answer
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend({"text": text} for text in _texts(content, where) if text)
        elif role == "user":
            _add(contents, "user", _user_parts(content, where))
        elif role == "assistant":
            parts = [{"text": text} for text in _texts(content, where) if text]
            for position, call in enumerate(message.get("tool_calls") or ()):
                name, args = _call(call, f"{where}.tool_calls[{position}]")
                if isinstance(call.get("id"), str):
                    names[call["id"]] = name
                parts.append({"functionCall": {"name": name, "args": args}})
            _add(contents, "model", parts)
        elif role in ("tool", "function"):
            if role == "tool":
                name = names.get(message.get("tool_call_id"))  # type: ignore[arg-type]
                if name is None:
                    raise Untranslatable(f"{where}: tool_call_id {message.get('tool_call_id')!r} answers no "
                                         "tool call of an earlier assistant message")
            else:
                name = message.get("name")
                if not isinstance(name, str) or not name:
                    raise Untranslatable(f"{where}: a function message needs the function's name")
            _add(contents, "user", [{"functionResponse": {"name": name, "response": _result(content, where)}}])
        else:
            raise Untranslatable(f"{where}: role {role!r} has no Gemini equivalent")
    return system, contents


def _add(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    if not parts:
        return  # Gemini refuses a turn without parts
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _texts(content: Any, where: str) -> list[str]:
    """The text of a content that may only hold text (system, assistant, tool)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        texts = []
        for position, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise Untranslatable(f"{where}.content[{position}]: a {kind!r} part is not allowed here")
            texts.append(str(part.get("text") or part.get("refusal") or ""))
        return texts
    raise Untranslatable(f"{where}.content: expected text or a list of parts")


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return [{"text": text} for text in _texts(content, where) if text]
    parts: list[dict[str, Any]] = []
    for position, part in enumerate(content):
        at = f"{where}.content[{position}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                parts.append({"text": str(part["text"])})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append(_inline(url, at, "an image by URL; Gemini's API takes images inline, so send it as "
                                          "a data: URL"))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            if not isinstance(audio.get("data"), str) or not isinstance(audio.get("format"), str):
                raise Untranslatable(f"{at}: input_audio needs data and format")
            parts.append({"inlineData": {"mimeType": f"audio/{audio['format']}", "data": audio["data"]}})
        elif kind == "file":
            file = part.get("file") or {}
            parts.append(_inline(file.get("file_data"), at, "a file by id; send its content as file_data "
                                                             "(a data: URL)"))
        else:
            raise Untranslatable(f"{at}: a {kind!r} part has no Gemini equivalent")
    return parts


def _inline(url: Any, where: str, otherwise: str) -> dict[str, Any]:
    match = _DATA_URL.fullmatch(url) if isinstance(url, str) else None
    if match is None:
        raise Untranslatable(f"{where}: {otherwise}")
    return {"inlineData": {"mimeType": match.group(1), "data": match.group(2)}}


def _call(call: Any, where: str) -> tuple[str, dict[str, Any]]:
    function = call.get("function") if isinstance(call, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise Untranslatable(f"{where}: a tool call needs a function name")
    arguments = function.get("arguments") or "{}"  # type: ignore[union-attr]
    try:
        args = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        raise Untranslatable(f"{where}: the arguments of {name!r} are not JSON") from None
    if not isinstance(args, dict):
        raise Untranslatable(f"{where}: the arguments of {name!r} are not a JSON object")
    return name, args


def _result(content: Any, where: str) -> dict[str, Any]:
    """A tool's result as Gemini's functionResponse.response (a JSON object): the result
    itself when it is one, else {"output": result}, as Gemini's documentation asks."""
    text = "".join(_texts(content, where))
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    return value if isinstance(value, dict) else {"output": value}


# --- tools and output ----------------------------------------------------------------------


def _declarations(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise Untranslatable("tools: expected a list")
    declarations = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(function, dict):
            kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
            raise Untranslatable(f"tools[{index}]: a {kind!r} tool has no Gemini equivalent (function tools only)")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise Untranslatable(f"tools[{index}]: a function tool needs a name")
        declaration: dict[str, Any] = {"name": name}
        if function.get("description"):
            declaration["description"] = function["description"]
        if function.get("parameters") is not None:
            parameters = function_parameters(function["parameters"], f"tools[{index}] ({name}).parameters")
            if parameters is not None:
                declaration["parameters"] = parameters
        declarations.append(declaration)
    return declarations


def _calling_config(choice: Any) -> dict[str, Any]:
    if isinstance(choice, str) and choice in _MODES:
        return {"mode": _MODES[choice]}
    function = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    name = function.get("name") if isinstance(function, dict) else None
    if isinstance(name, str) and name:
        return {"mode": "ANY", "allowedFunctionNames": [name]}
    raise Untranslatable("tool_choice: expected auto, none, required or {\"type\": \"function\", "
                         "\"function\": {\"name\": ...}}")


def _response_format(response_format: Any) -> dict[str, Any]:
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")  # type: ignore[union-attr]
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if schema is None:
            return {"responseMimeType": "application/json"}
        return {"responseMimeType": "application/json", "responseJsonSchema": schema}
    raise Untranslatable(f"response_format: type {kind!r} has no Gemini equivalent")
