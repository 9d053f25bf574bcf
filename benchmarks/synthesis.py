"""Instruction synthesis, measured.

novelty   Self-Instruct's novelty filter at scale: candidates checked in order against a pool of
          --existing instructions (and the candidates accepted before them), by the stage's
          prefiltered index and by all-pairs rouge-score, in the same run; rows/s of each and
          whether they accept the same set (goal: >= 20x, identical). Instructions are synthetic
          (Zipf-distributed words, 4-24 of them); half the candidates are light edits of pool ones.
          -> benchmarks/results/synthesis_novelty.json
teacher   Self-Instruct (20 seed tasks, 2 rounds, target 60) and Evol-Instruct (3 rounds over the
          seeds' instructions) with a real teacher on the vLLM backend: counts by round and reject
          reason, the ROUGE-L distribution of the candidates against the pool, and the largest
          ROUGE-L F between any two of seeds + accepted tasks (must stay < 0.7).
          -> benchmarks/results/synthesis.json

    python benchmarks/synthesis.py novelty --existing 50000
    python benchmarks/synthesis.py teacher --model runs/smollm2/models/teacher
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import print_table, write_result

SEEDS = Path(__file__).resolve().parents[1] / "configs" / "seed_tasks.jsonl"


def synthetic_instructions(n: int, rng: random.Random, vocab: list[str]) -> list[str]:
    weights = [1 / (i + 1) for i in range(len(vocab))]  # Zipf: a few words are everywhere
    return [" ".join(rng.choices(vocab, weights, k=rng.randint(4, 24))) for _ in range(n)]


def edit(text: str, rng: random.Random, vocab: list[str]) -> str:
    words = text.split()
    for _ in range(rng.randint(1, 3)):
        words[rng.randrange(len(words))] = rng.choice(vocab)
    return " ".join(words)


def novelty(args) -> None:
    from rouge_score import rouge_scorer

    from instructscale.generate.novelty import NoveltyIndex

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    pool = synthetic_instructions(args.existing, rng, vocab)
    fresh = synthetic_instructions(args.candidates // 2, rng, vocab)
    edited = [edit(rng.choice(pool), rng, vocab) for _ in range(args.candidates - len(fresh))]
    candidates = [c for pair in zip(fresh, edited) for c in pair]

    t0 = time.perf_counter()
    index = NoveltyIndex()
    for text in pool:
        index.add(index.tokenize(text))
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    indexed = []
    for text in candidates:
        tokens = index.tokenize(text)
        if index.nearest(tokens, args.threshold)[1] is None:
            index.add(tokens)
            indexed.append(True)
        else:
            indexed.append(False)
    indexed_s = time.perf_counter() - t0

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    known, brute = list(pool), []
    t0 = time.perf_counter()
    for text in candidates[: args.all_pairs]:
        ok = all(scorer.score(k, text)["rougeL"].fmeasure < args.threshold for k in known)
        brute.append(ok)
        if ok:
            known.append(text)
    brute_s = time.perf_counter() - t0

    n_brute = len(brute)
    rows = [
        {"method": "all-pairs rouge-score", "candidates": n_brute, "seconds": brute_s, "rows_per_s": n_brute / brute_s},
        {
            "method": "prefiltered index",
            "candidates": len(candidates),
            "seconds": indexed_s,
            "rows_per_s": len(candidates) / indexed_s,
        },
    ]
    print_table(rows, ["method", "candidates", "seconds", "rows_per_s"])
    same = indexed[:n_brute] == brute
    speedup = rows[1]["rows_per_s"] / rows[0]["rows_per_s"]
    print(
        f"\n{args.existing:,} existing instructions (index built in {build_s:.1f} s); accepted "
        f"{sum(indexed)} of {len(candidates)}; same decisions on the first {n_brute}: {same}; "
        f"speed-up {speedup:.0f}x (goal >= 20)"
    )
    write_result(
        "synthesis_novelty",
        {
            "args": vars(args),
            "results": rows,
            "index_build_s": build_s,
            "accepted": sum(indexed),
            "same_accepted_set": same,
            "speedup": speedup,
        },
    )


def teacher(args) -> None:
    from rouge_score import rouge_scorer

    from instructscale.config import parse_config
    from instructscale.generate.config import GenerateConfig
    from instructscale.generate.stage import generate, read_generated
    from instructscale.pools.ingest import IngestConfig, PoolInput, ingest
    from instructscale.progress import setup_logging
    from instructscale.runtime import RayConfig, init_ray
    from instructscale.schema import decode_metadata

    work = Path(tempfile.mkdtemp(prefix="bench-synthesis-"))
    print(f"work: {work}; log: {setup_logging(False, str(work / 'logs'))}")
    init_ray(RayConfig(num_cpus=4))
    ingest(IngestConfig(inputs=[PoolInput(path=str(SEEDS), format="seed_tasks")], out_dir=str(work / "seeds")))
    seeds = [json.loads(line)["instruction"] for line in SEEDS.read_text().splitlines()]
    common = {
        "input": str(work / "seeds" / "pool"),
        "model": str(Path(args.model).resolve()),
        "backend": "vllm",
        "replicas": {"batch_size": 16, "num_cpus": 2},
        "sampling": {"temperature": 0.7, "seed": 0, "max_tokens": 160},
    }
    runs = {
        "self_instruct": {
            "mode": "self_instruct",
            "self_instruct": {"rounds": 2, "target_tasks": 60, "rouge_l_max": 0.7},
        },
        "evolve": {"mode": "evolve", "evolve": {"rounds": 3}},
    }
    out: dict = {"args": vars(args), "seeds": len(seeds)}
    for name, extra in runs.items():
        t0 = time.time()
        cfg = parse_config(GenerateConfig, {**common, **extra, "out_dir": str(work / name)})
        m = generate(cfg)
        rows = read_generated(cfg.out_dir, include_rejected=True).to_pylist()
        meta = [decode_metadata(r["metadata"]) for r in rows]
        counts = Counter((mt.get("round"), r["reject_reason"] or "accepted") for r, mt in zip(rows, meta))
        table = [{"round": k[0], "outcome": k[1], "rows": v} for k, v in sorted(counts.items(), key=str)]
        print(f"\n{name}: {m['rows']} rows kept, {time.time() - t0:.0f} s")
        print_table(table, ["round", "outcome", "rows"])
        result = {"seconds": time.time() - t0, "kept": m["rows"], "rejected": m["rejected"], "by_round": table}
        if name == "self_instruct":
            rouge = [mt["rouge_l"] for mt in meta if "rouge_l" in mt]
            bins = Counter(min(int(x * 10), 9) / 10 for x in rouge)
            result["rouge_l_histogram"] = {f"{b:.1f}-{b + 0.1:.1f}": bins[b] for b in sorted(bins)}
            scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
            texts = seeds + [r["instruction"] for r in rows if r["reject_reason"] is None]
            worst = max(scorer.score(a, b)["rougeL"].fmeasure for i, a in enumerate(texts) for b in texts[i + 1 :])
            result["max_rouge_l_seeds_and_output"] = worst
            result["examples"] = [r["instruction"] for r in rows if r["reject_reason"] is None][:10]
            print("ROUGE-L of candidates vs the pool:", result["rouge_l_histogram"])
            print(f"largest ROUGE-L F between two of seeds + accepted: {worst:.3f} (must be < 0.7)")
        else:
            result["examples"] = [
                {"evolution": mt["evolution"], "instruction": r["instruction"]}
                for r, mt in zip(rows, meta)
                if r["reject_reason"] is None
            ][:10]
        out[name] = result
    write_result("synthesis", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("novelty")
    p.add_argument("--existing", type=int, default=50_000)
    p.add_argument("--candidates", type=int, default=2000)
    p.add_argument("--all-pairs", type=int, default=10, help="candidates the all-pairs check runs on")
    p.add_argument("--threshold", type=float, default=0.7)
    p = sub.add_parser("teacher")
    p.add_argument("--model", required=True)
    args = parser.parse_args()
    if args.what == "novelty":
        novelty(args)
    else:
        teacher(args)


if __name__ == "__main__":
    main()
