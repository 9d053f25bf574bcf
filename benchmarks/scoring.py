"""Scoring near the hardware: the model scorer (a row's response loss with and without its
instruction, IFD and an embedding) on SmolLM2-135M-Instruct in bf16 over demo rows, three ways on
the same rows, threads and precision:

- ``scorer``: the project's scorer (rows sorted by length into micro-batches; the output head and
  the softmax on response tokens only);
- ``full_logits``: the same batches with logits on every position, as the scorer did before;
- ``vllm_prompt_logprobs``: a vLLM engine's ``prompt_logprobs`` over the same token ids (no hidden
  states: no embedding), engine start-up timed apart;
- ``per_sample``: the scorer called one row at a time (the first --per-sample-rows rows), as a loop
  over rows scores them (the batched/per-sample goal, >= 20x, is a GPU figure).

MFU counts the model's 2N FLOPs per real token (conditioned and unconditioned sequences, padding
excluded) against this machine's bf16 matmul peak, measured in the same run with the same threads.
    python benchmarks/scoring.py --rows 512                     # -> scoring.json
    python benchmarks/scoring.py --rows 4096 --device cuda      # -> scoring_cuda.json
"""

from __future__ import annotations

import math
import time

import torch

from harness import Bench


def arguments(p) -> None:
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a scorer replica's CPU)")
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--no-vllm", action="store_true")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the scorer runs")
    p.add_argument("--per-sample-rows", type=int, default=32, help="rows scored one at a time (0: skip)")


def full_logit_losses(model, examples: list, pad_id: int) -> list[float]:
    """The scorer's loss as it was computed before: logits on every position, then masked."""
    from instructscale.tokens import IGNORE, collate

    batch = {k: v.to(model.device) for k, v in collate(examples, pad_id).items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    mask = (labels != IGNORE).float()
    return ((nll * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()


def full_logits(scorer, prepared: list[tuple]) -> list[float]:
    from instructscale.scorers import MICRO_BATCH

    order = sorted(range(len(prepared)), key=lambda i: len(prepared[i][0].input_ids))
    losses = {}
    with torch.no_grad():
        for start in range(0, len(order), MICRO_BATCH):
            part = order[start : start + MICRO_BATCH]
            for k in (0, 1):
                got = full_logit_losses(scorer.lm, [prepared[i][k] for i in part], scorer.tokenizer.pad_token_id)
                losses.update({(i, k): v for i, v in zip(part, got)})
    return [losses[i, 0] for i in range(len(prepared))]


def vllm_losses(model: str, prepared: list[tuple]) -> tuple[float, float, list[float]]:
    """(engine start-up seconds, scoring seconds, conditioned losses) through ``prompt_logprobs``."""
    from vllm import SamplingParams

    from instructscale.backends.vllm import VllmConfig, make_llm
    from instructscale.tokens import IGNORE

    t0 = time.time()
    llm = make_llm(model, VllmConfig(dtype="bfloat16", max_model_len=512))
    t1 = time.time()
    prompts = [{"prompt_token_ids": ex.input_ids} for pair in prepared for ex in pair]
    outs = llm.generate(prompts, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
    seconds = time.time() - t1
    losses = []
    for ex, out in zip([p[0] for p in prepared], outs[::2]):
        got = [-out.prompt_logprobs[i][t].logprob for i, t in enumerate(ex.labels) if i and t != IGNORE]
        losses.append(sum(got) / len(got) if got else math.nan)
    return t1 - t0, seconds, losses


def main() -> None:
    from instructscale import storage
    from instructscale.hardware import measure
    from instructscale.lifecycle import part_files
    from instructscale.models.catalog import fetch_model
    from instructscale.scorers import ModelScorer

    bench = Bench("scoring", __doc__, arguments)
    args = bench.args
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    pool, _ = bench.demo(args.rows * 2)
    rows = [r for r in storage.read_parquet(part_files(pool)).to_pylist() if r["output"]][: args.rows]
    model = fetch_model("smollm2-135m-instruct")["path"]
    config = ModelScorer.Config(model=model, max_length=args.max_length, dtype="bfloat16", num_gpus=int(cuda))
    scorer = ModelScorer(config)  # num_gpus: the scorer's replicas run on cuda
    scorer.setup()
    scorer.score(rows[:16])  # warm-up
    prepared = [p for p in map(scorer._examples, rows) if not isinstance(p, str)]
    tokens = sum(len(c.input_ids) + len(u.input_ids) for c, u in prepared)
    flops = 2 * sum(p.numel() for p in scorer.lm.parameters()) * tokens
    peak = measure(torch.bfloat16, "cuda:0" if cuda else "cpu")
    with bench.timed(method="scorer") as row:
        mine = scorer.score(rows)["loss"]
        _sync(cuda)
    with bench.timed(method="full_logits") as row:
        before = full_logits(scorer, prepared)
        _sync(cuda)
    agree = max(abs(a - b) for a, b in zip(mine, before) if a is not None)
    if not args.no_vllm:
        start, seconds, theirs = vllm_losses(model, prepared)
        bench.results.append({"method": "vllm_prompt_logprobs", "seconds": seconds, "startup_s": start})
        agree_vllm = max(abs(a - b) for a, b in zip(mine, theirs) if a is not None)
    one_by_one = rows[: args.per_sample_rows]
    if one_by_one:
        with bench.timed(method="per_sample", rows=len(one_by_one)) as row:
            for r in one_by_one:
                scorer.score([r])
            _sync(cuda)
    for row in bench.results:
        row.setdefault("rows", len(rows))
        row["rows_per_s"] = row["rows"] / row["seconds"]
        # per_sample scores a prefix of the rows: its FLOPs are taken at the average tokens a row
        row["mfu_pct"] = 100 * flops * row["rows"] / len(rows) / row["seconds"] / 1e12 / peak
    bench.table(["method", "rows", "seconds", "rows_per_s", "mfu_pct", "startup_s"])
    where = torch.cuda.get_device_name(0) if cuda else f"{args.threads} threads"
    print(f"peak {peak:.3f} TFLOP/s (bf16, {where}); {tokens / len(rows):.1f} real tokens a row")
    scored = bench.results[0]
    per_sample = next((r for r in bench.results if r["method"] == "per_sample"), None)
    bench.write(
        "scoring_cuda" if cuda else "scoring",
        device=where,
        batched_over_per_sample=scored["rows_per_s"] / per_sample["rows_per_s"] if per_sample else None,
        rows_per_s=scored["rows_per_s"],
        peak_tflops=peak,
        mfu_pct=scored["mfu_pct"],
        tokens_per_row=tokens / len(rows),
        speedup_over_full_logits=bench.results[1]["seconds"] / scored["seconds"],
        max_loss_difference={"full_logits": agree, **({"vllm": agree_vllm} if not args.no_vllm else {})},
    )


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
