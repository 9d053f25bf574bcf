"""The prepared GPU check: on one CUDA GPU, in at most about 8 minutes after the install, the four
figures this project has only measured on CPUs, written to ``benchmarks/results/gpu.json``:

1. generation: the stage's vLLM replica on the GPU against a raw ``vllm.LLM`` on the same prompts
   (SmolLM2; ``benchmarks/generate.py``), and against a transformers loop of 64 prompts per call;
2. scoring: the model scorer batched against one row per call (goal >= 20x) and its MFU against the
   GPU's bf16 matmul peak (``benchmarks/scoring.py --device cuda``);
3. the main job end to end on the GPU (``configs/smollm2.yaml`` with the GPU settings below), its
   seconds per stage;
4. ``instructscale train``: LoRA, DeepSpeed ZeRO-2, bf16 on 1 GPU over the main job's selection,
   real tokens/s and MFU against the bf16 peak (``benchmarks/peak.py``, measured first).

Run it through ``bash benchmarks/gpu_check.sh``, which installs the ``gpu`` extra first and times
that. ``--dry-run`` runs on any machine (the tests run it on CPU): it prints the plan, imports every
module the steps use and validates every config and flag they pass, and runs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/instructscale-gpu-check"))
RUN = WORK / "main-job"
PY = sys.executable
CLI = [PY, "-m", "instructscale"]
# one GPU shared by every stage's actors: vLLM engines get a quarter of its memory each
VLLM_ON_GPU = "{kind: vllm, engine: {gpu_memory_utilization: 0.25}}"
MAIN_JOB_SETS = {
    "run_dir": str(RUN),
    "generate.backend": VLLM_ON_GPU,
    "generate.replicas": "{batch_size: 512, num_cpus: 1, num_gpus: 0.25}",
    "select.scorers.0.num_gpus": "0.1",
    "train.scaling": "{num_workers: 1, use_gpu: true}",
    "train.micro_batch_size": "16",  # the CPU job's 2 workers x 8 rows a step
    "evaluate.backend": VLLM_ON_GPU,
    "evaluate.replicas": "{num_cpus: 1, num_gpus: 0.25}",
}
TRAIN = {  # over the main job's selection; data and model are filled in from its summary
    "out_dir": str(WORK / "train"),
    "lora": {"r": 16, "alpha": 32},
    "deepspeed": {"zero_stage": 2, "precision": "bf16"},
    "scaling": {"num_workers": 1, "use_gpu": True},
    "micro_batch_size": 64,
    "max_length": 256,
    "max_steps": 40,
    "checkpoint_every": 40,
}
HF_ROWS = ["--hf-rows", "256", "--hf-plain-rows", "32"]
PER_SAMPLE = ["--per-sample-rows", "256", "--max-length", "256"]
IMPORTS = ("torch", "vllm", "deepspeed", "peft", "transformers", "ray.train.torch", "ray.data", "instructscale.cli")


@dataclass
class Step:
    name: str
    argv: list[str]
    budget_s: int
    result: Path | None = None  # the JSON the step writes
    outcome: dict = field(default_factory=dict)


def steps() -> list[Step]:
    out = WORK / "results"
    bench = [PY, str(ROOT / "benchmarks" / "generate.py")]
    sets = [a for k, v in MAIN_JOB_SETS.items() for a in ("--set", f"{k}={v}")]
    return [
        Step("peak", [PY, str(ROOT / "benchmarks" / "peak.py"), "--seconds", "1"], 30, out / "peak.json"),
        Step(
            "generate",
            [*bench, "--teacher", "smollm2", "--rows", "2048", "--max-tokens", "64", "--repeats", "1", *HF_ROWS],
            120,
            out / "generate_smollm2_cuda.json",
        ),
        Step(
            "scoring",
            [PY, str(ROOT / "benchmarks" / "scoring.py"), "--device", "cuda", "--rows", "4096", *PER_SAMPLE],
            60,
            out / "scoring_cuda.json",
        ),
        Step("main_job", [*CLI, "pipeline", str(ROOT / "configs" / "smollm2.yaml"), *sets], 210, RUN / "summary.json"),
        Step("train", [*CLI, "train", str(WORK / "train.yaml")], 60, WORK / "train" / "_manifest.json"),
    ]


def dry_run() -> int:
    """The plan; every import, config and flag checked; nothing run."""
    import importlib

    from instructscale.config import load_config, parse_config
    from instructscale.pipeline import PipelineConfig
    from instructscale.train.config import TrainConfig

    plan = steps()
    for step in plan:
        print(f"{step.name:9} <= {step.budget_s:4d} s  {' '.join(step.argv[1:])}")
    print(f"total budget {sum(s.budget_s for s in plan)} s")
    for module in IMPORTS:
        importlib.import_module(module)
    print(f"imports: {', '.join(IMPORTS)}")
    overrides = {k: yaml.safe_load(v) for k, v in MAIN_JOB_SETS.items()}
    cfg = load_config(PipelineConfig, ROOT / "configs" / "smollm2.yaml", overrides)
    assert cfg.train and cfg.train.scaling.use_gpu and cfg.generate.replicas.num_gpus > 0
    parse_config(TrainConfig, {**TRAIN, "data": str(RUN / "select" / "selected"), "model": "student"})
    print("configs: the main job's GPU settings and the train config validate")
    for step in plan:
        if step.argv[1].endswith(".py"):
            usage = subprocess.run([PY, step.argv[1], "--help"], capture_output=True, text=True, check=True).stdout
            unknown = [a for a in step.argv[2:] if a.startswith("--") and a not in usage]
            if unknown:
                print(f"{step.name}: {Path(step.argv[1]).name} has no {', '.join(unknown)}", file=sys.stderr)
                return 1
    print("flags: every benchmark flag exists")
    print("dry run: OK")
    return 0


def run(step: Step) -> None:
    """Run one step in its own process under its time budget (twice the budget before it is killed)."""
    env = {**os.environ, "BENCH_OUT": str(WORK / "results"), "PYTHONUNBUFFERED": "1"}
    log = WORK / f"{step.name}.log"
    t0 = time.time()
    with log.open("w") as out:
        try:
            rc = subprocess.run(
                step.argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=2 * step.budget_s
            ).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    step.outcome = {"seconds": round(time.time() - t0, 1), "budget_s": step.budget_s, "rc": rc, "log": str(log)}
    print(f"{step.name:9} {step.outcome['seconds']:7.1f} s (budget {step.budget_s}) rc={rc}", flush=True)
    if rc != 0:
        print(log.read_text()[-3000:], file=sys.stderr)


def read(step: Step) -> dict:
    return json.loads(step.result.read_text()) if step.result and step.result.is_file() else {}


def figures(by_name: dict[str, Step]) -> dict:
    """The four figures, from what each step wrote."""
    import torch

    peak = read(by_name["peak"]).get("results", [])
    gpu_peak = [r["tflops"] for r in peak if r.get("threads") is None and r.get("dtype") == "bfloat16"]
    gen, scoring = read(by_name["generate"]), read(by_name["scoring"])
    summary, train = read(by_name["main_job"]), read(by_name["train"])
    holdout = summary.get("stages", {}).get("evaluate", {}).get("tuned", {}).get("overall", {})
    return {
        "device": torch.cuda.get_device_name(0),
        "peak_bf16_tflops": gpu_peak[0] if gpu_peak else None,
        "generate": gen.get("ratios", {}),
        "scoring": {k: scoring.get(k) for k in ("batched_over_per_sample", "rows_per_s", "mfu_pct", "peak_tflops")},
        "main_job": {"seconds": summary.get("seconds"), "tuned_exact_match": holdout.get("exact_match")},
        "train": train.get("efficiency", {}) | {"steps": train.get("steps"), "startup_s": train.get("startup_s")},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="print the plan and check it; run nothing")
    args = p.parse_args()
    if args.dry_run:
        return dry_run()
    import torch

    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here (torch.cuda.is_available() is false); --dry-run checks the plan",
            file=sys.stderr,
        )
        return 2
    WORK.mkdir(parents=True, exist_ok=True)
    plan = {s.name: s for s in steps()}
    for step in plan.values():
        if step.name == "train":  # over what the main job selected, from its student
            summary = read(plan["main_job"])
            if not summary:
                step.outcome = {"rc": "skipped: the main job wrote no summary"}
                continue
            config = {**TRAIN, "data": summary["pool"], "model": summary["models"]["student"]}
            (WORK / "train.yaml").write_text(yaml.safe_dump(config))
        run(step)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from harness import write_result

    payload = figures(plan) | {
        "install_s": float(os.environ["INSTALL_S"]) if os.environ.get("INSTALL_S") else None,
        "steps": {name: s.outcome for name, s in plan.items()},
    }
    print(json.dumps(payload, indent=2))
    write_result("gpu", payload)
    return 0 if all(s.outcome.get("rc") == 0 for s in plan.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
