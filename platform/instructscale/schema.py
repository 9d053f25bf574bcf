"""The one canonical Arrow schema for instruction rows, shared by every stage.

`metadata` is a JSON-encoded object (task family, difficulty, reference answer, ...): Arrow
structs need one fixed set of keys, and pools from different sources never agree on one. Messages
carry OpenAI-style tool calls (``arguments`` a JSON string), ``tool_call_id`` and ``name``, an
assistant turn's ``reasoning`` and a turn's ``loss_weight`` (null: the role's default, assistant
turns trained); ``tools`` holds the row's tool JSON schemas as a JSON list. Rows written before
``reasoning`` and ``loss_weight`` existed (schema 3) read as rows with both null.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

TOOL_CALL_TYPE = pa.struct([("id", pa.string()), ("name", pa.string()), ("arguments", pa.string())])
MESSAGE_TYPE = pa.struct(
    [
        ("role", pa.string()),
        ("content", pa.string()),
        ("tool_calls", pa.list_(TOOL_CALL_TYPE)),
        ("tool_call_id", pa.string()),
        ("name", pa.string()),
        ("reasoning", pa.string()),
        ("loss_weight", pa.float64()),
    ]
)

POOL_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("instruction", pa.string(), nullable=False),
        pa.field("input", pa.string(), nullable=False),
        pa.field("output", pa.string(), nullable=True),
        pa.field("messages", pa.list_(MESSAGE_TYPE), nullable=True),
        pa.field("source", pa.string(), nullable=False),
        pa.field("metadata", pa.string(), nullable=False),
        pa.field("tools", pa.string(), nullable=True),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("file", pa.string()),
        pa.field("line", pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("raw", pa.string()),
    ]
)

POOL_COLUMNS = tuple(POOL_SCHEMA.names)


def encode_metadata(meta: dict[str, Any] | None) -> str:
    """Serialise a metadata dict to the canonical JSON string (sorted keys, compact)."""
    return json.dumps(meta or {}, sort_keys=True, separators=(",", ":"))


def decode_metadata(text: str | None) -> dict[str, Any]:
    """Inverse of :func:`encode_metadata`; empty or null metadata decodes to ``{}``."""
    return json.loads(text) if text else {}
