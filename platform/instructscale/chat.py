"""Chat formatting shared by every stage: canonical rows as conversations, prompt text, and tool calls.

Rows with tools are rendered through the tokenizer's chat template (``tools=``) when the template
knows tools. When it does not (SmolLM2's, the tiny models'), the documented fallback is: the tool
schemas join the system message inside ``<tools>...</tools>``, an assistant's tool calls are written
into its content as ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` (Hermes style), and tool
results stay turns of role ``tool``; null content becomes "".

An assistant turn's ``reasoning`` goes to the template under the key it reads (``reasoning_content``,
as Qwen3's, or ``thinking``). A template that reads neither gets it inline, before the turn's text:
``<think>\n{reasoning}\n</think>\n\n{text}``. Prompts for an inference engine leave earlier turns'
reasoning out.
"""

from __future__ import annotations

import json
import re

Conversation = list[dict]
TOOLS_PREAMBLE = "You can call these tools; to call one, answer with <tool_call>{...}</tool_call>:\n<tools>\n"


def user_turn(row: dict) -> str:
    """The user message of an instruction-style row: the instruction, then its input."""
    return f"{row['instruction']}\n\n{row['input']}" if row.get("input") else row["instruction"]


def render_tool_calls(calls: list[dict] | None) -> str:
    """Tool calls as text (the fallback rendering and a chat row's ``output``)."""
    out = []
    for call in calls or []:
        try:
            arguments = json.loads(call.get("arguments") or "{}")
        except json.JSONDecodeError:
            arguments = call.get("arguments")
        out.append(f"<tool_call>{json.dumps({'name': call['name'], 'arguments': arguments})}</tool_call>")
    return "\n".join(out)


def conversation(row: dict) -> Conversation:
    """The chat turns of a canonical row, ending with the assistant's response."""
    if row.get("messages"):
        return [dict(m) for m in row["messages"]]
    return [{"role": "user", "content": user_turn(row)}, {"role": "assistant", "content": row["output"]}]


def prompt_turns(row: dict, system: Conversation = ()) -> Conversation:
    """The turns a model answers: the conversation without its final assistant turn(s), with the
    ``system`` turn prepended unless the row has its own."""
    if row.get("messages"):
        turns = [dict(m) for m in row["messages"]]
        while turns and turns[-1]["role"] == "assistant":
            turns.pop()
    else:
        turns = [{"role": "user", "content": user_turn(row)}]
    return turns if turns and turns[0]["role"] == "system" else [*system, *turns]


def message_text(message: dict) -> str:
    """A message's text with its tool calls rendered (empty content as "")."""
    calls = render_tool_calls(message.get("tool_calls"))
    return "\n".join(t for t in ((message.get("content") or ""), calls) if t)


def prompt_text(row: dict) -> str:
    """The user-side text of a row (what filters, dedup and the judge look at)."""
    if row.get("messages"):
        return "\n".join(message_text(m) for m in row["messages"][:-1])
    return f"{row['instruction']}\n{row['input']}" if row.get("input") else row["instruction"]


def supports_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders ``tools`` and ``tool_calls`` itself."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return "tools" in template and "tool_calls" in template


def reasoning_key(tokenizer) -> str | None:
    """The message key under which the tokenizer's chat template reads a turn's reasoning, if any."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if "reasoning_content" in template:
        return "reasoning_content"
    return "thinking" if re.search(r"message(\.|\[['\"])thinking\b", template) else None


def inline_reasoning(reasoning: str, text: str) -> str:
    """The documented fallback: reasoning in ``<think>`` tags before the turn's text."""
    return f"<think>\n{reasoning}\n</think>\n\n{text}"


def _with_reasoning(out: dict, m: dict, key: str | None) -> dict:
    if not m.get("reasoning"):
        return out
    if key:
        return {**out, key: m["reasoning"]}
    return {**out, "content": inline_reasoning(m["reasoning"], out["content"])}


def plain_turns(
    turns: Conversation, tools: str | None = None, reasoning: bool = False, key: str | None = None
) -> Conversation:
    """The fallback rendering: role and text only, tool calls in the text, tools in the system
    message; with ``reasoning``, each turn's reasoning under ``key`` (None: inline)."""
    out = [{"role": m["role"], "content": message_text(m)} for m in turns]
    if reasoning:
        out = [_with_reasoning(o, m, key) for o, m in zip(out, turns)]
    if tools:
        block = TOOLS_PREAMBLE + tools + "\n</tools>"
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{block}"}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def openai_turns(turns: Conversation, key: str | None = None) -> Conversation:
    """Canonical turns as the OpenAI message format that tool-aware chat templates expect, each
    turn's reasoning under ``key`` (None: inline)."""
    out = []
    for m in turns:
        message = {"role": m["role"], "content": m.get("content") or ""}
        if m.get("tool_calls"):
            message["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": _arguments(c["arguments"])},
                }
                for c in m["tool_calls"]
            ]
        for name in ("tool_call_id", "name"):
            if m.get(name):
                message[name] = m[name]
        out.append(_with_reasoning(message, m, key))
    return out


def _arguments(text: str | None):
    try:
        return json.loads(text or "{}")
    except json.JSONDecodeError:
        return text


def template_turns(turns: Conversation, tools: str | None, tokenizer) -> tuple[Conversation, list | None]:
    """``(turns, tools)`` to hand to ``tokenizer.apply_chat_template``: structured when the template
    knows tools, the plain fallback otherwise; reasoning where the template reads it, else inline."""
    key = reasoning_key(tokenizer)
    if supports_tools(tokenizer):
        return openai_turns(turns, key), json.loads(tools) if tools else None
    return plain_turns(turns, tools, reasoning=True, key=key), None


def engine_turns(turns: Conversation, tools: str | None = None) -> Conversation:
    """Turns for an inference engine that applies the model's template itself (vLLM, an endpoint):
    role and text only, the tool schemas in the system message."""
    return plain_turns(turns, tools)
