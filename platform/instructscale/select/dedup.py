"""Duplicate detection among the rows that passed the filters, as one Ray Data shuffle.

Every row becomes a few *key rows*: one keyed by its normalised text hash (exact duplicates) and one
per LSH band of its MinHash signature (near-duplicate candidates; with exact dedup on, only for the
smallest id of each text in a batch). A hash groupby brings equal keys
together; in each bucket, rows with the same text are exact duplicates, and the other rows are
verified against the bucket's anchor (its smallest id; every pair in a small bucket) by the exact
Jaccard similarity of their word n-gram hashes. The result is a table of pairs, whose size follows
the duplicates, not the pool; :func:`resolve` turns it into clusters (connected components) and
keeps the best-scored row of each (ties: smallest id), so the outcome does not depend on the order
rows streamed in. Rows carry their score through the shuffle for that.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from instructscale.select.config import DedupSettings

PAIRS = pa.schema(
    [
        ("kind", pa.string()),
        ("id", pa.string()),
        ("other", pa.string()),
        ("score", pa.float64()),
        ("other_score", pa.float64()),
    ]
)
DUPLICATES = pa.schema([("id", pa.string()), ("reason", pa.string()), ("duplicate_of", pa.string())])
EXACT_BAND = -1
SMALL_BUCKET = 16  # buckets up to this size verify every pair, larger ones each row against the anchor
_MIX = np.uint64(0x9E3779B97F4A7C15)


def lsh_bands(threshold: float, num_perm: int, recall: float) -> tuple[int, int]:
    """(bands, rows per band): the most selective banding whose chance of making a pair at exactly
    ``threshold`` a candidate, ``1 - (1 - t**r)**b``, is at least ``recall``."""
    for r in range(num_perm, 0, -1):
        p = threshold**r
        if p >= 1:
            return 1, r
        if p > 0 and (b := math.ceil(math.log(1 - recall) / math.log1p(-p))) * r <= num_perm:
            return b, r
    return num_perm, 1


def _band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(rows, bands) int64 keys: a multiplicative hash of each band's values, salted by the band."""
    keys = np.zeros((signatures.shape[0], bands), dtype=np.uint64)
    for band in range(bands):
        h = np.full(signatures.shape[0], band + 1, dtype=np.uint64)
        for v in signatures[:, band * rows : (band + 1) * rows].T.astype(np.uint64):
            h = (h ^ v) * _MIX
        keys[:, band] = h
    return keys.view(np.int64)


def key_rows(batch: pa.Table, cfg: DedupSettings, partitions: int) -> pa.Table:
    """The key rows of ``batch`` (columns id, text_hash, minhash, shingles, score): ``part`` (the
    shuffle partition), ``band``, ``key``, ``id``, ``score``, ``text_hash`` and ``shingles`` (empty on
    exact rows)."""
    n = batch.num_rows
    ids, text_hash = batch.select(["id", "score"]), batch["text_hash"]
    parts: list[pa.Table] = []
    if cfg.exact:
        key = np.asarray([int(h[:15], 16) for h in text_hash.to_pylist()], dtype=np.int64)
        empty = pa.array([[]] * n, pa.list_(pa.uint32()))
        parts.append(_keyed(key, np.full(n, EXACT_BAND), ids, text_hash, empty, partitions))
    if cfg.near and n:
        # with exact dedup on, copies are exact pairs already: the band rows need one copy per text
        one = batch.take(first_copies(batch)) if cfg.exact else batch
        m, one_ids = one.num_rows, one.select(["id", "score"])
        bands, rows = lsh_bands(cfg.threshold, cfg.num_perm, cfg.candidate_recall)
        sig = np.frombuffer(b"".join(one["minhash"].to_pylist()), dtype="<u4").reshape(m, cfg.num_perm)
        keys = _band_keys(sig, bands, rows)
        for band in range(bands):
            parts.append(
                _keyed(keys[:, band], np.full(m, band), one_ids, one["text_hash"], one["shingles"], partitions)
            )
    return pa.concat_tables(parts) if parts else pa.table({})


def first_copies(batch: pa.Table) -> pa.Array:
    """Indices of the smallest-id row of each text in ``batch``.

    The smallest id of a text overall is the smallest in its own batch, so every band bucket still
    holds each text's smallest id (the row :func:`bucket_pairs` takes for it), while a text copied
    thousands of times no longer puts thousands of rows into one partition per band."""
    order = pc.sort_indices(batch, [("text_hash", "ascending"), ("id", "ascending")])
    hashes = batch["text_hash"].take(order)
    if not len(hashes):
        return order
    new = pc.not_equal(hashes.slice(1), hashes.slice(0, len(hashes) - 1))
    return order.filter(pa.concat_arrays([pa.array([True]), new.combine_chunks()]))


def _keyed(key, band, ids: pa.Table, text_hash, shingles, partitions: int) -> pa.Table:
    return pa.table(
        {
            "part": pa.array(np.abs(key % partitions), pa.int32()),
            "band": pa.array(band, pa.int16()),
            "key": pa.array(key, pa.int64()),
            "id": ids["id"],
            "score": ids["score"],
            "text_hash": text_hash,
            "shingles": shingles,
        }
    )


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted sets of n-gram hashes (both empty: 1)."""
    union = len(a) + len(b)
    if not union:
        return 1.0
    common = len(np.intersect1d(a, b, assume_unique=True))
    return common / (union - common)


def _first_of_text(hashes: list[str], start: int, end: int) -> list[int]:
    """For each of the rows ``start:end`` (sorted by id), the first row with its text."""
    first: dict[str, int] = {}
    return [first.setdefault(hashes[i], i) for i in range(start, end)]


def bucket_pairs(part: pa.Table, cfg: DedupSettings) -> pa.Table:
    """The duplicate pairs in one shuffle partition: ("exact", id, smallest id of that text) for every
    other row of an exact bucket; ("near", id, other) for verified near-duplicate candidates (with
    exact dedup on, one row per text: its copies are exact pairs already)."""
    t = part.sort_by([("band", "ascending"), ("key", "ascending"), ("id", "ascending")])
    band, key = t["band"].to_numpy(), t["key"].to_numpy()
    edge = np.flatnonzero((band[1:] != band[:-1]) | (key[1:] != key[:-1])) + 1
    starts, ends = np.r_[0, edge], np.r_[edge, t.num_rows]
    multi = np.flatnonzero(ends - starts > 1)
    out: list[tuple[str, int, int]] = []
    if not len(multi):
        return PAIRS.empty_table()
    hashes = t["text_hash"].to_pylist()
    sh = t["shingles"].combine_chunks()
    values, offsets = sh.values.to_numpy(), sh.offsets.to_numpy()
    for s, e in zip(starts[multi], ends[multi]):
        if band[s] == EXACT_BAND:  # rows sorted by id: the first row of each text is its group's key
            out += [("exact", i, of) for i, of in enumerate(_first_of_text(hashes, s, e), s) if of != i]
            continue
        # one row per text, ordered by its smallest id: not by which other copies are in the bucket
        # (see first_copies)
        reps = list(dict.fromkeys(_first_of_text(hashes, s, e))) if cfg.exact else range(s, e)
        anchors = reps if len(reps) <= SMALL_BUCKET else reps[:1]
        for x, i in enumerate(anchors):
            a = values[offsets[i] : offsets[i + 1]]
            out += [
                ("near", j, i)
                for j in reps[x + 1 :]
                if jaccard(values[offsets[j] : offsets[j + 1]], a) >= cfg.threshold
            ]
    kind, rows, others = zip(*out) if out else ((), (), ())
    rows, others = pa.array(rows, pa.int64()), pa.array(others, pa.int64())
    return pa.table(
        {
            "kind": pa.array(kind, pa.string()),
            "id": t["id"].take(rows),
            "other": t["id"].take(others),
            "score": t["score"].take(rows),
            "other_score": t["score"].take(others),
        },
        schema=PAIRS,
    )


def duplicate_pairs(rows: ray.data.Dataset, cfg: DedupSettings, n_rows: int) -> ray.data.Dataset:
    """Every duplicate pair among ``rows`` (id, text_hash, minhash, shingles, score), by one hash
    shuffle of their key rows."""
    per_row = int(cfg.exact) + (lsh_bands(cfg.threshold, cfg.num_perm, cfg.candidate_recall)[0] if cfg.near else 0)
    partitions = max(2, math.ceil(n_rows * per_row / cfg.rows_per_partition))
    return (
        rows.map_batches(key_rows, batch_format="pyarrow", fn_kwargs={"cfg": cfg, "partitions": partitions})
        .groupby("part", num_partitions=partitions)
        .map_groups(bucket_pairs, batch_format="pyarrow", fn_kwargs={"cfg": cfg})
    )


def _components(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _keepers(label: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For each node, the best-ranked node (lowest rank) of its component."""
    best = np.full(label.max() + 1 if len(label) else 0, len(rank), dtype=np.int64)
    np.minimum.at(best, label, rank)
    return np.argsort(rank)[best[label]]


def resolve(pairs: pa.Table) -> pa.Table:
    """The duplicates (id, reason, duplicate_of) that ``pairs`` make.

    Exact groups first: the best row of each stays (higher score first, then smallest id).
    Near-duplicate clusters are then the connected components of the near pairs among the rows
    that stayed (a pair's rows stand for their exact groups); again the best row of each stays.
    Memory follows the number of pairs, not of rows."""
    if not pairs.num_rows:
        return DUPLICATES.empty_table()
    ends = pa.concat_arrays([pairs[c].combine_chunks() for c in ("id", "other")])
    scores = np.concatenate([pairs[c].to_numpy() for c in ("score", "other_score")])
    nodes, first, local = np.unique(np.asarray(ends.to_pylist(), dtype=object), return_index=True, return_inverse=True)
    n, m = len(nodes), pairs.num_rows
    a, b = local[:m], local[m:]
    rank = np.empty(n, dtype=np.int64)
    rank[np.lexsort((nodes.astype(str), -scores[first]))] = np.arange(n)
    exact = pairs["kind"].to_numpy(zero_copy_only=False) == "exact"
    keep = _keepers(_components(a[exact], b[exact], n), rank)
    na, nb = keep[a[~exact]], keep[b[~exact]]
    near = _keepers(_components(na[na != nb], nb[na != nb], n), rank)
    me = np.arange(n)
    exact_dup, near_dup = keep != me, (near != me) & (keep == me)
    rows = np.r_[np.flatnonzero(exact_dup), np.flatnonzero(near_dup)]
    return pa.table(
        {
            "id": pa.array(nodes[rows].tolist(), pa.string()),
            "reason": ["exact_duplicate"] * int(exact_dup.sum()) + ["near_duplicate"] * int(near_dup.sum()),
            "duplicate_of": pa.array(nodes[np.r_[keep[exact_dup], near[near_dup]]].tolist(), pa.string()),
        },
        schema=DUPLICATES,
    )
