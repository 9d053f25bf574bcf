"""Tokenization shared by training, scoring and evaluation: chat-templated token ids with the loss
masked to the response tokens, micro-batch collation and packing."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from instructscale.chat import Conversation, conversation

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


def tokenize(row: dict, tokenizer, max_length: int) -> Example:
    """Token ids of the row's templated conversation; labels are -100 except on the final response."""
    return tokenize_turns(conversation(row), tokenizer, max_length, row.get("id"))


def tokenize_turns(turns: Conversation, tokenizer, max_length: int, row_id: str | None = None) -> Example:
    """As :func:`tokenize`, for chat turns that end with the assistant's response."""
    prompt_text = tokenizer.apply_chat_template(turns[:-1], add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(turns, tokenize=False)
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    if full[: len(prompt)] != prompt:
        raise ValueError(f"row {row_id}: chat template does not extend the prompt with the response")
    labels = [IGNORE] * len(prompt) + full[len(prompt) :]
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
