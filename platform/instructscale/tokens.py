"""Tokenization shared by training, scoring and evaluation: chat-templated token ids with the loss
masked to the assistant's turns, micro-batch collation and packing.

A turn's tokens are found by rendering the conversation up to it: the text the template adds for
assistant turn ``i`` (from the prompt ending with turn ``i-1`` plus the generation prompt, to the
conversation ending with turn ``i``) is trained; system, user and tool turns are not, nor an
assistant turn whose ``loss_weight`` is 0. A template that drops earlier turns' reasoning (Qwen3's)
renders such a turn without it in the full conversation: its trained span is then the rest of the
turn. Reasoning is trained by default; without it, the reasoning text is masked (tags around it
stay trained)."""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, TypeVar

import torch

from instructscale.chat import Conversation, conversation, template_turns

IGNORE = -100
Row = TypeVar("Row", bound=Hashable)


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int] | None = None  # set on packed sequences: restarts at 0 for every row


def tokenize(
    row: dict,
    tokenizer,
    max_length: int,
    train_on: Literal["assistant", "last"] = "assistant",
    reasoning: bool = True,
) -> Example:
    """Token ids of the row's templated conversation; labels are -100 except on its trained assistant
    turns (``train_on="last"``: on the final one only, whatever its loss weight)."""
    return tokenize_turns(
        conversation(row), tokenizer, max_length, row.get("id"), row.get("tools"), train_on, reasoning
    )


@lru_cache(maxsize=2)
def load_tokenizer(model: str):
    """The model's tokenizer (a directory or URI), once per process."""
    from transformers import AutoTokenizer

    from instructscale import storage

    return AutoTokenizer.from_pretrained(storage.local_dir(model))


def row_tokens(rows: list[dict], tokenizer, max_length: int, reasoning: bool = True) -> list[int]:
    """Each row's training tokens (its templated conversation, truncated), as the trainer tokenizes it."""
    return [len(tokenize(r, tokenizer, max_length, reasoning=reasoning).input_ids) for r in rows]


def _render(tokenizer, turns: Conversation, tools, generation_prompt: bool) -> str:
    kwargs = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(turns, add_generation_prompt=generation_prompt, tokenize=False, **kwargs)


def trained_spans(
    turns: Conversation,
    tools: str | None,
    tokenizer,
    train_on: str = "assistant",
    row_id: str | None = None,
    reasoning: bool = True,
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the turns to train on."""
    rendered, schemas = template_turns(turns, tools, tokenizer)
    full = _render(tokenizer, rendered, schemas, False)
    # the template's turns may start with an added system turn: pair assistant turns in order
    pairs = list(
        zip(
            (i for i, m in enumerate(rendered) if m["role"] == "assistant"),
            (m for m in turns if m["role"] == "assistant"),
        )
    )
    targets = pairs[-1:] if train_on == "last" else [(i, m) for i, m in pairs if m.get("loss_weight") != 0]
    spans = []
    for i, turn in targets:
        prompt = _render(tokenizer, rendered[:i], schemas, True)
        upto = _render(tokenizer, rendered[: i + 1], schemas, False)
        span = _turn_span(full, prompt, upto, turn.get("reasoning"))
        if span is None:
            raise ValueError(f"row {row_id}: chat template does not extend the conversation turn by turn")
        spans += [span] if reasoning else _without(full, span, turn.get("reasoning"))
    return full, spans


def _turn_span(full: str, prompt: str, upto: str, reasoning: str | None) -> tuple[int, int] | None:
    """Where the turn that ``upto`` ends with lies in ``full``; None if the template does not extend
    the conversation turn by turn. A turn whose reasoning ``full`` dropped is the rest of the turn."""
    if full.startswith(upto) and upto.startswith(prompt):
        return len(prompt), len(upto)
    if not (reasoning and full.startswith(prompt) and upto.startswith(prompt)):
        return None
    body = upto[len(prompt) :]
    for k in range(len(body) - 1, 0, -1):  # the longest tail of the turn that full renders
        if full.startswith(body[-k:], len(prompt)) and reasoning.strip() in body[:-k]:
            return len(prompt), len(prompt) + k
    return None


def _without(full: str, span: tuple[int, int], reasoning: str | None) -> list[tuple[int, int]]:
    """``span`` less the reasoning text inside it."""
    a, b = span
    at = full.find(reasoning, a, b) if reasoning else -1
    if at < 0:
        return [span]
    return [s for s in ((a, at), (at + len(reasoning), b)) if s[0] < s[1]]


def tokenize_turns(
    turns: Conversation,
    tokenizer,
    max_length: int,
    row_id: str | None = None,
    tools: str | None = None,
    train_on: str = "assistant",
    reasoning: bool = True,
) -> Example:
    """As :func:`tokenize`, for chat turns."""
    full, spans = trained_spans(turns, tools, tokenizer, train_on, row_id, reasoning)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = enc["input_ids"], []
    for token, (start, _) in zip(ids, enc["offset_mapping"]):
        labels.append(token if any(a <= start < b for a, b in spans) else IGNORE)
    return Example(ids[:max_length], labels[:max_length])


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; padded positions are ignored by the loss and the attention. Packed
    sequences get position ids instead of an attention mask: transformers then attends within each
    row only (a block-diagonal causal mask), and the padding is one more segment nothing attends to."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
        mask[i, : len(e.input_ids)] = 1
    if not any(e.position_ids for e in examples):
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
    positions = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        positions[i, :n] = torch.tensor(e.position_ids or list(range(n)))
        positions[i, n:] = torch.arange(width - n)
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def pack(examples: list[Example], max_length: int) -> list[Example]:
    """Consecutive examples (curriculum order kept) packed into sequences of at most ``max_length``
    tokens; each keeps its own positions and labels, and its first token is never a target (it
    would be predicted from the row before)."""
    packed: list[Example] = []
    cur = Example([], [], [])
    for e in examples:
        if cur.input_ids and len(cur.input_ids) + len(e.input_ids) > max_length:
            packed.append(cur)
            cur = Example([], [], [])
        cur.input_ids += e.input_ids
        cur.labels += [IGNORE, *e.labels[1:]]
        cur.position_ids += list(range(len(e.input_ids)))
    if cur.input_ids:
        packed.append(cur)
    return packed


def packed_batch(examples: list[Example], pad_id: int, pack_length: int | None = None) -> dict[str, torch.Tensor]:
    """A micro-batch of packed sequences of up to ``pack_length`` tokens; by default all of it in one
    sequence (as transformers' DataCollatorWithFlattening): no padding at all."""
    return collate(pack(examples, pack_length or sum(len(e.input_ids) for e in examples)), pad_id)


def group_by_length(
    steps: list[list[Row]], length: Callable[[Row], int], window: int, seed: int, first: int = 0
) -> list[list[Row]]:
    """Unpacked batches with little padding: the rows of every ``window`` consecutive steps are
    sorted by length and dealt back into steps of the same sizes, whose order within the window is
    then shuffled (seeded by the window's first step; ``steps`` starts at step ``first``, a multiple
    of ``window``). Rows never leave their window, so a curriculum's pacing holds."""
    if window <= 1:
        return steps
    out: list[list[Row]] = []
    for start in range(0, len(steps), window):
        chunk = steps[start : start + window]
        rows = sorted((r for s in chunk for r in s), key=length)
        grouped, k = [], 0
        for s in chunk:
            grouped.append(rows[k : k + len(s)])
            k += len(s)
        random.Random(seed * 1_000_003 + first + start).shuffle(grouped)
        out += grouped
    return out
