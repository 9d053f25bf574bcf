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

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import PeakRSS, print_table, with_zero_score, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--model-rows", type=int, default=4096)
    parser.add_argument("--scale", action="store_true", help="run the scale benchmark (selection_scale.py)")
    parser.add_argument("--sizes", default="100000,1000000", help="--scale: pool sizes, smallest first")
    parser.add_argument("--model", help="--scale: a second scorer model for the IFD comparison (e.g. SmolLM2)")
    parser.add_argument("--ifd-rows", type=int, default=512)
    parser.add_argument("--per-bin", type=int, default=250, help="--scale: planted pairs per 0.05 Jaccard bin")
    args = parser.parse_args()
    if args.scale:
        import selection_scale

        selection_scale.run([int(n) for n in args.sizes.split(",")], args.model, args.ifd_rows, args.per_bin)
        return

    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    from instructscale.demo.pool import DemoConfig, make_demo
    from instructscale.models.tiny import build_tiny_models
    from instructscale.runtime import RayConfig, init_ray
    from instructscale.select.config import SelectConfig
    from instructscale.select.dedup import duplicate_pairs
    from instructscale.select.features import text_features
    from instructscale.select.scoring import ScorerActor

    work = Path(tempfile.mkdtemp(prefix="bench-select-"))
    student = build_tiny_models(work / "models")["student"]
    init_ray(RayConfig(num_cpus=8))
    ray.data.DataContext.get_current().enable_progress_bars = False
    make_demo(DemoConfig(out_dir=str(work / "data"), rows=args.rows, shards=8, eval_rows=0, malformed_jsonl_rows=0))
    pool = str(work / "data" / "pool")
    opts = SelectConfig(input=pool, out_dir=str(work / "select"), scorers=[{"kind": "model", "model": student}])
    kwargs = {"cfg_json": opts.model_dump_json()}
    results = []

    for workers in (1, 2):
        out = work / f"features-{workers}"
        with PeakRSS() as mem:
            t0 = time.time()
            ray.data.read_parquet(pool).repartition(target_num_rows_per_block=opts.batch_size * 2).map_batches(
                text_features,
                batch_format="pyarrow",
                batch_size=opts.batch_size,
                fn_kwargs=kwargs,
                compute=TaskPoolStrategy(size=workers),
            ).write_parquet(str(out))
            seconds = time.time() - t0
        results.append(
            {
                "step": "cheap scorers + MinHash",
                "workers": workers,
                "rows": args.rows,
                "seconds": seconds,
                "rows_per_s": args.rows / seconds,
                "peak_gib": mem.gib,
            }
        )

    rows = ray.data.read_parquet(str(work / "features-2")).select_columns(["id", "text_hash", "minhash", "shingles"])
    rows = with_zero_score(rows)
    n_rows = rows.count()
    with PeakRSS() as mem:
        t0 = time.time()
        pairs = duplicate_pairs(rows, opts.dedup, n_rows).materialize().count()
        seconds = time.time() - t0
    results.append(
        {
            "step": f"dedup shuffle ({pairs:,} pairs)",
            "workers": 2,
            "rows": n_rows,
            "seconds": seconds,
            "rows_per_s": n_rows / seconds,
            "peak_gib": mem.gib,
        }
    )

    s = opts.scorers[0]
    for workers in (1, 2):
        with PeakRSS() as mem:
            t0 = time.time()
            n = (
                ray.data.read_parquet(pool)
                .limit(args.model_rows)
                .repartition(target_num_rows_per_block=s.batch_size * 2)
                .map_batches(text_features, batch_format="pyarrow", fn_kwargs=kwargs)
                .map_batches(
                    ScorerActor,
                    fn_constructor_kwargs={"cfg": opts.model_dump(mode="json"), "index": 0},
                    batch_size=s.batch_size,
                    batch_format="pyarrow",
                    num_cpus=1,
                    compute=ActorPoolStrategy(min_size=workers, max_size=workers),
                )
                .count()
            )
            seconds = time.time() - t0
        results.append(
            {
                "step": "model scorer (loss, IFD, embedding)",
                "workers": workers,
                "rows": n,
                "seconds": seconds,
                "rows_per_s": n / seconds,
                "peak_gib": mem.gib,
            }
        )

    print_table(results, ["step", "workers", "rows", "seconds", "rows_per_s", "peak_gib"])
    cheap = results[1]["rows_per_s"] / results[0]["rows_per_s"]
    model = results[4]["rows_per_s"] / results[3]["rows_per_s"]
    print(f"\n2 vs 1 workers on {os.cpu_count()} cores: cheap scorers {cheap:.2f}x, model scorer {model:.2f}x")
    write_result("selection", {"args": vars(args), "results": results, "scaling_cheap": cheap, "scaling_model": model})


if __name__ == "__main__":
    main()
