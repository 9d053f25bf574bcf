"""Duplicate detection over the rows that passed the filters: exact (normalised text hash) and
near (MinHash LSH from datasketch). Within a group of duplicates the best-scored row is kept
(ties: smallest id), so the outcome does not depend on the order rows streamed in."""

from __future__ import annotations

import numpy as np
from datasketch import LeanMinHash, MinHashLSH

from instructscale.select.config import DedupSettings


def find_duplicates(
    ids: list[str], text_hash: list[str], signatures: list[bytes], priority: np.ndarray, cfg: DedupSettings
) -> dict[int, tuple[str, int]]:
    """Row position -> (reason, position of the row it duplicates) for every duplicate.

    ``priority``: higher is kept first. Exact duplicates are resolved first, near duplicates
    are then searched among the remaining rows.
    """
    order = sorted(range(len(ids)), key=lambda i: (-priority[i], ids[i]))
    dups: dict[int, tuple[str, int]] = {}
    if cfg.exact:
        first: dict[str, int] = {}
        for i in order:
            if text_hash[i] in first:
                dups[i] = ("exact_duplicate", first[text_hash[i]])
            else:
                first[text_hash[i]] = i
    if cfg.near:
        lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
        kept: dict[int, LeanMinHash] = {}
        for i in order:
            if i in dups:
                continue
            m = LeanMinHash.deserialize(signatures[i])
            # LSH buckets give candidates; the signature estimate confirms them
            hits = [j for j in lsh.query(m) if m.jaccard(kept[j]) >= cfg.threshold]
            if hits:
                dups[i] = ("near_duplicate", min(hits, key=lambda j: (-priority[j], ids[j])))
            else:
                lsh.insert(i, m)
                kept[i] = m
    return dups
