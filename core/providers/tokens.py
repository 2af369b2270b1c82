"""Token counts for replies whose provider reported no usage.

tiktoken, when installed, counts exactly for OpenAI models and closely enough for the
others (their tokenizers differ; cost and DWA weights only need the right magnitude).
Without it, or when its encoding files cannot be fetched (tiktoken downloads them on
first use; offline machines cannot), the estimate is OpenAI's rule of thumb: about four
characters per token. Call `preload()` at start-up so that download (blocking, once per
process; a failure is not retried) does not happen inside a request.

Message overhead follows OpenAI's published recipe: 3 tokens per message for the role
and separators, 3 more to prime the reply.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from core.providers.base import Usage, UsageSource

PER_MESSAGE = 3
REPLY_PRIMING = 3
IMAGE_PART = 85  # a low-detail image; detail varies, and this is an estimate anyway
CHARS_PER_TOKEN = 4


@lru_cache(maxsize=8)
def _encoding(name: str) -> Any | None:
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        return tiktoken.get_encoding(name)
    except Exception:  # the encoding file could not be downloaded or read
        return None


def _encoding_name(model: str | None) -> str:
    # gpt-4o, gpt-4.1, o-series and later use o200k; older OpenAI models use cl100k.
    if model and model.startswith(("gpt-3.5", "gpt-4-", "text-embedding")) or model == "gpt-4":
        return "cl100k_base"
    return "o200k_base"


def preload(model: str | None = None) -> bool:
    """Load the encoding now (start-up), not on the first reply without usage.

    Returns whether tiktoken will be used.
    """
    return _encoding(_encoding_name(model)) is not None


def count_text(text: str, model: str | None = None) -> int:
    return _count(text, _encoding(_encoding_name(model)))


def count_messages(messages: Iterable[Mapping[str, Any]], model: str | None = None) -> int:
    """Prompt tokens of a chat request's messages."""
    encoding = _encoding(_encoding_name(model))
    total = REPLY_PRIMING
    for message in messages:
        total += PER_MESSAGE
        content = message.get("content")
        if isinstance(content, str):
            total += _count(content, encoding)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, Mapping):
                    continue
                if isinstance(part.get("text"), str):
                    total += _count(part["text"], encoding)
                elif part.get("type") in ("image_url", "input_image", "image"):
                    total += IMAGE_PART
        if isinstance(message.get("name"), str):
            total += 1 + _count(message["name"], encoding)
        tool_calls = message.get("tool_calls")
        if tool_calls:
            total += _count(json.dumps(tool_calls, separators=(",", ":")), encoding)
    return total


def source() -> UsageSource:
    """What `count_*` are using right now: tiktoken or the character estimate."""
    return "tiktoken" if _encoding("o200k_base") is not None else "estimate"


def counted_usage(
    messages: Iterable[Mapping[str, Any]],
    completion_text: str,
    model: str | None = None,
    *,
    tool_calls: Any = None,
) -> Usage:
    """Usage for a reply that came without one."""
    prompt = count_messages(messages, model)
    completion = count_text(completion_text, model)
    if tool_calls:
        completion += count_text(json.dumps(tool_calls, separators=(",", ":")), model)
    return Usage(prompt, completion, prompt + completion, source())


def _count(text: str, encoding: Any | None) -> int:
    if not text:
        return 0
    if encoding is not None:
        # disallowed_special=(): count a literal "<|endoftext|>" in user text as text.
        return len(encoding.encode(text, disallowed_special=()))
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN
