"""Python tools that ship with Orchesity (the sample tools.json uses them).

A python tool is a plain function: keyword arguments in (already checked against the
tool's schema), a JSON value out. A sync function runs in a thread, so it cannot stall
the event loop; an async one runs on the loop, which suits quick work that never waits
on anything (a thread hop costs more than these tools do).
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\b[\w'-]+\b", re.UNICODE)
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")


def stats(text: str) -> dict[str, int | float]:
    """Counts of characters, words, sentences and lines in `text`."""
    words = _WORD.findall(text)
    sentences = len(_SENTENCE_END.findall(text)) or (1 if text.strip() else 0)
    return {
        "characters": len(text),
        "characters_without_spaces": sum(1 for c in text if not c.isspace()),
        "words": len(words),
        "sentences": sentences,
        "lines": len(text.splitlines()) if text else 0,
        "average_word_length": round(sum(map(len, words)) / len(words), 2) if words else 0.0,
    }


async def text_stats(text: str) -> dict[str, int | float]:
    """The `text_stats` tool: `stats`, on the loop (it never waits on anything)."""
    return stats(text)
