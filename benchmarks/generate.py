"""Teacher generation throughput, three ways on the same tiny teacher and the same prompts, in one run:
(1) the generation stage (Ray Data + vLLM actor), (2) raw `vllm.LLM.chat` in one process (with vLLM's
default engine-core subprocess, and in-process as the stage runs it on CPU),
(3) Hugging Face `generate` loops: one prompt per call (the plain loop) and 64 prompts per call.
"wall" timings include imports and loading the engine/model (raw vLLM: a fresh process; the stage:
its actor, on a Ray cluster already started); "gen" timings are generation alone (for the stage: the
replica's time inside its batch calls).

Targets: stage >= 0.9x raw vLLM, and >= 10x the HF loop.
    python benchmarks/generate.py --rows 8192
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from _common import print_table, write_result

RAW_RESULT = "raw-result: "


def raw_vllm(args: argparse.Namespace) -> None:
    """The raw arm, run as its own script: all prompts through one `vllm.LLM.chat` call; prints
    RAW_RESULT [tokens, generation seconds]."""
    from vllm import SamplingParams

    from instructscale.backends.vllm import VllmConfig, make_llm

    prompts = json.loads(Path(args.raw).read_text())
    llm = make_llm(args.teacher, VllmConfig(engine_process=not args.in_process))
    t0 = time.time()
    outs = llm.chat(prompts, SamplingParams(max_tokens=args.max_tokens, temperature=0.0, seed=0), use_tqdm=False)
    print(RAW_RESULT + json.dumps([sum(len(o.outputs[0].token_ids) for o in outs), time.time() - t0]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--hf-rows", type=int, default=256, help="rows for the batched HF loop")
    parser.add_argument("--hf-plain-rows", type=int, default=64, help="rows for the one-prompt-per-call HF loop")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096, help="rows per replica call")
    parser.add_argument(
        "--poison",
        type=float,
        default=0.0,
        help="also run the stage on the same pool with this share of rows poisoned (prompts "
        "longer than the teacher's context), and compare rows/s (goal >= 0.9x)",
    )
    parser.add_argument("--poison-only", action="store_true", help="skip the raw vLLM and HF arms")
    parser.add_argument("--raw", help=argparse.SUPPRESS)  # internal: run the raw arm on this prompts file
    parser.add_argument("--teacher", help=argparse.SUPPRESS)
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw:
        return raw_vllm(args)

    from instructscale.backends.base import SamplingConfig
    from instructscale.backends.hf import HFBackend
    from instructscale.demo.pool import DemoConfig, iter_pool_rows
    from instructscale.generate.config import GenerateConfig
    from instructscale.generate.stage import generate
    from instructscale.models.tiny import build_tiny_models
    from instructscale.plugins import GenerationMode
    from instructscale.runtime import RayConfig, init_ray
    from instructscale.schema import POOL_SCHEMA
    from instructscale.storage import write_parquet

    work = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    teacher = build_tiny_models(work / "models")["teacher"]
    rows = list(iter_pool_rows(DemoConfig(out_dir="x"), 0, args.rows))
    write_parquet(str(work / "pool" / "part-0.parquet"), pa.Table.from_pylist(rows, schema=POOL_SCHEMA))
    sampling = SamplingConfig(max_tokens=args.max_tokens, temperature=0.0, seed=0)
    # one replica on all cores, as the raw engine gets them (on CPU a replica's num_cpus is its thread count)
    cfg = GenerateConfig(
        input=str(work / "pool"),
        out_dir=str(work / "out"),
        model=teacher,
        sampling=sampling,
        replicas={"batch_size": args.batch_size, "num_cpus": os.cpu_count()},
    )
    prompts = GenerationMode.registry.build(cfg.mode, cfg).prompts(rows)
    results = []

    # (2) raw vLLM, each in a fresh process as a user's script would run it (imports and engine
    # load count in its wall time, as actor start-up does for the stage): with vLLM's default
    # engine-core subprocess, and in-process, the setting the stage's replicas use on CPU
    prompts_file = work / "prompts.json"
    prompts_file.write_text(json.dumps(prompts))
    raw_arms = (
        () if args.poison_only else (("raw vllm.LLM, engine subprocess", True), ("raw vllm.LLM, in-process", False))
    )
    for label, engine_process in raw_arms:
        t0 = time.time()
        cmd = [
            sys.executable,
            __file__,
            "--raw",
            str(prompts_file),
            "--teacher",
            teacher,
            "--max-tokens",
            str(args.max_tokens),
        ] + ([] if engine_process else ["--in-process"])
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        tokens, gen_s = json.loads(out.split(RAW_RESULT)[-1].splitlines()[0])
        results.append(
            {"method": label, "rows": len(rows), "tokens": tokens, "seconds": time.time() - t0, "gen_s": gen_s}
        )

    # (1) the stage: Ray Data actor pool around the same engine
    init_ray(RayConfig(num_cpus=8))
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    arms = [("instructscale generate", cfg)]
    if args.poison:  # the same rows, a share of them poisoned: prompts far beyond the teacher's context
        bad = set(range(0, len(rows), max(1, round(1 / args.poison))))
        poisoned = [dict(r, instruction="Summarise: " + "word " * 8000) if i in bad else r for i, r in enumerate(rows)]
        write_parquet(str(work / "poisoned" / "part-0.parquet"), pa.Table.from_pylist(poisoned, schema=POOL_SCHEMA))
        poisoned_cfg = cfg.model_copy(update={"input": str(work / "poisoned"), "out_dir": str(work / "out-poisoned")})
        again = cfg.model_copy(update={"out_dir": str(work / "out-again")})  # the clean arm after, for the spread
        arms = [
            *arms,
            (f"instructscale generate, {len(bad)} poison rows ({args.poison:.1%})", poisoned_cfg),
            ("instructscale generate (again)", again),
        ]
    for label, arm_cfg in arms:
        t0 = time.time()
        m = generate(arm_cfg)
        results.append(
            {
                "method": label,
                "rows": m["inputs"],
                "tokens": m["this_run"]["tokens"],
                "seconds": time.time() - t0,
                "gen_s": m["this_run"]["replica_busy_s"],
                "faults": m["faults"],
            }
        )
    ray.shutdown()

    # (3) Hugging Face generate loops: one prompt per call, then 64 per call
    hf_arms = (
        ()
        if args.poison_only
        else (
            ("HF loop, 1 prompt/call", args.hf_plain_rows, 1),
            ("HF loop, 64 prompts/call", args.hf_rows, 64),
        )
    )
    for label, n_rows, batch in hf_arms:
        t0 = time.time()
        hf = HFBackend(HFBackend.Config(), teacher)
        t_loaded = time.time()
        tokens = 0
        for i in range(0, n_rows, batch):
            tokens += sum(c[0].num_tokens for c in hf.generate(prompts[i : i + batch], sampling))
        t1 = time.time()
        results.append({"method": label, "rows": n_rows, "tokens": tokens, "seconds": t1 - t0, "gen_s": t1 - t_loaded})

    for r in results:
        r["wall_rows_per_s"] = r["rows"] / r["seconds"]
        r["gen_tokens_per_s"] = r["tokens"] / r["gen_s"]
    by_method = {r["method"]: r for r in results}
    stage = by_method["instructscale generate"]
    print()
    print_table(
        results, ["method", "rows", "tokens", "seconds", "gen_s", "wall_rows_per_s", "gen_tokens_per_s", "faults"]
    )
    ratios = {} if args.poison_only else comparisons(by_method, stage)
    if args.poison:
        poisoned = results[[r["method"] for r in results].index("instructscale generate") + 1]
        clean = (stage["wall_rows_per_s"] + by_method["instructscale generate (again)"]["wall_rows_per_s"]) / 2
        ratios["poison_over_clean_wall"] = poisoned["wall_rows_per_s"] / clean
        print(
            f"\nstage with {args.poison:.1%} poison rows / without (mean of the runs before and after): "
            f"{ratios['poison_over_clean_wall']:.2f}x rows/s "
            f"wall ({poisoned['faults']} rows rejected as too long; goal >= 0.9)"
        )
    write_result(
        "generate_poison" if args.poison_only else "generate",
        {"args": vars(args), "results": results, "ratios": ratios},
    )


def comparisons(by_method: dict, stage: dict) -> dict:
    raw_subprocess, raw_inproc = by_method["raw vllm.LLM, engine subprocess"], by_method["raw vllm.LLM, in-process"]
    hf_plain, hf_batched = by_method["HF loop, 1 prompt/call"], by_method["HF loop, 64 prompts/call"]
    raw = max(raw_subprocess, raw_inproc, key=lambda r: r["wall_rows_per_s"])
    ratios = {
        "raw_vllm_inproc_vs_subprocess_wall": raw_inproc["wall_rows_per_s"] / raw_subprocess["wall_rows_per_s"],
        "stage_vs_raw_vllm_wall": stage["wall_rows_per_s"] / raw["wall_rows_per_s"],
        "stage_vs_raw_vllm_gen": stage["gen_tokens_per_s"] / raw["gen_tokens_per_s"],
        "stage_vs_hf_plain_wall": stage["wall_rows_per_s"] / hf_plain["wall_rows_per_s"],
        "stage_vs_hf_batched_wall": stage["wall_rows_per_s"] / hf_batched["wall_rows_per_s"],
    }
    print(f"\nraw vLLM in-process / engine subprocess: {ratios['raw_vllm_inproc_vs_subprocess_wall']:.2f}x rows/s wall")
    print(
        f"stage / best raw vLLM ({raw['method']}): {ratios['stage_vs_raw_vllm_wall']:.2f}x rows/s wall, "
        f"{ratios['stage_vs_raw_vllm_gen']:.2f}x tokens/s generating (target >= 0.9)"
    )
    print(
        f"stage / HF loop:  {ratios['stage_vs_hf_plain_wall']:.1f}x (1 prompt/call), "
        f"{ratios['stage_vs_hf_batched_wall']:.1f}x (64 prompts/call) rows/s wall (target >= 10)"
    )
    return ratios


if __name__ == "__main__":
    main()
