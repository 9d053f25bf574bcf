"""Cheap per-row scorers, run as a stateless Ray Data UDF: text statistics, heuristic filter
verdicts, verifier correctness, a normalised text hash and a MinHash signature (datasketch)."""
from __future__ import annotations

import hashlib
import json
import re

import pyarrow as pa
from datasketch import LeanMinHash, MinHash

from instructscale.demo.tasks import check_answer
from instructscale.select.config import DedupSettings, HeuristicSettings

_NON_WORD = re.compile(r"[^\w\s+\-*/=]")
_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower case, punctuation dropped (arithmetic operators kept), whitespace collapsed."""
    return _SPACE.sub(" ", _NON_WORD.sub(" ", text.lower())).strip()


def prompt_text(row: dict) -> str:
    if row.get("messages"):
        return "\n".join(m["content"] for m in row["messages"][:-1])
    return f"{row['instruction']}\n{row['input']}" if row.get("input") else row["instruction"]


def repetition(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one (0: none; near 1: a loop)."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def shingles(text: str, n: int) -> set[str]:
    words = text.split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def minhash(text: str, cfg: DedupSettings) -> bytes:
    """The serialised MinHash signature (datasketch LeanMinHash) of ``text``'s word n-grams."""
    m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
    m.update_batch([s.encode() for s in shingles(text, cfg.ngram)])
    lean = LeanMinHash(m)
    buf = bytearray(lean.bytesize())
    lean.serialize(buf)
    return bytes(buf)


def heuristic_reason(prompt: str, output: str, rep: float, cfg: HeuristicSettings) -> str | None:
    """The first heuristic filter the row fails, or None."""
    if len(prompt) < cfg.min_instruction_chars:
        return "instruction_too_short"
    if len(prompt) > cfg.max_instruction_chars:
        return "instruction_too_long"
    if len(output.strip()) < cfg.min_output_chars:
        return "output_too_short"
    if len(output) > cfg.max_output_chars:
        return "output_too_long"
    if rep > cfg.max_repetition:
        return "repetitive_output"
    if any(ch < " " and ch not in "\n\t\r" for ch in prompt + output):
        return "control_characters"
    if cfg.max_non_ascii is not None:
        text = prompt + output
        if text and sum(ord(ch) > 127 for ch in text) / len(text) > cfg.max_non_ascii:
            return "non_ascii"
    low = output.lower()
    if any(p in low for p in cfg.refusal_phrases):
        return "refusal"
    return None


def verified(row: dict) -> bool | None:
    """Whether the output matches metadata.answer; None where the row has no checkable answer."""
    answer = json.loads(row.get("metadata") or "{}").get("answer")
    return None if answer is None else check_answer(row.get("output"), str(answer))


def text_features(batch: pa.Table, heuristics: dict, dedup: dict) -> pa.Table:
    """``batch`` plus the cheap score columns (configs arrive as dicts: plain Ray Data kwargs)."""
    h, d = HeuristicSettings.model_validate(heuristics), DedupSettings.model_validate(dedup)
    cols: dict[str, list] = {k: [] for k in ("prompt_chars", "output_chars", "repetition", "heuristic_reason",
                                             "verified", "text_hash", "minhash")}
    for row in batch.to_pylist():
        prompt, output = prompt_text(row), row.get("output") or ""
        rep = repetition(output)
        key = normalize_text(prompt if d.fields == "prompt" else f"{prompt}\n{output}")
        cols["prompt_chars"].append(len(prompt))
        cols["output_chars"].append(len(output))
        cols["repetition"].append(rep)
        cols["heuristic_reason"].append(heuristic_reason(prompt, output, rep, h))
        cols["verified"].append(verified(row))
        cols["text_hash"].append(hashlib.sha1(key.encode()).hexdigest())
        cols["minhash"].append(minhash(key, d))
    types = {"prompt_chars": pa.int32(), "output_chars": pa.int32(), "repetition": pa.float32(),
             "heuristic_reason": pa.string(), "verified": pa.bool_(), "text_hash": pa.string(),
             "minhash": pa.binary()}
    for name, values in cols.items():
        batch = batch.append_column(name, pa.array(values, types[name]))
    return batch
