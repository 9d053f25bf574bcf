"""Selection throughput and memory on a generated demo pool, at 1 and 2 workers, in one run:
(1) the cheap scorers with MinHash signatures (Ray Data tasks) over the whole pool,
(2) the exact + near dedup shuffle (Ray Data) over the whole pool,
(3) the model scorer (loss, IFD, embeddings; Ray Data actors) over a slice of the pool
    (the tiny student forward-passes every row twice, which at CPU speed would take hours at 200k).
Peak memory is the summed PSS of the driver and every Ray process.
    python benchmarks/selection.py --rows 200000 --model-rows 4096
With --scale it runs benchmarks/selection_scale.py instead (10M-row design: memory at two sizes,
dedup scaling, near-dup recall, batched vs per-sample IFD):
    python benchmarks/selection.py --scale --sizes 100000,1000000 [--model DIR]
"""

from __future__ import annotations

import os

from harness import Bench, PeakRSS, with_zero_score


def arguments(p) -> None:
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--model-rows", type=int, default=4096)
    p.add_argument("--scale", action="store_true", help="run the scale benchmark (selection_scale.py)")
    p.add_argument("--sizes", default="100000,1000000", help="--scale: pool sizes, smallest first")
    p.add_argument("--model", help="--scale: a second scorer model for the IFD comparison (e.g. SmolLM2)")
    p.add_argument("--ifd-rows", type=int, default=512)
    p.add_argument("--per-bin", type=int, default=250, help="--scale: planted pairs per 0.05 Jaccard bin")


def measured(bench: Bench, step: str, workers: int, run, *args) -> None:
    """One result row: ``run(*args)`` returns its fields (``rows`` processed); wall seconds and peak
    PSS around it."""
    with PeakRSS() as mem, bench.timed(step=step, workers=workers) as row:
        row.update(run(*args))
    row.update(rows_per_s=row["rows"] / row["seconds"], peak_gib=mem.gib)


def cheap_features(pool: str, out: str, shipped, batch_size: int, workers: int) -> dict:
    import ray
    from ray.data import TaskPoolStrategy

    from instructscale.select.features import text_features

    ray.data.read_parquet(pool).repartition(target_num_rows_per_block=batch_size * 2).map_batches(
        text_features,
        batch_format="pyarrow",
        batch_size=batch_size,
        fn_kwargs={"shipped": shipped},
        compute=TaskPoolStrategy(size=workers),
    ).write_parquet(out)
    return {"rows": ray.data.read_parquet(out).count()}


def dedup(rows, settings, n_rows: int) -> dict:
    from instructscale.select.dedup import duplicate_pairs

    return {"rows": n_rows, "pairs": duplicate_pairs(rows, settings, n_rows).materialize().count()}


def model_scores(pool: str, shipped, rows: int, workers: int) -> dict:
    import ray
    from ray.data import ActorPoolStrategy

    from instructscale.select.features import text_features
    from instructscale.select.scoring import ScorerActor

    batch_size = shipped.load().scorers[0].batch_size
    scored = (
        ray.data.read_parquet(pool)
        .limit(rows)
        .repartition(target_num_rows_per_block=batch_size * 2)
        .map_batches(text_features, batch_format="pyarrow", fn_kwargs={"shipped": shipped})
        .map_batches(
            ScorerActor,
            fn_constructor_kwargs={"shipped": shipped, "index": 0},
            batch_size=batch_size,
            batch_format="pyarrow",
            num_cpus=1,
            compute=ActorPoolStrategy(min_size=workers, max_size=workers),
        )
        .count()
    )
    return {"rows": scored}


def main() -> None:
    bench = Bench("selection", __doc__, arguments)
    args = bench.args
    if args.scale:
        import selection_scale

        selection_scale.run([int(n) for n in args.sizes.split(",")], args.model, args.ifd_rows, args.per_bin)
        return

    import ray

    from instructscale.models.tiny import build_tiny_models
    from instructscale.process import Shipped
    from instructscale.select.config import SelectConfig

    student = build_tiny_models(bench.work / "models")["student"]
    bench.ray()
    pool, _ = bench.demo(args.rows, shards=8)
    opts = SelectConfig(input=pool, out_dir=str(bench.work / "select"), scorers=[{"kind": "model", "model": student}])
    shipped = Shipped.of(opts)
    for workers in (1, 2):
        out = str(bench.work / f"features-{workers}")
        measured(
            bench, "cheap scorers + MinHash", workers, cheap_features, pool, out, shipped, opts.batch_size, workers
        )
    columns = ["id", "text_hash", "minhash", "shingles"]
    rows = with_zero_score(ray.data.read_parquet(str(bench.work / "features-2")).select_columns(columns))
    measured(bench, "dedup shuffle", 2, dedup, rows, opts.dedup, rows.count())
    for workers in (1, 2):
        measured(
            bench, "model scorer (loss, IFD, embedding)", workers, model_scores, pool, shipped, args.model_rows, workers
        )

    bench.table(["step", "workers", "rows", "pairs", "seconds", "rows_per_s", "peak_gib"])
    results = bench.results
    cheap = results[1]["rows_per_s"] / results[0]["rows_per_s"]
    model = results[4]["rows_per_s"] / results[3]["rows_per_s"]
    print(f"\n2 vs 1 workers on {os.cpu_count()} cores: cheap scorers {cheap:.2f}x, model scorer {model:.2f}x")
    bench.write(scaling_cheap=cheap, scaling_model=model)


if __name__ == "__main__":
    main()
