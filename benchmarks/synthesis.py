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
          ROUGE-L F between any two of seeds + accepted tasks (must stay < 0.7); each mode's
          seconds against the seconds spent inside engine calls (goal: <= 1.5x).
          -> benchmarks/results/synthesis.json

    python benchmarks/synthesis.py novelty --existing 50000
    python benchmarks/synthesis.py teacher --model ~/.cache/instructscale/models/smollm2-135m-instruct
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

from harness import Bench, print_table

SEEDS = Path(__file__).resolve().parents[1] / "configs" / "seed_tasks.jsonl"


def synthetic_instructions(n: int, rng: random.Random, vocab: list[str]) -> list[str]:
    weights = [1 / (i + 1) for i in range(len(vocab))]  # Zipf: a few words are everywhere
    return [" ".join(rng.choices(vocab, weights, k=rng.randint(4, 24))) for _ in range(n)]


def edit(text: str, rng: random.Random, vocab: list[str]) -> str:
    words = text.split()
    for _ in range(rng.randint(1, 3)):
        words[rng.randrange(len(words))] = rng.choice(vocab)
    return " ".join(words)


def _candidates(args, rng: random.Random) -> tuple[list[str], list[str]]:
    """(pool, candidates): half the candidates new, half light edits of pool instructions."""
    vocab = [f"w{i}" for i in range(5000)]
    pool = synthetic_instructions(args.existing, rng, vocab)
    fresh = synthetic_instructions(args.candidates // 2, rng, vocab)
    edited = [edit(rng.choice(pool), rng, vocab) for _ in range(args.candidates - len(fresh))]
    return pool, [c for pair in zip(fresh, edited) for c in pair]


def _indexed(pool: list[str], candidates: list[str], threshold: float) -> tuple[list[bool], float, float]:
    """The stage's prefiltered index: accepted per candidate, build seconds, check seconds."""
    from instructscale.generate.novelty import NoveltyIndex

    t0 = time.perf_counter()
    index = NoveltyIndex()
    for text in pool:
        index.add(index.tokenize(text))
    build_s, t0 = time.perf_counter() - t0, time.perf_counter()
    accepted = []
    for text in candidates:
        tokens = index.tokenize(text)
        accepted.append(index.nearest(tokens, threshold)[1] is None)
        if accepted[-1]:
            index.add(tokens)
    return accepted, build_s, time.perf_counter() - t0


def _all_pairs(pool: list[str], candidates: list[str], threshold: float) -> tuple[list[bool], float]:
    """rouge-score against every instruction known so far: accepted per candidate, seconds."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    known, accepted, t0 = list(pool), [], time.perf_counter()
    for text in candidates:
        accepted.append(all(scorer.score(k, text)["rougeL"].fmeasure < threshold for k in known))
        if accepted[-1]:
            known.append(text)
    return accepted, time.perf_counter() - t0


def novelty(bench: Bench) -> None:
    args = bench.args
    pool, candidates = _candidates(args, random.Random(0))
    indexed, build_s, indexed_s = _indexed(pool, candidates, args.threshold)
    brute, brute_s = _all_pairs(pool, candidates[: args.all_pairs], args.threshold)
    n_brute = len(brute)
    bench.results += [
        {"method": "all-pairs rouge-score", "candidates": n_brute, "seconds": brute_s, "rows_per_s": n_brute / brute_s},
        {
            "method": "prefiltered index",
            "candidates": len(candidates),
            "seconds": indexed_s,
            "rows_per_s": len(candidates) / indexed_s,
        },
    ]
    bench.table(["method", "candidates", "seconds", "rows_per_s"])
    same = indexed[:n_brute] == brute
    speedup = bench.results[1]["rows_per_s"] / bench.results[0]["rows_per_s"]
    print(
        f"\n{args.existing:,} existing instructions (index built in {build_s:.1f} s); accepted "
        f"{sum(indexed)} of {len(candidates)}; same decisions on the first {n_brute}: {same}; "
        f"speed-up {speedup:.0f}x (goal >= 20)"
    )
    bench.write(
        "synthesis_novelty", index_build_s=build_s, accepted=sum(indexed), same_accepted_set=same, speedup=speedup
    )


def _outcomes(name: str, rows: list[dict], meta: list[dict], seeds: list[str]) -> dict:
    """Counts by round and outcome, with what each mode shows best: Self-Instruct's ROUGE-L spread
    and its worst pair, Evol-Instruct's chains of operations."""
    from rouge_score import rouge_scorer

    counts = Counter((mt.get("round"), r["reject_reason"] or "accepted") for r, mt in zip(rows, meta))
    table = [{"round": k[0], "outcome": k[1], "rows": v} for k, v in sorted(counts.items(), key=str)]
    print_table(table, ["round", "outcome", "rows"])
    kept = [(r, mt) for r, mt in zip(rows, meta) if r["reject_reason"] is None]
    if name != "self_instruct":
        return {
            "by_round": table,
            "examples": [{"evolution": mt["evolution"], "instruction": r["instruction"]} for r, mt in kept][:10],
        }
    bins = Counter(min(int(mt["rouge_l"] * 10), 9) / 10 for mt in meta if "rouge_l" in mt)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    texts = seeds + [r["instruction"] for r, _ in kept]
    worst = max(scorer.score(a, b)["rougeL"].fmeasure for i, a in enumerate(texts) for b in texts[i + 1 :])
    histogram = {f"{b:.1f}-{b + 0.1:.1f}": bins[b] for b in sorted(bins)}
    print("ROUGE-L of candidates vs the pool:", histogram)
    print(f"largest ROUGE-L F between two of seeds + accepted: {worst:.3f} (must be < 0.7)")
    examples = [r["instruction"] for r, _ in kept][:10]
    return {
        "by_round": table,
        "rouge_l_histogram": histogram,
        "max_rouge_l_seeds_and_output": worst,
        "examples": examples,
    }


def teacher(bench: Bench) -> None:
    from instructscale.config import parse_config
    from instructscale.generate.config import GenerateConfig
    from instructscale.generate.stage import generate, read_generated
    from instructscale.pools.ingest import IngestConfig, PoolInput, ingest
    from instructscale.progress import setup_logging
    from instructscale.schema import decode_metadata

    work = bench.work
    print(f"work: {work}; log: {setup_logging(False, str(work / 'logs'))}")
    bench.ray(num_cpus=4)
    ingest(IngestConfig(inputs=[PoolInput(path=str(SEEDS), format="seed_tasks")], out_dir=str(work / "seeds")))
    seeds = [json.loads(line)["instruction"] for line in SEEDS.read_text().splitlines()]
    common = {
        "input": str(work / "seeds" / "pool"),
        "model": str(Path(bench.args.model).resolve()),
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
    out: dict = {"seeds": len(seeds)}
    for name, extra in runs.items():
        t0 = time.time()
        cfg = parse_config(GenerateConfig, {**common, **extra, "out_dir": str(work / name)})
        m = generate(cfg)
        rows = read_generated(cfg.out_dir, include_rejected=True).to_pylist()
        print(f"\n{name}: {m['rows']} rows kept, {time.time() - t0:.0f} s")
        meta = [decode_metadata(r["metadata"]) for r in rows]
        seconds, engine_s = time.time() - t0, m["this_run"]["engine_s"]
        print(f"{name}: {seconds:.0f} s, {engine_s:.0f} s inside engine calls: {seconds / engine_s:.2f}x (goal <= 1.5)")
        result = {
            "seconds": seconds,
            "engine_seconds": engine_s,
            "seconds_over_engine": seconds / engine_s,
            "replica_load_s": m["this_run"]["replica_load_s"],
            "kept": m["rows"],
            "rejected": m["rejected"],
        }
        out[name] = {**result, **_outcomes(name, rows, meta, seeds)}
    bench.write("synthesis", **out)


def arguments(parser) -> None:
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("novelty")
    p.add_argument("--existing", type=int, default=50_000)
    p.add_argument("--candidates", type=int, default=2000)
    p.add_argument("--all-pairs", type=int, default=10, help="candidates the all-pairs check runs on")
    p.add_argument("--threshold", type=float, default=0.7)
    p = sub.add_parser("teacher")
    p.add_argument("--model", required=True)


def main() -> None:
    bench = Bench("synthesis", __doc__, arguments)
    run = novelty if bench.args.what == "novelty" else teacher
    run(bench)


if __name__ == "__main__":
    main()
