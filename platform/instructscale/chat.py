"""Chat formatting shared by every stage: canonical rows as conversations and prompt text."""

from __future__ import annotations

Conversation = list[dict[str, str]]


def user_turn(row: dict) -> str:
    """The user message of an instruction-style row: the instruction, then its input."""
    return f"{row['instruction']}\n\n{row['input']}" if row.get("input") else row["instruction"]


def conversation(row: dict) -> Conversation:
    """The chat turns of a canonical row, ending with the assistant's response."""
    if row.get("messages"):
        return list(row["messages"])
    return [{"role": "user", "content": user_turn(row)}, {"role": "assistant", "content": row["output"]}]


def prompt_turns(row: dict, system: Conversation = ()) -> Conversation:
    """The turns a model answers: the conversation without its final assistant turn(s), with the
    ``system`` turn prepended unless the row has its own."""
    if row.get("messages"):
        turns = list(row["messages"])
        while turns and turns[-1]["role"] == "assistant":
            turns.pop()
    else:
        turns = [{"role": "user", "content": user_turn(row)}]
    return turns if turns and turns[0]["role"] == "system" else [*system, *turns]


def prompt_text(row: dict) -> str:
    """The user-side text of a row (what filters, dedup and the judge look at)."""
    if row.get("messages"):
        return "\n".join(m["content"] for m in row["messages"][:-1])
    return f"{row['instruction']}\n{row['input']}" if row.get("input") else row["instruction"]
