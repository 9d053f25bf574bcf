"""IFBench, every one of its 294 test prompts, for a base and a tuned model through the evaluate
stage (one vLLM engine per model, greedy; the file is not named ifbench.py, which would shadow the
``ifbench`` package that holds the data): prompt- and instruction-level accuracy, strict and loose,
with 95% intervals over prompts, the paired differences tuned - base with their verdicts, the
unscorable instructions (checkers that cannot run offline) and the mean answer length in words.
    python benchmarks/instruction_following.py --base runs/smollm2/... --tuned runs/smollm2/train/model
"""

from __future__ import annotations

from harness import Bench

METRICS = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")


def arguments(p) -> None:
    p.add_argument("--base", required=True, help="the base model directory")
    p.add_argument("--tuned", required=True, help="the tuned model directory")
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--num-cpus", type=int, default=2)


def main() -> None:
    from instructscale.evaluate import EvalConfig, compare, evaluate

    bench = Bench("ifbench", __doc__, arguments)
    args = bench.args
    bench.ray()
    suite = {"kind": "ifbench", "sampling": {"max_tokens": args.max_tokens, "temperature": 0.0}}
    configs = {
        name: EvalConfig(
            model=model, out_dir=str(bench.work / name), suites=[suite], replicas={"num_cpus": args.num_cpus}
        )
        for name, model in (("base", args.base), ("tuned", args.tuned))
    }
    models = {}
    for name, cfg in configs.items():
        with bench.timed(model=name) as row:
            models[name] = evaluate(cfg)["suites"]["ifbench"]
        row |= {m: models[name][m] for m in METRICS}
        row["words"] = _mean_words(bench.work / name)
    paired = compare(configs["tuned"], str(bench.work / "base"), str(bench.work / "tuned"), args.base)["vs_base"][
        "ifbench"
    ]
    bench.table(["model", *METRICS, "words", "seconds"])
    for m in METRICS:
        d = paired[m]
        print(f"tuned - base {m}: {d['diff']:+.3f} [{d['diff_ci95'][0]:+.3f}, {d['diff_ci95'][1]:+.3f}] {d['verdict']}")
    unscorable = models["base"]["unscorable"]
    print(
        f"unscorable instructions (their checkers cannot run offline): {unscorable} of {models['base']['instructions']}"
    )
    bench.write(models=models, paired=paired, **paired["prompt_strict"], unscorable=unscorable)


def _mean_words(out) -> float:
    from instructscale import storage
    from instructscale.lifecycle import part_files

    preds = storage.read_parquet(part_files(str(out / "predictions" / "ifbench"))).to_pylist()
    return sum(len(p["prediction"].split()) for p in preds) / len(preds)


if __name__ == "__main__":
    main()
