"""Training examples: chat-templated token ids with the loss masked to the response tokens."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


def conversation(row: dict) -> list[dict[str, str]]:
    """The chat turns of a canonical row, ending with the assistant's response."""
    if row.get("messages"):
        return list(row["messages"])
    user = f"{row['instruction']}\n\n{row['input']}" if row.get("input") else row["instruction"]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]


def tokenize(row: dict, tokenizer, max_length: int) -> Example:
    """Token ids of the templated conversation; labels are -100 except on the final response."""
    return tokenize_turns(conversation(row), tokenizer, max_length, row.get("id"))


def tokenize_turns(turns: list[dict[str, str]], tokenizer, max_length: int, row_id: str | None = None) -> Example:
    """As :func:`tokenize`, for chat turns that end with the assistant's response."""
    prompt_text = tokenizer.apply_chat_template(turns[:-1], add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(turns, tokenize=False)
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    if full[: len(prompt)] != prompt:
        raise ValueError(f"row {row_id}: chat template does not extend the prompt with the response")
    labels = [IGNORE] * len(prompt) + full[len(prompt):]
    return Example(full[:max_length], labels[:max_length])


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; padded positions are ignored by the loss and the attention."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
        mask[i, : len(e.input_ids)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def pack(examples: list[Example], max_length: int) -> list[Example]:
    """Greedy packing of consecutive examples into sequences of at most ``max_length`` tokens."""
    packed: list[Example] = []
    cur = Example([], [])
    for e in examples:
        if cur.input_ids and len(cur.input_ids) + len(e.input_ids) > max_length:
            packed.append(cur)
            cur = Example([], [])
        cur = Example(cur.input_ids + e.input_ids, cur.labels + e.labels)
    if cur.input_ids:
        packed.append(cur)
    return packed


def difficulty_of(row: dict, key: str) -> float:
    """Difficulty from a column, else from the metadata JSON; missing difficulty is an error."""
    value = row.get(key)
    if value is None:
        value = json.loads(row.get("metadata") or "{}").get(key)
    if value is None:
        raise ValueError(f"row {row.get('id')}: no '{key}' column or metadata key for the curriculum")
    return float(value)


def usable_rows(table: pa.Table) -> pa.Table:
    """Rows with a non-empty response and no `reject_reason` (the rows training can use)."""
    mask = pc.and_(pc.is_valid(table["output"]), pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(table["output"])), 0))
    if "reject_reason" in table.column_names:
        mask = pc.and_(mask, pc.is_null(table["reject_reason"]))
    return table.filter(mask)


def read_training_columns(path: str, columns: list[str], ids: set[str] | None = None) -> pa.Table:
    """``columns`` (those that exist) of the usable rows of a Parquet pool directory; with ``ids``,
    only those rows (filtered while scanning, so only they are held in memory)."""
    dataset = pads.dataset(path, format="parquet")
    names = dataset.schema.names
    filters = [c for c in ("output", "reject_reason") if c in names]
    wanted = None if ids is None else pc.field("id").isin(pa.array(sorted(ids), pa.string()))
    return usable_rows(dataset.to_table(columns=sorted({c for c in columns if c in names} | set(filters)),
                                        filter=wanted))
