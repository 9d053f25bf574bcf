"""Evaluation without waste: the evaluate stage on the main job's suites (200 held-out rows at 24
tokens with their loss, 30 IFBench prompts at 384 tokens, 30 general instructions) against a raw
vLLM engine answering the same prompts with the same sampling, per model, in the same run. Both
are timed from a fresh process to the last answer (imports and engine start-up included); the
stage also scores every answer, computes the held-out loss and writes its predictions.
    python benchmarks/eval_speed.py                     # SmolLM2-135M-Instruct
    python benchmarks/eval_speed.py --model runs/smollm2/train/model --model ...
"""

from __future__ import annotations

import multiprocessing
import time

from harness import Bench

SUITES = [{"kind": "ifbench", "max_prompts": 30, "sampling": {"max_tokens": 384}}, {"kind": "general"}]


def arguments(p) -> None:
    p.add_argument("--model", action="append", help="model directories (default: SmolLM2-135M-Instruct)")
    p.add_argument("--rows", type=int, default=200, help="held-out rows")
    p.add_argument("--num-cpus", type=int, default=2)


def _raw(model: str, requests: list) -> float:
    """A raw engine in this (fresh) process: seconds from here to the last answer."""
    t0 = time.time()
    from vllm import SamplingParams

    from instructscale.backends.vllm import make_llm

    llm = make_llm(model)
    for conversations, sampling in requests:
        params = SamplingParams(max_tokens=sampling.max_tokens, temperature=sampling.temperature)
        llm.chat(conversations, params, use_tqdm=False)
    return time.time() - t0


def raw_vllm(model: str, requests: list) -> float:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_raw, (model, requests))


def main() -> None:
    from instructscale.evaluate import EvalConfig, evaluate
    from instructscale.models.catalog import fetch_model

    bench = Bench("eval_speed", __doc__, arguments)
    args = bench.args
    bench.ray()
    _, held_out = bench.demo(rows=10, eval_rows=args.rows)
    models = args.model or [fetch_model("smollm2-135m-instruct")["path"]]
    for k, model in enumerate(models):
        cfg = EvalConfig(
            model=model,
            data=held_out,
            out_dir=str(bench.work / f"eval-{k}"),
            sampling={"max_tokens": 24, "temperature": 0.0},
            suites=SUITES,
            replicas={"num_cpus": args.num_cpus},
        )
        requests = [([r["conversation"] for r in s.prompts(held_out)], s.config.sampling) for s in cfg.suite_plugins()]
        with bench.timed(model=model, method="raw vLLM engine"):
            raw_vllm(model, requests)
        with bench.timed(model=model, method="evaluate stage") as row:
            ev = evaluate(cfg)
        row |= {"engine_s": ev["engine_seconds"], **{f"{s}_s": v for s, v in ev["seconds_by_suite"].items()}}
    bench.table(["model", "method", "seconds", "engine_s", "holdout_s", "ifbench_s", "general_s"])
    raw = sum(r["seconds"] for r in bench.results if r["method"] == "raw vLLM engine")
    stage = sum(r["seconds"] for r in bench.results if r["method"] == "evaluate stage")
    print(f"evaluate / raw vLLM: {stage:.1f} / {raw:.1f} s = {stage / raw:.2f}x")
    bench.write(eval_seconds=stage, raw_vllm_seconds=raw, eval_over_raw=stage / raw)


if __name__ == "__main__":
    main()
