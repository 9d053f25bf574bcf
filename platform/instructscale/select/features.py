"""Cheap per-row features and the row filters, run as a stateless Ray Data UDF: text statistics, a
normalised text hash, the word n-gram hashes and their MinHash signature (computed for the whole batch
at once), and the first filter each row fails."""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

import numpy as np
import pyarrow as pa
import xxhash

from instructscale.chat import prompt_text
from instructscale.plugins import RowFilter
from instructscale.process import Shipped
from instructscale.select.config import DedupSettings, SelectConfig

_NON_WORD = re.compile(r"[^\w\s+\-*/=]")
_SPACE = re.compile(r"\s+")
FEATURE_TYPES = {
    "prompt_chars": pa.int32(),
    "output_chars": pa.int32(),
    "repetition": pa.float32(),
    "filter_reason": pa.string(),
    "text_hash": pa.string(),
    "shingles": pa.list_(pa.uint32()),
    "minhash": pa.binary(),
}
_MERSENNE, _MAX_HASH = np.uint64((1 << 61) - 1), np.uint64((1 << 32) - 1)
_CHUNK = 1 << 15  # n-grams per (n-grams x num_perm) block of the batched MinHash


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


def shingle_hashes(text: str, n: int) -> np.ndarray:
    """The sorted distinct 32-bit hashes (xxh32) of ``text``'s word n-grams."""
    return np.unique(np.fromiter((xxhash.xxh32_intdigest(s.encode()) for s in shingles(text, n)), dtype=np.uint32))


@lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's (legacy scheme) MinHash permutations for this size and seed."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="legacy").permutations
    return a, b


def minhash_signatures(hashes: list[np.ndarray], cfg: DedupSettings) -> np.ndarray:
    """(rows, num_perm) uint32 MinHash signatures of every row's n-gram hashes, computed for the
    whole batch at once (numpy); equal to datasketch's ``MinHash(scheme="legacy")`` fed the same
    hashes. A row without n-grams keeps the empty signature (all ``2**32 - 1``)."""
    a, b = _permutations(cfg.num_perm, cfg.seed)
    out = np.full((len(hashes), cfg.num_perm), _MAX_HASH, dtype=np.uint64)
    sizes = np.fromiter(map(len, hashes), dtype=np.int64, count=len(hashes))
    rows = np.flatnonzero(sizes)
    chunk = (np.cumsum(sizes[rows]) - 1) // _CHUNK  # rows whose n-grams share one matrix
    for c in np.unique(chunk):
        take = rows[chunk == c]
        hv = np.concatenate([hashes[i] for i in take]).astype(np.uint64)[:, None]
        phv = np.bitwise_and((hv * a + b) % _MERSENNE, _MAX_HASH)
        out[take] = np.minimum.reduceat(phv, np.cumsum(sizes[take]) - sizes[take], axis=0)
    return out.astype(np.uint32)


@lru_cache(maxsize=8)
def _setup(shipped: Shipped[SelectConfig]) -> tuple[list[RowFilter], DedupSettings]:
    """The filters that run before scoring, and the dedup settings, once per process."""
    cfg = shipped.load()
    return [RowFilter.registry.build(f) for f in cfg.filters_before_scoring()], cfg.dedup


def token_counts(rows: list[dict], cfg: SelectConfig) -> pa.Array:
    """Each row's tokens as training counts them (a mixture in tokens), with the mixture's tokenizer."""
    from instructscale.tokens import load_tokenizer, row_tokens

    return pa.array(row_tokens(rows, load_tokenizer(cfg.mix.tokenizer), cfg.mix.max_length or 1 << 30), pa.int32())


def first_failure(row: dict, filters: list[RowFilter]) -> str | None:
    for f in filters:
        reason = f.filter(row)
        if reason:
            return reason
    return None


def text_features(batch: pa.Table, shipped: Shipped[SelectConfig]) -> pa.Table:
    """``batch`` plus the cheap feature columns and ``filter_reason`` (the filters before scoring)."""
    filters, dedup = _setup(shipped)
    cols: dict[str, list] = {k: [] for k in FEATURE_TYPES if k != "minhash"}
    rows = batch.to_pylist()
    if shipped.load().tokens_counted():
        batch = batch.append_column("tokens", token_counts(rows, shipped.load()))
    for row in rows:
        prompt, output = prompt_text(row), row.get("output") or ""
        key = normalize_text(prompt if dedup.fields == "prompt" else f"{prompt}\n{output}")
        row.update(prompt=prompt, prompt_chars=len(prompt), output_chars=len(output), repetition=repetition(output))
        for name in ("prompt_chars", "output_chars", "repetition"):
            cols[name].append(row[name])
        cols["filter_reason"].append(first_failure(row, filters))
        cols["text_hash"].append(hashlib.sha1(key.encode()).hexdigest())
        cols["shingles"].append(shingle_hashes(key, dedup.ngram))
    cols["minhash"] = [sig.tobytes() for sig in minhash_signatures(cols["shingles"], dedup).astype("<u4")]
    for name, values in cols.items():
        batch = batch.append_column(name, pa.array(values, FEATURE_TYPES[name]))
    return batch
