"""Turn one raw record (any supported row style) into a canonical row, or say exactly why not.

Row styles, detected per record:
- instruction style (canonical and Alpaca): ``instruction`` (required), ``input``, ``output``;
- chat style (ShareGPT and OpenAI messages): ``conversations`` with ``from``/``value`` or
  ``messages`` with ``role``/``content``.
Keys outside the canonical ones are kept in ``metadata``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from instructscale.schema import decode_metadata, encode_metadata

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
}
CANONICAL_KEYS = {"id", "instruction", "input", "output", "messages", "source", "metadata"}


class RowError(ValueError):
    """A record is malformed; ``code`` is a short category, the message names the field."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True)
class RecordLimits:
    """Bounds on one record; a value over a bound quarantines the row (reason ``oversize``)."""

    max_field_chars: int = 32_768
    max_messages: int = 256


def _str_field(rec: dict, key: str, *, required: bool, limits: RecordLimits, allow_null: bool = False) -> str | None:
    if rec.get(key) is None:  # absent and null are the same thing in JSON pools
        if required:
            raise RowError("missing_field", f"missing field '{key}'")
        return None if allow_null else ""
    value = rec[key]
    if not isinstance(value, str):
        raise RowError("wrong_type", f"field '{key}' must be a string, got {type(value).__name__}")
    if len(value) > limits.max_field_chars:
        raise RowError(
            "oversize", f"field '{key}' has {len(value)} chars, over max_field_chars={limits.max_field_chars}"
        )
    if required and not value.strip():
        raise RowError("empty_field", f"field '{key}' is empty")
    return value


def _messages(rec: dict, limits: RecordLimits) -> list[dict[str, str]]:
    key = "conversations" if "conversations" in rec else "messages"
    turns = rec[key]
    if not isinstance(turns, list):
        raise RowError("wrong_type", f"field '{key}' must be a list, got {type(turns).__name__}")
    if not turns:
        raise RowError("empty_field", f"field '{key}' is empty")
    if len(turns) > limits.max_messages:
        raise RowError("oversize", f"field '{key}' has {len(turns)} turns, over max_messages={limits.max_messages}")
    out = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise RowError("wrong_type", f"field '{where}' must be an object, got {type(turn).__name__}")
        role_key, text_key = ("from", "value") if "from" in turn else ("role", "content")
        role, text = turn.get(role_key), turn.get(text_key)
        if role is None or text is None:
            missing = role_key if role is None else text_key
            raise RowError("missing_field", f"missing field '{where}.{missing}'")
        if not isinstance(role, str) or not isinstance(text, str):
            raise RowError("wrong_type", f"fields '{where}.{role_key}'/'{text_key}' must be strings")
        if role.lower() not in SHAREGPT_ROLES:
            raise RowError("bad_value", f"field '{where}.{role_key}' has unknown role {role!r}")
        if len(text) > limits.max_field_chars:
            raise RowError(
                "oversize",
                f"field '{where}.{text_key}' has {len(text)} chars, over max_field_chars={limits.max_field_chars}",
            )
        out.append({"role": SHAREGPT_ROLES[role.lower()], "content": text})
    if not any(m["role"] == "user" and m["content"].strip() for m in out):
        raise RowError("empty_field", f"field '{key}' has no non-empty user turn")
    return out


def _metadata(rec: dict, extra: dict[str, Any]) -> str:
    meta = rec.get("metadata")
    if meta is None:
        meta = {}
    elif isinstance(meta, str):
        try:
            meta = decode_metadata(meta)
        except json.JSONDecodeError:
            raise RowError("wrong_type", "field 'metadata' is a string but not JSON") from None
    if not isinstance(meta, dict):
        raise RowError("wrong_type", f"field 'metadata' must be an object, got {type(meta).__name__}")
    return encode_metadata({**extra, **meta} if extra else meta)


def default_id(file: str, line: int) -> str:
    """Stable id for a record that has none: a hash of its file name and line."""
    return hashlib.sha1(f"{file}:{line}".encode()).hexdigest()[:16]


def normalize_record(rec: Any, *, style: str, file: str, line: int, source: str, limits: RecordLimits) -> dict:
    """Canonical row for ``rec``; raises :class:`RowError`. ``style``: auto, instruction or chat."""
    if not isinstance(rec, dict):
        raise RowError("wrong_type", f"row must be a JSON object, got {type(rec).__name__}")
    is_chat = "conversations" in rec or ("messages" in rec and "instruction" not in rec)
    if style == "instruction" and is_chat:
        raise RowError(
            "wrong_format", "expected an instruction-style row, found a chat ('conversations'/'messages') row"
        )
    if style == "chat" and not is_chat:
        raise RowError("missing_field", "missing field 'conversations' (or 'messages')")
    row_id = rec.get("id")
    if row_id is None:
        row_id = default_id(file, line)
    elif isinstance(row_id, int) and not isinstance(row_id, bool):
        row_id = str(row_id)
    elif not isinstance(row_id, str) or not row_id:
        raise RowError("wrong_type", "field 'id' must be a non-empty string or integer")
    src = _str_field(rec, "source", required=False, limits=limits) or source
    extra = {k: v for k, v in rec.items() if k not in CANONICAL_KEYS | {"conversations"}}
    if is_chat:
        messages = _messages(rec, limits)
        users = [m["content"] for m in messages if m["role"] == "user"]
        last = messages[-1]
        return {
            "id": row_id,
            "instruction": users[0],
            "input": "",
            "output": last["content"] if last["role"] == "assistant" else None,
            "messages": messages,
            "source": src,
            "metadata": _metadata(rec, extra),
        }
    return {
        "id": row_id,
        "instruction": _str_field(rec, "instruction", required=True, limits=limits),
        "input": _str_field(rec, "input", required=False, limits=limits),
        "output": _str_field(rec, "output", required=False, limits=limits, allow_null=True),
        "messages": _messages(rec, limits) if rec.get("messages") is not None else None,
        "source": src,
        "metadata": _metadata(rec, extra),
    }
