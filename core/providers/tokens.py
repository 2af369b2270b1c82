"""Token counts for replies whose provider reported no usage.

tiktoken, when installed, counts exactly for OpenAI models and closely enough for the
others (their tokenizers differ; cost and DWA weights only need the right magnitude).
Without it, or until its encoding is loaded, or when the encoding file cannot be
fetched, the estimate is OpenAI's rule of thumb: about four characters per token.

tiktoken downloads an encoding on first use, blocking and with no timeout (offline, or
behind a network that drops packets, that is forever). So an encoding is only ever
loaded in a background thread, started by `preload()` at start-up or by the first
count that wants it, and counts use the estimate until it is there. A failed load is
not retried within the process.

Message overhead follows OpenAI's published recipe: 3 tokens per message for the role
and separators, 3 more to prime the reply.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from core.providers.base import Usage

PER_MESSAGE = 3
REPLY_PRIMING = 3
IMAGE_PART = 85  # a low-detail image; detail varies, and this is an estimate anyway
CHARS_PER_TOKEN = 4


_loaded: dict[str, Any] = {}       # encoding name -> tiktoken Encoding, once loaded
_loading: dict[str, threading.Thread] = {}
_lock = threading.Lock()


def _load(name: str) -> None:
    try:
        import tiktoken

        _loaded[name] = tiktoken.get_encoding(name)
    except Exception:  # noqa: BLE001 - not installed, or the file could not be fetched: estimate
        pass


def _encoding(name: str) -> Any | None:
    """The encoding if it is loaded; otherwise None, and its load starts off the caller's thread."""
    encoding = _loaded.get(name)
    if encoding is None and name not in _loading:
        with _lock:
            if name not in _loading:
                thread = _loading[name] = threading.Thread(target=_load, args=(name,), daemon=True,
                                                           name=f"tiktoken-{name}")
                thread.start()
    return encoding


def _encoding_name(model: str | None) -> str:
    # gpt-4o, gpt-4.1, o-series and later use o200k; older OpenAI models use cl100k.
    if model and model.startswith(("gpt-3.5", "gpt-4-", "text-embedding")) or model == "gpt-4":
        return "cl100k_base"
    return "o200k_base"


def preload(model: str | None = None, *, wait: float = 0.0) -> bool:
    """Start loading the encoding `model` needs (at start-up, not on the first reply
    without usage); wait up to `wait` seconds for it. Returns whether it is loaded."""
    name = _encoding_name(model)
    _encoding(name)
    if wait > 0:
        _loading[name].join(wait)
    return name in _loaded


def count_text(text: str, model: str | None = None) -> int:
    return _count(text, _encoding(_encoding_name(model)))


def count_messages(messages: Iterable[Mapping[str, Any]], model: str | None = None) -> int:
    """Prompt tokens of a chat request's messages."""
    return _count_messages(messages, _encoding(_encoding_name(model)))


def estimate_messages(messages: Iterable[Mapping[str, Any]]) -> int:
    """Prompt tokens of a chat request's messages by the four-characters rule, without
    tiktoken: a magnitude, cheap enough for the hot path."""
    return _count_messages(messages, None)


def _count_messages(messages: Iterable[Mapping[str, Any]], encoding: Any | None) -> int:
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


def counted_usage(
    messages: Iterable[Mapping[str, Any]],
    completion_text: str,
    model: str | None = None,
    *,
    tool_calls: Any = None,
) -> Usage:
    """Usage for a reply that came without one; `source` says how it was counted."""
    encoding = _encoding(_encoding_name(model))
    prompt = _count_messages(messages, encoding)
    completion = _count(completion_text, encoding)
    if tool_calls:
        completion += _count(json.dumps(tool_calls, separators=(",", ":")), encoding)
    return Usage(prompt, completion, prompt + completion, "tiktoken" if encoding is not None else "estimate")


def counted_input(texts: Iterable[str], model: str | None = None) -> Usage:
    """Usage of an embeddings call that came without one: the input's tokens."""
    encoding = _encoding(_encoding_name(model))
    prompt = sum(_count(text, encoding) for text in texts)
    return Usage(prompt, 0, prompt, "tiktoken" if encoding is not None else "estimate")


def _count(text: str, encoding: Any | None) -> int:
    if not text:
        return 0
    if encoding is not None:
        # disallowed_special=(): count a literal "<|endoftext|>" in user text as text.
        return len(encoding.encode(text, disallowed_special=()))
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN
