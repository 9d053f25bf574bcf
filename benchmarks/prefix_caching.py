"""vLLM prefix caching, on and off, on the prompts this platform sends a teacher.

Prompt sets (the same --rows demo instructions in each):
  distill         the instruction alone (only the chat template's system turn is shared)
  evolve_judge    Evol-Instruct's elimination judge (a 60-token template around two instructions)
  pairwise_judge  the evaluation's pairwise judge (its instructions, the question, two answers)
  rubric          a 700-token shared rubric before each instruction: the case prefix caching is for
vLLM caches whole KV blocks only: 128 tokens on CPU (16 on GPUs), so on CPU a shared prefix shorter
than 128 tokens is never reused.
Each set runs through one in-process `vllm.LLM` with caching on and one with it off, alternating,
--repeats times; the table gives the median generating tokens/s and the ratio on/off.

    python benchmarks/prefix_caching.py --model smollm2
"""

from __future__ import annotations

import statistics
import time

from harness import Bench

RUBRIC = " ".join(
    f"Rule {i}: a good answer states the result first, shows each step it relies on, keeps units and names "
    "as the task gives them, and never adds facts the task does not support."
    for i in range(1, 21)
)


def arguments(p) -> None:
    p.add_argument("--model", default="smollm2", help="smollm2 (the catalogue's SmolLM2-135M) or a model dir")
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)


def prompt_sets(rows: int) -> dict[str, list]:
    from instructscale.demo.pool import DemoConfig, iter_pool_rows
    from instructscale.generate.modes import packaged_template
    from instructscale.judge import pair_prompts

    pool = list(iter_pool_rows(DemoConfig(out_dir="x"), 0, rows))
    judge = packaged_template("evolve_judge")
    user = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    return {
        "distill": [user(r["instruction"]) for r in pool],
        "evolve_judge": [
            user(judge.format(before=r["instruction"], after=r["instruction"] + " Explain.")) for r in pool
        ],
        "pairwise_judge": [pair_prompts(r["instruction"], r["output"], "I do not know.", 2000)[0] for r in pool],
        "rubric": [user(f"{RUBRIC}\n\nTask: {r['instruction']}") for r in pool],
    }


def main() -> None:
    from vllm import SamplingParams

    from instructscale.backends.vllm import VllmConfig, make_llm
    from instructscale.models.catalog import fetch_model

    bench = Bench("prefix_caching", __doc__, arguments)
    args = bench.args
    model = fetch_model("smollm2-135m-instruct")["path"] if args.model == "smollm2" else args.model
    sets = prompt_sets(args.rows)
    engines = {on: make_llm(model, VllmConfig(enable_prefix_caching=on)) for on in (True, False)}
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    for llm in engines.values():  # an engine's first call runs ~30% slow: not part of the comparison
        llm.chat(sets["distill"][:64], params, use_tqdm=False)
    tokenizer = engines[True].get_tokenizer()
    for name, prompts in sets.items():
        text = tokenizer.apply_chat_template(prompts[0], add_generation_prompt=True, tokenize=False)
        prompt_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        for _ in range(args.repeats):
            for on, llm in engines.items():
                t0 = time.time()
                outs = llm.chat(prompts, params, use_tqdm=False)
                seconds = time.time() - t0
                tokens = sum(len(o.outputs[0].token_ids) for o in outs)
                bench.results.append(
                    {
                        "prompts": name,
                        "caching": on,
                        "prompt_tokens": prompt_tokens,
                        "seconds": seconds,
                        "tokens": tokens,
                    }
                )
    summary = []
    for name in sets:
        runs = {on: [r for r in bench.results if r["prompts"] == name and r["caching"] is on] for on in (True, False)}
        median = {on: statistics.median(r["seconds"] for r in rs) for on, rs in runs.items()}
        summary.append(
            {
                "prompts": name,
                "prompt_tokens": runs[True][0]["prompt_tokens"],
                "seconds_on": median[True],
                "seconds_off": median[False],
                "on_over_off_speed": median[False] / median[True],
            }
        )
    bench.table(["prompts", "prompt_tokens", "seconds_on", "seconds_off", "on_over_off_speed"], summary)
    bench.write(summary=summary)


if __name__ == "__main__":
    main()
