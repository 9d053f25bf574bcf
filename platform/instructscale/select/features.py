"""Cheap per-row features and the row filters, run as a stateless Ray Data UDF: text statistics, a
normalised text hash, a MinHash signature (datasketch) and the first filter each row fails."""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

import pyarrow as pa
from datasketch import LeanMinHash, MinHash

from instructscale.chat import prompt_text
from instructscale.plugins import RowFilter
from instructscale.select.config import DedupSettings

_NON_WORD = re.compile(r"[^\w\s+\-*/=]")
_SPACE = re.compile(r"\s+")
FEATURE_TYPES = {
    "prompt_chars": pa.int32(),
    "output_chars": pa.int32(),
    "repetition": pa.float32(),
    "filter_reason": pa.string(),
    "text_hash": pa.string(),
    "minhash": pa.binary(),
}


def normalize_text(text: str) -> str:
    """Lower case, punctuation dropped (arithmetic operators kept), whitespace collapsed."""
    return _SPACE.sub(" ", _NON_WORD.sub(" ", text.lower())).strip()


def repetition(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one (0: none; near 1: a loop)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def shingles(text: str, n: int) -> set[str]:
    words = text.split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def minhash(text: str, cfg: DedupSettings) -> bytes:
    """The serialised MinHash signature (datasketch LeanMinHash) of ``text``'s word n-grams."""
    m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
    m.update_batch([s.encode() for s in shingles(text, cfg.ngram)])
    lean = LeanMinHash(m)
    buf = bytearray(lean.bytesize())
    lean.serialize(buf)
    return bytes(buf)


@lru_cache(maxsize=8)
def _setup(cfg_json: str) -> tuple[list[RowFilter], DedupSettings]:
    """The configured filters (plug-ins imported in this worker) and dedup settings, once per process."""
    from instructscale.select.config import SelectConfig

    cfg = SelectConfig.model_validate_json(cfg_json)
    return [RowFilter.registry.build(f) for f in cfg.filters], cfg.dedup


def first_failure(row: dict, filters: list[RowFilter]) -> str | None:
    for f in filters:
        reason = f.filter(row)
        if reason:
            return reason
    return None


def text_features(batch: pa.Table, cfg_json: str) -> pa.Table:
    """``batch`` plus the cheap feature columns and ``filter_reason``."""
    filters, dedup = _setup(cfg_json)
    cols: dict[str, list] = {k: [] for k in FEATURE_TYPES}
    for row in batch.to_pylist():
        prompt, output = prompt_text(row), row.get("output") or ""
        key = normalize_text(prompt if dedup.fields == "prompt" else f"{prompt}\n{output}")
        row.update(prompt=prompt, prompt_chars=len(prompt), output_chars=len(output), repetition=repetition(output))
        for name in ("prompt_chars", "output_chars", "repetition"):
            cols[name].append(row[name])
        cols["filter_reason"].append(first_failure(row, filters))
        cols["text_hash"].append(hashlib.sha1(key.encode()).hexdigest())
        cols["minhash"].append(minhash(key, dedup))
    for name, values in cols.items():
        batch = batch.append_column(name, pa.array(values, FEATURE_TYPES[name]))
    return batch
