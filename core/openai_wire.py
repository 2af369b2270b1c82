"""OpenAI's Chat Completions answer, built from a result: what `/v1/chat/completions`
sends, and what the planner's in-process transport answers LangChain with."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.orchestrator import Result
    from core.providers.base import Usage


def usage(result: Result) -> dict[str, int]:
    return usage_of(result.usage)


def usage_of(counted: Usage | None) -> dict[str, int]:
    if counted is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return {"prompt_tokens": counted.prompt_tokens, "completion_tokens": counted.completion_tokens,
            "total_tokens": counted.total_tokens}


def logprobs(content: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    return {"content": content, "refusal": None} if content else None


def completion(result: Result, requested: str, completion_id: str | None = None) -> dict[str, Any]:
    """A chat.completion object of `result` (an answer to a request for model `requested`)."""
    # a reply that is only tool calls has no content (null, as OpenAI sends it)
    content = None if result.tool_calls and not result.text else result.text
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if result.tool_calls:
        message["tool_calls"] = result.tool_calls
    return {
        "id": completion_id or "chatcmpl-" + (result.completion_id or "local"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": result.model or requested,
        "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason or "stop",
                     "logprobs": logprobs(result.logprobs)}],
        "usage": usage(result),
    }
