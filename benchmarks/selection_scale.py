"""Selection at scale, in one run on this machine (`python benchmarks/selection.py --scale` runs this):

1. the select stage (cheap features and filters, exact + near dedup, then the rest of the decisions
   with the outputs) on generated demo pools of each `--sizes`, with the driver's peak RSS and the
   largest Ray worker's peak RSS over the stage (and the largest of each kind, and the peak without
   the shared pages of Ray's object store), and rows/s of each phase;
2. the dedup shuffle alone on the largest pool's features with Ray at 1 and then 2 CPUs;
3. near-duplicate recall and precision against exact Jaccard on planted pairs whose exact Jaccard
   spreads uniformly over [threshold, 1], plus near misses below it;
4. IFD rows/s of the model scorer on batches vs a Cherry-style loop scoring one row at a time with
   the same model and max_length (the tiny student, and `--model` if given).
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from harness import PeakProcessRSS, print_table, with_zero_score, write_result


def _stage(work: Path, rows: int) -> dict:
    from instructscale.demo.pool import DemoConfig, make_demo
    from instructscale.select.config import SelectConfig
    from instructscale.select.stage import select

    data = work / f"data-{rows}"
    make_demo(DemoConfig(out_dir=str(data), rows=rows, shards=8, eval_rows=0, malformed_jsonl_rows=0))
    cfg = SelectConfig(
        input=str(data / "pool"),
        out_dir=str(work / f"select-{rows}"),
        scorers=[],
        weights={"output_chars": -1.0},
        filters=["length", "repetition", "control_characters", "refusal", "reference_answer"],
        budget={"fraction": 0.5, "stratify_by": "task"},
    )
    with PeakProcessRSS() as mem:
        m = select(cfg)
    return {
        "rows": rows,
        "seconds": m["seconds"],
        "features_rows_per_s": rows / m["features_seconds"],
        "dedup_rows_per_s": rows / m["dedup_seconds"],
        "decide_rows_per_s": rows / (m["decide_seconds"] - m["dedup_seconds"]),  # ranks, counts, selection, outputs
        "stage_rows_per_s": rows / m["seconds"],
        "driver_rss_gib": mem.driver / 2**30,
        "worker_rss_gib": mem.worker / 2**30,
        "worker_private_gib": mem.worker_private / 2**30,
        "largest_workers_gib": {
            t: round(v / 2**30, 2) for t, v in sorted(mem.by_title.items(), key=lambda kv: -kv[1])[:4]
        },
        "removed": m["removed"],
        "selected": m["selected"],
        "features": str(work / f"select-{rows}" / "features" / "rows"),
    }


def _dedup_at(features: str, cpus: int) -> dict:
    """The dedup shuffle alone in a fresh process pinned to ``cpus`` cores (Ray's processes inherit it)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_dedup_pinned, features, cpus).result()


def _dedup_pinned(features: str, cpus: int) -> dict:
    import os

    import ray

    from instructscale.lifecycle import part_files
    from instructscale.runtime import RayConfig, init_ray
    from instructscale.select.config import DedupSettings
    from instructscale.select.decide import DEDUP_COLUMNS, read_parquet
    from instructscale.select.dedup import duplicate_pairs

    os.sched_setaffinity(0, set(range(cpus)))
    init_ray(RayConfig(num_cpus=cpus))
    files = part_files(features)
    rows = with_zero_score(read_parquet(files).select_columns(DEDUP_COLUMNS))
    rows = rows.materialize()  # read once, outside the timing
    n = rows.count()
    duplicate_pairs(rows.limit(2000), DedupSettings(), 2000).materialize()  # start the shuffle's workers
    t0 = time.time()
    pairs = duplicate_pairs(rows, DedupSettings(), n).materialize().count()
    seconds = time.time() - t0
    ray.shutdown()
    return {"cpus": cpus, "rows": n, "pairs": pairs, "seconds": seconds, "rows_per_s": n / seconds}


def _mutate(rng: random.Random, words: list[str], k: int) -> list[str]:
    out = list(words)
    for i in rng.sample(range(len(out)), k):
        out[i] = f"x{rng.randrange(10**9)}"
    return out


def _planted(threshold: float, per_bin: int, seed: int = 0) -> tuple[list[dict], dict, dict]:
    """Rows of random-word texts with planted pairs: ``per_bin`` pairs per 0.05 bin of exact
    Jaccard over [threshold, 1] and as many near misses in [threshold - 0.2, threshold)."""
    from instructscale.select.config import DedupSettings
    from instructscale.select.dedup import jaccard
    from instructscale.select.features import shingle_hashes

    rng, ngram = random.Random(seed), DedupSettings().ngram
    vocab = [f"w{i}" for i in range(20000)]
    lo = threshold - 0.2
    edges = [round(lo + 0.05 * i, 4) for i in range(round((1 - lo) / 0.05))]
    want = dict.fromkeys(edges, per_bin)
    rows, pair_j, bin_of = [], {}, {}
    while any(want.values()):
        base = [rng.choice(vocab) for _ in range(rng.randint(30, 80))]
        copy = _mutate(rng, base, rng.randint(0, max(1, len(base) // 6)))
        j = jaccard(shingle_hashes(" ".join(base), ngram), shingle_hashes(" ".join(copy), ngram))
        b = max((e for e in edges if j >= e), default=None)
        if b is None or not want[b]:
            continue
        want[b] -= 1
        a_id, c_id = f"p{len(pair_j)}a", f"p{len(pair_j)}b"
        for rid, words in ((a_id, base), (c_id, copy)):
            rows.append({"id": rid, "instruction": " ".join(words), "input": "", "output": "ok", "source": "planted"})
        pair_j[(a_id, c_id)], bin_of[(a_id, c_id)] = j, b
    return rows, pair_j, bin_of


def _recall(threshold: float, per_bin: int) -> dict:
    import numpy as np
    import pyarrow as pa
    import ray

    from instructscale.runtime import RayConfig, init_ray
    from instructscale.schema import POOL_SCHEMA
    from instructscale.select.config import SelectConfig
    from instructscale.select.dedup import duplicate_pairs, jaccard, resolve
    from instructscale.select.features import text_features

    init_ray(RayConfig(num_cpus=8))
    rows, pair_j, bin_of = _planted(threshold, per_bin)
    table = pa.Table.from_pylist([{**r, "messages": None, "metadata": "{}"} for r in rows], schema=POOL_SCHEMA)
    cfg = SelectConfig(
        input=".",
        out_dir=".",
        scorers=[],
        dedup={"threshold": threshold},
    )
    feats = text_features(table, cfg.model_dump_json())
    pairs = duplicate_pairs(with_zero_score(ray.data.from_arrow(feats)), cfg.dedup, feats.num_rows)
    dups = resolve(pa.concat_tables(ray.get(pairs.to_arrow_refs())))
    found = {frozenset(p) for p in zip(dups["id"].to_pylist(), dups["duplicate_of"].to_pylist())}
    positives = [p for p, j in pair_j.items() if j >= threshold]
    ids = feats["id"].to_pylist()
    shingles = dict(zip(ids, (np.asarray(s, dtype=np.uint32) for s in feats["shingles"].to_pylist())))
    exact = [jaccard(*(shingles[r] for r in pair)) for pair in found]  # each flagged row with the row it keeps
    return {
        "threshold": threshold,
        "planted_pairs": len(positives),
        "near_misses": len(pair_j) - len(positives),
        "near_dup_recall": sum(frozenset(p) in found for p in positives) / len(positives),
        "near_dup_precision": sum(j >= threshold for j in exact) / len(exact) if exact else 1.0,
        "recall_per_bin": {
            f"{b:.2f}": sum(frozenset(p) in found for p in positives if bin_of[p] == b) / per_bin
            for b in sorted(set(bin_of.values()))
            if b >= threshold
        },
        "near_misses_flagged": sum(frozenset(p) in found for p, j in pair_j.items() if j < threshold),
    }


def _ifd(model: str, rows: int, label: str) -> dict:
    from instructscale.demo.pool import DemoConfig, iter_pool_rows
    from instructscale.scorers import ModelScorer

    sample = list(iter_pool_rows(DemoConfig(out_dir=".", rows=rows, shards=1, eval_rows=0), 0, rows))
    scorer = ModelScorer(ModelScorer.Config(model=model, max_length=256, batch_size=32))
    scorer.setup()
    scorer.score(sample[:4])  # warm-up
    t0 = time.time()
    for i in range(0, len(sample), 32):
        scorer.score(sample[i : i + 32])
    batched = len(sample) / (time.time() - t0)
    one = sample[: max(16, len(sample) // 8)]
    t0 = time.time()
    for r in one:  # Cherry_LLM's loop: each row's two forward passes on their own
        scorer.score([r])
    per_sample = len(one) / (time.time() - t0)
    return {
        "model": label,
        "rows": len(sample),
        "batched_rows_per_s": batched,
        "per_sample_rows_per_s": per_sample,
        "ifd_batched_over_per_sample": batched / per_sample,
    }


def run(sizes: list[int], model: str | None, ifd_rows: int, per_bin: int) -> None:
    import ray

    from instructscale.models.tiny import build_tiny_models
    from instructscale.runtime import RayConfig, init_ray

    work = Path(tempfile.mkdtemp(prefix="bench-select-scale-"))
    ifd = [_ifd(build_tiny_models(work / "models")["student"], ifd_rows, "tiny student")]
    if model:
        ifd.append(_ifd(model, ifd_rows, Path(model).name))
    init_ray(RayConfig(num_cpus=8))
    ray.data.DataContext.get_current().enable_progress_bars = False
    stage = [_stage(work, n) for n in sizes]
    ray.shutdown()
    dedup = [_dedup_at(stage[-1]["features"], cpus) for cpus in (1, 2)]
    init_ray(RayConfig(num_cpus=8))
    recall = _recall(0.8, per_bin)
    small, large = stage[0], stage[-1]
    summary = {
        "ifd_batched_over_per_sample": {r["model"]: r["ifd_batched_over_per_sample"] for r in ifd},
        "dedup_2w_over_1w": dedup[1]["rows_per_s"] / dedup[0]["rows_per_s"],
        f"driver_rss_{large['rows']}_over_{small['rows']}": large["driver_rss_gib"] / small["driver_rss_gib"],
        f"worker_rss_{large['rows']}_over_{small['rows']}": large["worker_rss_gib"] / small["worker_rss_gib"],
        f"worker_private_{large['rows']}_over_{small['rows']}": large["worker_private_gib"]
        / small["worker_private_gib"],
        "near_dup_recall": recall["near_dup_recall"],
        "near_dup_precision": recall["near_dup_precision"],
        # extrapolations from this machine's rows/s, assuming linear scaling over nodes like it
        "hours_for_10m_rows_without_model_scorer": {n: 1e7 / large["stage_rows_per_s"] / 3600 / n for n in (1, 8, 32)},
        "hours_for_10m_rows_of_model_scoring": {
            r["model"]: {n: 1e7 / r["batched_rows_per_s"] / 3600 / n for n in (1, 8, 32)} for r in ifd
        },
    }
    print_table(ifd, ["model", "rows", "batched_rows_per_s", "per_sample_rows_per_s", "ifd_batched_over_per_sample"])
    print()
    cols = ["rows", "seconds", "features_rows_per_s", "dedup_rows_per_s", "decide_rows_per_s"]
    print_table(stage, [*cols, "stage_rows_per_s", "driver_rss_gib", "worker_rss_gib", "worker_private_gib"])
    print()
    print_table(dedup, ["cpus", "rows", "pairs", "seconds", "rows_per_s"])
    print(f"\nrecall per 0.05 bin of exact Jaccard: {recall['recall_per_bin']}")
    print_table([{"key": k, "value": v} for k, v in summary.items() if not isinstance(v, dict)], ["key", "value"])
    write_result(
        "selection_scale",
        {**summary, "stage": stage, "dedup": dedup, "near_dup": recall, "ifd": ifd, "sizes": sizes},
    )
