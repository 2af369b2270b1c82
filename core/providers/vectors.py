"""Embedding vectors on the wire: OpenAI's `encoding_format: "base64"`.

That format is the vector's float32 values, little-endian, base64-encoded; the openai
SDK asks for it by default (it is a quarter of the JSON's size) and decodes it itself.
"""

from __future__ import annotations

import base64
import binascii
import sys
from array import array


def encode_base64(vector: list[float]) -> str:
    values = array("f", vector)
    if sys.byteorder == "big":
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")


def decode_base64(text: str) -> list[float]:
    """The floats of a base64 float32 vector; ValueError when it is not one."""
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {exc}") from None
    if len(raw) % 4:
        raise ValueError(f"{len(raw)} bytes is not a whole number of float32 values")
    values = array("f")
    values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()
