"""Turn one raw record (any supported row style) into a canonical row, or say exactly why not.

Row styles, detected per record:
- instruction style (canonical and Alpaca): ``instruction`` (required), ``input``, ``output``, and
  optionally ``system`` and ``history`` (earlier ``[query, response]`` pairs: the row becomes a chat);
- Self-Instruct seed tasks (``format: seed_tasks``): ``instruction`` and ``instances`` (the first
  one is the row's input and output; all of them stay in metadata);
- chat style: ShareGPT ``conversations`` (``from``/``value``; ``human``, ``gpt``, ``system``,
  ``function_call`` and ``observation`` turns) or OpenAI ``messages`` (``role``/``content`` with
  ``tool_calls``, role ``tool`` with ``tool_call_id``, content as a string, a list of text parts or
  null), with an optional ``system`` and ``tools`` (JSON schemas, a list or a JSON string).
A message's content may also be a list of LLaMA-Factory v1 parts (``{"type", "value"}``, or
``"text"`` for the value): ``text``; ``reasoning`` (an assistant turn's reasoning, kept apart from its
text); ``tool_call``/``tool_calls`` (a JSON call or list of calls); ``tools`` (the row's tool schemas).
An assistant turn's ``reasoning_content`` (or ``reasoning``) key is its reasoning too. A message's
``loss_weight`` (or OpenAI's ``weight``), 0 or 1, says whether an assistant turn is trained; 1 on
another role is refused.
A per-input ``columns`` mapping (as LLaMA-Factory's dataset_info) renames other field names and role
tags first. Keys outside the canonical ones are kept in ``metadata``. A row with media (a non-empty
``images``, ``videos`` or ``audios`` column, or an image, audio or video part) is refused as
``unsupported_modality``: a text model would learn to answer about media it never sees. Placeholder
text such as ``<image>`` without media stays text.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from instructscale.chat import render_tool_calls
from instructscale.schema import decode_metadata, encode_metadata

ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
    "function_call": "function_call",
}
CANONICAL_KEYS = {
    "id",
    "instruction",
    "input",
    "output",
    "messages",
    "source",
    "metadata",
    "tools",
    "system",
    "history",
}
TEXT_PARTS = {"text", "input_text", "output_text"}
MEDIA_COLUMNS = ("images", "videos", "audios")
MEDIA_PARTS = {"image_url", "image", "input_image", "video", "video_url", "audio", "audio_url", "input_audio", "file"}


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


@dataclass(frozen=True)
class ColumnMap:
    """Where a dataset keeps the canonical fields (LLaMA-Factory's dataset_info ``columns`` and
    ``tags``): source field names by canonical name, and role tag values by canonical tag."""

    columns: dict[str, str] = field(default_factory=dict)  # prompt, query, response, history, system, messages, tools
    tags: dict[str, str] = field(default_factory=dict)  # role_tag, content_tag, user_tag, assistant_tag, ...

    def apply(self, rec: dict) -> dict:
        if not self.columns:
            return rec
        names = {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "history": "history",
            "system": "system",
            "messages": "messages",
            "tools": "tools",
            "id": "id",
        }
        out = {k: v for k, v in rec.items() if k not in self.columns.values()}
        for canonical, source in self.columns.items():
            if source in rec:
                out[names.get(canonical, canonical)] = rec[source]
        return out


def _str_field(rec: dict, key: str, *, required: bool, limits: RecordLimits, allow_null: bool = False) -> str | None:
    if rec.get(key) is None:  # absent and null are the same thing in JSON pools
        if required:
            raise RowError("missing_field", f"missing field '{key}'")
        return None if allow_null else ""
    value = rec[key]
    if not isinstance(value, str):
        raise RowError("wrong_type", f"field '{key}' must be a string, got {type(value).__name__}")
    _check_size(value, key, limits)
    if required and not value.strip():
        raise RowError("empty_field", f"field '{key}' is empty")
    return value


def _check_size(text: str, where: str, limits: RecordLimits) -> None:
    if len(text) > limits.max_field_chars:
        raise RowError(
            "oversize", f"field '{where}' has {len(text)} chars, over max_field_chars={limits.max_field_chars}"
        )


@dataclass
class Parts:
    """What a message's content holds, by kind."""

    text: str | None = None
    reasoning: str | None = None
    tool_calls: list[dict] = field(default_factory=list)
    tools: list | None = None


def _parts(value: Any, where: str, limits: RecordLimits) -> Parts:
    """A message's content: a string, null, or a list of typed parts (OpenAI's ``text`` key or
    LLaMA-Factory v1's ``value``); media parts are refused."""
    if value is None or isinstance(value, str):
        parts = Parts(text=value)
    elif isinstance(value, list):
        parts = Parts()
        for j, part in enumerate(value):
            _add_part(parts, part, f"{where}[{j}]")
    else:
        raise RowError("wrong_type", f"field '{where}' must be a string, a list of parts or null")
    for text in (parts.text, parts.reasoning):
        if text is not None:
            _check_size(text, where, limits)
    return parts


def _add_part(parts: Parts, part: Any, where: str) -> None:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in MEDIA_PARTS:
        raise RowError("unsupported_modality", f"field '{where}' is a {kind} part; only text is supported")
    if kind is None:
        raise RowError("wrong_type", f"field '{where}' must be an object with a 'type'")
    value = part.get("value", part.get("text"))
    if kind in TEXT_PARTS or kind == "reasoning":
        if not isinstance(value, str):
            raise RowError("wrong_type", f"field '{where}.value' must be a string")
        attr = "text" if kind in TEXT_PARTS else "reasoning"
        setattr(parts, attr, (getattr(parts, attr) or "") + value)
    elif kind in ("tool_call", "tool_calls"):
        calls = _json_value(value, f"{where}.value")
        parts.tool_calls += _tool_calls(calls if isinstance(calls, list) else [calls], f"{where}.value")
    elif kind == "tools":
        tools = _json_value(value, f"{where}.value")
        parts.tools = (parts.tools or []) + (tools if isinstance(tools, list) else [tools])
    else:
        raise RowError("bad_value", f"field '{where}' has unknown part type {kind!r}")


def _json_value(value: Any, where: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise RowError("wrong_type", f"field '{where}' is a string but not JSON") from None
    return value


def _tool_calls(value: Any, where: str) -> list[dict] | None:
    """OpenAI ``tool_calls`` as canonical ``{id, name, arguments}`` (arguments a JSON string)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise RowError("wrong_type", f"field '{where}' must be a list")
    calls = []
    for j, call in enumerate(value):
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise RowError("missing_field", f"missing field '{where}[{j}].function.name'")
        args = fn.get("arguments", {})
        calls.append(
            {
                "id": str(call.get("id") or f"call_{j}"),
                "name": fn["name"],
                "arguments": args if isinstance(args, str) else json.dumps(args, sort_keys=True),
            }
        )
    return calls


def _turn(turn: Any, where: str, limits: RecordLimits, tags: dict[str, str]) -> dict:
    if not isinstance(turn, dict):
        raise RowError("wrong_type", f"field '{where}' must be an object, got {type(turn).__name__}")
    sharegpt = "from" in turn or tags.get("role_tag") in turn
    role_key = tags.get("role_tag", "from") if sharegpt else "role"
    text_key = tags.get("content_tag", "value") if sharegpt else "content"
    role = turn.get(role_key)
    if not isinstance(role, str):
        raise RowError(
            "missing_field" if role is None else "wrong_type", f"field '{where}.{role_key}' must be a string"
        )
    tag_roles = {
        tags[k]: v
        for k, v in (
            ("user_tag", "user"),
            ("assistant_tag", "assistant"),
            ("system_tag", "system"),
            ("observation_tag", "tool"),
            ("function_tag", "function_call"),
        )
        if k in tags
    }
    canonical = tag_roles.get(role) or ROLES.get(role.lower())
    if canonical is None:
        raise RowError("bad_value", f"field '{where}.{role_key}' has unknown role {role!r}")
    if canonical == "function_call":  # ShareGPT: the value is {"name": ..., "arguments": ...}
        call = _json_value(turn.get(text_key), f"{where}.{text_key}")
        calls = _tool_calls([call] if isinstance(call, dict) else call, f"{where}.{text_key}")
        return {"role": "assistant", "content": None, "tool_calls": calls}
    if text_key not in turn and not turn.get("tool_calls"):
        raise RowError("missing_field", f"missing field '{where}.{text_key}'")
    parts = _parts(turn.get(text_key), f"{where}.{text_key}", limits)
    message: dict[str, Any] = {"role": canonical, "content": parts.text}
    calls = parts.tool_calls + (_tool_calls(turn.get("tool_calls"), f"{where}.tool_calls") or [])
    reasoning = parts.reasoning or _reasoning_key(turn, where, limits)
    if (calls or reasoning) and canonical != "assistant":
        raise RowError("bad_value", f"field '{where}' is a {canonical} turn with tool calls or reasoning")
    if calls:
        message["tool_calls"] = calls
    elif parts.text is None and not (parts.tools and canonical == "system"):
        raise RowError("missing_field", f"field '{where}.{text_key}' is null")
    if reasoning:
        message["reasoning"] = reasoning
    if parts.tools:
        message["tools"] = parts.tools  # lifted to the row by _messages
    weight_key = "loss_weight" if "loss_weight" in turn else "weight"  # OpenAI fine-tuning's name for it
    if turn.get(weight_key) is not None:  # null: the role's default
        message["loss_weight"] = _loss_weight(turn[weight_key], canonical, f"{where}.{weight_key}")
    for key in ("tool_call_id", "name"):
        if isinstance(turn.get(key), str):
            message[key] = turn[key]
    return message


def _reasoning_key(turn: dict, where: str, limits: RecordLimits) -> str | None:
    value = turn.get("reasoning_content", turn.get("reasoning"))
    if value is not None and not isinstance(value, str):
        raise RowError("wrong_type", f"field '{where}.reasoning_content' must be a string")
    if value:
        _check_size(value, f"{where}.reasoning_content", limits)
    return value or None


def _loss_weight(value: Any, role: str, where: str) -> float:
    """A turn's ``loss_weight``: 0 or 1 (per-token weights are not supported), 1 only on assistant turns."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value not in (0, 1):
        raise RowError("bad_value", f"field '{where}' is {value!r}; only 0 and 1 are supported")
    if value == 1 and role != "assistant":
        raise RowError("bad_value", f"field '{where}' is 1 on a {role} turn; only assistant turns train")
    return float(value)


def _messages(rec: dict, limits: RecordLimits, tags: dict[str, str]) -> tuple[list[dict], list]:
    """The row's turns, and the tool schemas its turns gave as ``tools`` parts (a system turn that
    held nothing else is dropped)."""
    key = "conversations" if "conversations" in rec else "messages"
    turns = rec[key]
    if not isinstance(turns, list):
        raise RowError("wrong_type", f"field '{key}' must be a list, got {type(turns).__name__}")
    if not turns:
        raise RowError("empty_field", f"field '{key}' is empty")
    if len(turns) > limits.max_messages:
        raise RowError("oversize", f"field '{key}' has {len(turns)} turns, over max_messages={limits.max_messages}")
    out = [_turn(turn, f"{key}[{i}]", limits, tags) for i, turn in enumerate(turns)]
    tools = [t for m in out for t in m.pop("tools", [])]
    out = [m for m in out if m["content"] is not None or m.get("tool_calls") or m["role"] != "system"]
    system = _str_field(rec, "system", required=False, limits=limits)
    if system and (not out or out[0]["role"] != "system"):
        out.insert(0, {"role": "system", "content": system})
    if not any(m["role"] == "user" and (m["content"] or "").strip() for m in out):
        raise RowError("empty_field", f"field '{key}' has no non-empty user turn")
    return out, tools


def _history_messages(rec: dict, limits: RecordLimits) -> list[dict] | None:
    """An Alpaca row with ``history`` or ``system`` as chat turns (None when it has neither)."""
    history, system = rec.get("history"), rec.get("system")
    if not history and not system:
        return None
    if history is not None and (
        not isinstance(history, list)
        or not all(isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in history)
    ):
        raise RowError("wrong_type", "field 'history' must be a list of [query, response] string pairs")
    messages = (
        [{"role": "system", "content": _str_field(rec, "system", required=False, limits=limits)}] if system else []
    )
    for query, response in history or []:
        messages += [{"role": "user", "content": query}, {"role": "assistant", "content": response}]
    instruction = _str_field(rec, "instruction", required=True, limits=limits)
    inp = _str_field(rec, "input", required=False, limits=limits)
    messages.append({"role": "user", "content": f"{instruction}\n\n{inp}" if inp else instruction})
    output = _str_field(rec, "output", required=False, limits=limits, allow_null=True)
    if output is not None:
        messages.append({"role": "assistant", "content": output})
    return messages


def _tools(rec: dict, from_parts: list) -> str | None:
    """The row's tool schemas as a JSON list: its ``tools`` field and its turns' ``tools`` parts."""
    value = rec.get("tools")
    tools = [] if value is None or value == "" else _json_value(value, "tools")
    if not isinstance(tools, list):
        raise RowError("wrong_type", "field 'tools' must be a list of JSON schemas")
    tools = tools + from_parts
    return json.dumps(tools, sort_keys=True) if tools else None


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


def _row_id(rec: dict, file: str, line: int) -> str:
    row_id = rec.get("id")
    if row_id is None:
        return default_id(file, line)
    if isinstance(row_id, int) and not isinstance(row_id, bool):
        return str(row_id)
    if not isinstance(row_id, str) or not row_id:
        raise RowError("wrong_type", "field 'id' must be a non-empty string or integer")
    return row_id


def _from_messages(messages: list[dict]) -> tuple[str, str | None]:
    """``instruction`` (the first user text) and ``output`` (the final assistant turn, its tool calls
    rendered as text) of a chat row."""
    first_user = next(m["content"] for m in messages if m["role"] == "user" and (m["content"] or "").strip())
    last = messages[-1]
    if last["role"] != "assistant":
        return first_user, None
    return first_user, (last.get("content") or "") + render_tool_calls(last.get("tool_calls"))


def _from_seed_task(rec: dict) -> dict:
    """A Self-Instruct seed task (``id``, ``name``, ``instruction``, ``instances: [{input, output}]``,
    ``is_classification``) as an instruction-style record: its first instance as input and output;
    name, every instance and is_classification go to metadata with the other extra keys."""
    instances = rec.get("instances")
    if instances is None:
        raise RowError("missing_field", "missing field 'instances'")
    if not isinstance(instances, list) or not instances or not all(isinstance(i, dict) for i in instances):
        raise RowError("wrong_type", "field 'instances' must be a non-empty list of {input, output} objects")
    first = instances[0]
    return {
        **rec,
        "input": first.get("input") or "",
        "output": first.get("output"),
        "is_classification": bool(rec.get("is_classification", False)),
    }


def _refuse_media(rec: dict) -> None:
    for key in MEDIA_COLUMNS:
        media = rec.get(key)
        if media:
            n = len(media) if isinstance(media, list) else 1
            raise RowError("unsupported_modality", f"field '{key}' holds {n} media item(s); only text is supported")


def normalize_record(
    rec: Any, *, style: str, file: str, line: int, source: str, limits: RecordLimits, columns: ColumnMap = ColumnMap()
) -> dict:
    """Canonical row for ``rec``; raises :class:`RowError`. ``style``: auto, instruction, chat or
    seed_task."""
    if not isinstance(rec, dict):
        raise RowError("wrong_type", f"row must be a JSON object, got {type(rec).__name__}")
    rec = columns.apply(rec)
    _refuse_media(rec)
    if style == "seed_task":
        rec, style = _from_seed_task(rec), "instruction"
    is_chat = "conversations" in rec or ("messages" in rec and "instruction" not in rec)
    if style == "instruction" and is_chat:
        raise RowError(
            "wrong_format", "expected an instruction-style row, found a chat ('conversations'/'messages') row"
        )
    if style == "chat" and not is_chat:
        raise RowError("missing_field", "missing field 'conversations' (or 'messages')")
    extra = {k: v for k, v in rec.items() if k not in CANONICAL_KEYS | {"conversations"}}
    row = {
        "id": _row_id(rec, file, line),
        "source": _str_field(rec, "source", required=False, limits=limits) or source,
        "metadata": _metadata(rec, extra),
    }
    tools: list = []
    if is_chat:
        messages, tools = _messages(rec, limits, columns.tags)
        instruction, output = _from_messages(messages)
        row |= {"instruction": instruction, "input": "", "output": output}
    else:
        messages = _history_messages(rec, limits)
        if messages is None and rec.get("messages") is not None:
            messages, tools = _messages(rec, limits, columns.tags)
        row |= {
            "instruction": _str_field(rec, "instruction", required=True, limits=limits),
            "input": _str_field(rec, "input", required=False, limits=limits),
            "output": _str_field(rec, "output", required=False, limits=limits, allow_null=True),
        }
    return {**row, "tools": _tools(rec, tools), "messages": messages}
