"""Teacher generation throughput, three ways on the same tiny teacher and the same prompts, in one run:
(1) the generation stage (Ray Data + vLLM actor), (2) raw `vllm.LLM.chat` in one process (with vLLM's
default engine-core subprocess, and in-process as the stage runs it on CPU),
(3) Hugging Face `generate` loops: one prompt per call (the plain loop) and 64 prompts per call.
"wall" timings include imports and loading the engine/model (raw vLLM: a fresh process; the stage:
its actor, on a Ray cluster already started); "gen" timings are generation alone (for the stage: the
replica's time inside its batch calls).

On a 2-core machine one engine call varies by +-10% from run to run, so the stage and the raw
in-process engine run --repeats times, alternating, and the ratios compare their medians.

Targets: stage >= 0.95x raw vLLM generating, >= 0.9x wall; >= 10x the one-prompt HF loop; on SmolLM2
(--teacher smollm2) >= 1.5x the HF loop with 64 prompts per call.
    python benchmarks/generate.py --rows 2048                                # -> generate.json
    python benchmarks/generate.py --rows 1024 --teacher smollm2 --max-tokens 64   # -> generate_smollm2.json
On a CUDA machine the stage's replica and every arm run on the first GPU, and the result's name ends
in ``_cuda`` (benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa

from harness import Bench

RAW_RESULT = "raw-result: "


def has_cuda() -> bool:
    from instructscale.backends.vllm import has_cuda as cuda

    return cuda()


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


def arguments(p) -> None:
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--hf-rows", type=int, default=256, help="rows for the batched HF loop")
    p.add_argument("--hf-plain-rows", type=int, default=64, help="rows for the one-prompt-per-call HF loop")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4096, help="rows per replica call")
    p.add_argument(
        "--poison",
        type=float,
        default=0.0,
        help="also run the stage on the same pool with this share of rows poisoned (prompts "
        "longer than the teacher's context), and compare rows/s (goal >= 0.9x)",
    )
    p.add_argument("--poison-only", action="store_true", help="skip the raw vLLM and HF arms")
    p.add_argument("--repeats", type=int, default=3, help="runs of the stage and the raw in-process engine")
    p.add_argument(
        "--teacher", default="tiny", help="tiny (built here), smollm2 (the catalogue's SmolLM2-135M) or a model dir"
    )
    p.add_argument("--raw", help=argparse.SUPPRESS)  # internal: run the raw arm on this prompts file
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)


def _teacher(name: str, work: Path) -> str:
    from instructscale.models.catalog import fetch_model
    from instructscale.models.tiny import build_tiny_models

    if name == "tiny":
        return build_tiny_models(work / "models")["teacher"]
    if name == "smollm2":
        return fetch_model("smollm2-135m-instruct")["path"]
    return name


class Setup:
    """The teacher, the pool, the stage's config and the prompts every arm answers."""

    def __init__(self, bench: Bench):
        from instructscale.backends.base import SamplingConfig
        from instructscale.demo.pool import DemoConfig, iter_pool_rows
        from instructscale.generate.config import GenerateConfig
        from instructscale.plugins import GenerationMode
        from instructscale.schema import POOL_SCHEMA
        from instructscale.storage import write_parquet

        args, work = bench.args, bench.work
        self.teacher = _teacher(args.teacher, work)
        self.rows = list(iter_pool_rows(DemoConfig(out_dir="x"), 0, args.rows))
        write_parquet(str(work / "pool" / "part-0.parquet"), pa.Table.from_pylist(self.rows, schema=POOL_SCHEMA))
        self.sampling = SamplingConfig(max_tokens=args.max_tokens, temperature=0.0, seed=0)
        # one replica on all cores, as the raw engine gets them (on CPU a replica's num_cpus is its
        # thread count); on a CUDA machine one replica on one GPU, as the raw engine runs
        resources = {"num_cpus": 1, "num_gpus": 1} if has_cuda() else {"num_cpus": os.cpu_count()}
        self.cfg = GenerateConfig(
            input=str(work / "pool"),
            out_dir=str(work / "out"),
            model=self.teacher,
            sampling=self.sampling,
            replicas={"batch_size": args.batch_size, **resources},
        )
        self.prompts = GenerationMode.registry.build(self.cfg.mode, self.cfg).prompts(self.rows)


def raw_arm(bench: Bench, setup: Setup, engine_process: bool) -> None:
    """(2) raw vLLM in a fresh process, as a user's script would run it (imports and engine load
    count in its wall time, as actor start-up does for the stage): with vLLM's default engine-core
    subprocess, or in-process, the setting the stage's replicas use on CPU."""
    prompts_file = bench.work / "prompts.json"
    if not prompts_file.exists():
        prompts_file.write_text(json.dumps(setup.prompts))
    label = "raw vllm.LLM, " + ("engine subprocess" if engine_process else "in-process")
    cmd = [sys.executable, __file__, "--raw", str(prompts_file), "--teacher", setup.teacher]
    cmd += ["--max-tokens", str(bench.args.max_tokens), *([] if engine_process else ["--in-process"])]
    with bench.timed(method=label, rows=len(setup.rows)) as row:
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        row["tokens"], row["gen_s"] = json.loads(out.split(RAW_RESULT)[-1].splitlines()[0])


def stage_arm(bench: Bench, label: str, cfg) -> None:
    """(1) the stage: Ray Data feeding the same engine in a replica actor."""
    from instructscale.generate.stage import generate

    bench.ray()
    with bench.timed(method=label) as row:
        m = generate(cfg)
    run = m["this_run"]  # gen_s: the replica's whole time in its batch calls (engine_s: inside the engine alone)
    row.update(rows=m["inputs"], tokens=run["tokens"], gen_s=run["replica_busy_s"], engine_s=run["engine_s"])
    row["faults"] = m["faults"]


def poison_arms(bench: Bench, setup: Setup) -> None:
    """The stage on the pool, on the same pool with a share of rows far beyond the teacher's
    context, then clean again for the spread."""
    from instructscale.schema import POOL_SCHEMA
    from instructscale.storage import write_parquet

    cfg, work, share = setup.cfg, bench.work, bench.args.poison
    bad = set(range(0, len(setup.rows), max(1, round(1 / share))))
    poisoned = [
        dict(r, instruction="Summarise: " + "word " * 8000) if i in bad else r for i, r in enumerate(setup.rows)
    ]
    write_parquet(str(work / "poisoned" / "part-0.parquet"), pa.Table.from_pylist(poisoned, schema=POOL_SCHEMA))
    stage_arm(bench, "poison: clean", cfg.model_copy(update={"out_dir": str(work / "out-clean")}))
    poisoned_cfg = cfg.model_copy(update={"input": str(work / "poisoned"), "out_dir": str(work / "out-poisoned")})
    stage_arm(bench, f"poison: {len(bad)} poison rows ({share:.1%})", poisoned_cfg)
    stage_arm(bench, "poison: clean again", cfg.model_copy(update={"out_dir": str(work / "out-again")}))


def hf_arms(bench: Bench, setup: Setup) -> None:
    """(3) Hugging Face generate loops: one prompt per call, then 64 per call."""
    from instructscale.backends.hf import HFBackend

    for label, n_rows, batch in (
        ("HF loop, 1 prompt/call", bench.args.hf_plain_rows, 1),
        ("HF loop, 64 prompts/call", bench.args.hf_rows, 64),
    ):
        with bench.timed(method=label, rows=n_rows, tokens=0) as row:
            hf = HFBackend(HFBackend.Config(), setup.teacher)
            t_loaded = time.time()
            for i in range(0, n_rows, batch):
                row["tokens"] += sum(c[0].num_tokens for c in hf.generate(setup.prompts[i : i + batch], setup.sampling))
            row["gen_s"] = time.time() - t_loaded


def poison_ratio(results: list[dict], share: float) -> float:
    clean, poisoned, again = [r for r in results if r["method"].startswith("poison: ")]
    ratio = poisoned["wall_rows_per_s"] / ((clean["wall_rows_per_s"] + again["wall_rows_per_s"]) / 2)
    print(
        f"\nstage with {share:.1%} poison rows / without (mean of the runs before and after): {ratio:.2f}x rows/s "
        f"wall ({poisoned['faults']} rows rejected as too long; goal >= 0.9)"
    )
    return ratio


def medians(results: list[dict]) -> dict[str, dict]:
    """Per method, the run with the median wall rows/s, its generating tokens/s replaced by the median."""
    by_method: dict[str, list[dict]] = {}
    for r in results:
        by_method.setdefault(r["method"], []).append(r)
    out = {}
    for method, runs in by_method.items():
        runs = sorted(runs, key=lambda r: r["wall_rows_per_s"])
        median = dict(runs[len(runs) // 2], runs=len(runs))
        median["wall_rows_per_s"] = statistics.median(r["wall_rows_per_s"] for r in runs)
        median["gen_tokens_per_s"] = statistics.median(r["gen_tokens_per_s"] for r in runs)
        out[method] = median
    return out


def main() -> None:
    bench = Bench("generate", __doc__, arguments)
    args = bench.args
    if args.raw:
        return raw_vllm(args)
    setup = Setup(bench)
    if not args.poison_only:
        raw_arm(bench, setup, engine_process=True)
        for i in range(args.repeats):  # alternating, so that drift on the machine hits both alike
            raw_arm(bench, setup, engine_process=False)
            stage_arm(
                bench, "instructscale generate", setup.cfg.model_copy(update={"out_dir": str(bench.work / f"out-{i}")})
            )
        hf_arms(bench, setup)
    if args.poison:
        poison_arms(bench, setup)
    for r in bench.results:
        r["wall_rows_per_s"] = r["rows"] / r["seconds"]
        r["gen_tokens_per_s"] = r["tokens"] / r["gen_s"]
    columns = ["method", "rows", "tokens", "seconds", "gen_s", "wall_rows_per_s", "gen_tokens_per_s", "faults"]
    print()
    bench.table(columns)
    by_method = medians(bench.results)
    ratios = {}
    if not args.poison_only:
        print("\nmedians:")
        bench.table(["runs", *columns], list(by_method.values()))
        ratios = comparisons(by_method, by_method["instructscale generate"])
    if args.poison:
        ratios["poison_over_clean_wall"] = poison_ratio(bench.results, args.poison)
    name = (
        "generate_poison" if args.poison_only else "generate" + ("" if args.teacher == "tiny" else f"_{args.teacher}")
    ) + ("_cuda" if has_cuda() else "")
    bench.write(name, medians=by_method, ratios=ratios)


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
        f"{ratios['stage_vs_raw_vllm_gen']:.2f}x tokens/s generating (targets >= 0.9, >= 0.95)"
    )
    print(
        f"stage / HF loop:  {ratios['stage_vs_hf_plain_wall']:.1f}x (1 prompt/call), "
        f"{ratios['stage_vs_hf_batched_wall']:.1f}x (64 prompts/call) rows/s wall (targets >= 10, >= 1.5 on SmolLM2)"
    )
    return ratios


if __name__ == "__main__":
    main()
