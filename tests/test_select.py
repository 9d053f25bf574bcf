"""Selection: each scorer on hand-computed cases, selectors' budgets and quotas, and the stage
end to end on a demo pool through Ray Data."""

import hashlib
import json
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest
import torch
from scipy.stats import spearmanr

from instructscale.config import ConfigError, parse_config
from instructscale.demo.pool import DemoConfig, iter_pool_rows
from instructscale.plugins import RowFilter
from instructscale.schema import POOL_SCHEMA, decode_metadata
from instructscale.scorers import ModelScorer
from instructscale.select import selectors
from instructscale.select.config import DedupSettings, SelectConfig
from instructscale.select.dedup import EXACT_BAND, bucket_pairs, jaccard, key_rows, lsh_bands, resolve
from instructscale.select.features import (
    first_failure,
    minhash_signatures,
    normalize_text,
    repetition,
    shingle_hashes,
    shingles,
)
from instructscale.select.ranks import RankSummary
from instructscale.select.stage import select
from instructscale.storage import write_parquet


def row(i, instruction, output="ok", inp="", meta=None):
    return {
        "id": f"r{i}",
        "instruction": instruction,
        "input": inp,
        "output": output,
        "messages": None,
        "source": "t",
        "metadata": json.dumps(meta or {}),
    }


def test_builtin_filters_and_the_demo_verifier_on_hand_computed_rows():
    assert repetition("a b c a b c a b c") == pytest.approx(1 - 3 / 7)
    assert repetition("one two three four") == 0 and repetition("short") == 0
    specs = [
        {"kind": "length", "max_output_chars": 50},
        "repetition",
        "control_characters",
        {"kind": "non_ascii", "max_non_ascii": 0.3},
        "refusal",
        "reference_answer",
    ]
    filters = [RowFilter.registry.build(RowFilter.registry.parse(s)) for s in specs]

    def reason(prompt, output, rep=0.0, meta=None):
        r = row(0, prompt, output, meta=meta)
        r.update(prompt=prompt, prompt_chars=len(prompt), output_chars=len(output), repetition=rep)
        return first_failure(r, filters)

    assert reason("Add 2 and 3.", "5") is None
    assert reason("Hi", "5") == "instruction_too_short"
    assert reason("Add 2 and 3.", "  ") == "output_too_short"
    assert reason("Add 2 and 3.", "5 " * 30) == "output_too_long"
    assert reason("Add 2 and 3.", "x", rep=0.6) == "repetitive_output"
    assert reason("Add 2 and 3.", "I'm sorry, I can't.") == "refusal"
    assert reason("Add \x00 3.", "5") == "control_characters"
    assert reason("Ответь на вопрос", "да") == "non_ascii"
    assert reason("q?!", "The answer is 5", meta={"answer": "5"}) == "verifier_wrong"
    assert reason("q?!", " 5. ", meta={"answer": "5"}) is None
    assert reason("q?!", "5") is None  # nothing to check against


def _dedup_batch(texts: dict[str, str], priority: dict[str, float], cfg: DedupSettings) -> pa.Table:
    """The columns the dedup shuffle reads, as the features stage computes them."""
    norm = [normalize_text(t) for t in texts.values()]
    hashes = [shingle_hashes(t, cfg.ngram) for t in norm]
    return pa.table(
        {
            "id": list(texts),
            "text_hash": [hashlib.sha1(t.encode()).hexdigest() for t in norm],
            "minhash": [s.tobytes() for s in minhash_signatures(hashes, cfg).astype("<u4")],
            "shingles": pa.array(hashes, pa.list_(pa.uint32())),
            "score": [priority.get(i, 0.0) for i in texts],
        }
    )


def _found(pairs: pa.Table) -> dict:
    return {r["id"]: (r["reason"], r["duplicate_of"]) for r in resolve(pairs).to_pylist()}


def _pairs_and_dups(texts: dict[str, str], priority: dict[str, float], cfg: DedupSettings) -> tuple[pa.Table, dict]:
    """The dedup shuffle's steps in one process: key rows, one bucket pass, resolve."""
    pairs = bucket_pairs(key_rows(_dedup_batch(texts, priority, cfg), cfg, partitions=1), cfg)
    return pairs, _found(pairs)


def test_dedup_removes_exactly_the_planted_duplicates():
    texts = {
        "a": "Write a short poem about the sea and the moon in the style of a sonnet.",
        "a_exact": "write a SHORT poem about the sea, and the moon in the style of a sonnet",
        "a_near": "Write a short poem about the sea and the moon in the style of a sonnet please.",
        "b": "Compute 37 + 52.",
        "b_other": "Compute 37 + 53.",  # a different task, not a duplicate
        "c": "Explain how photosynthesis converts light into chemical energy in plants.",
        "c_near": "Explain how photosynthesis converts light into chemical energy in plants today.",
    }
    # the better-scored copy is the one kept
    _, found = _pairs_and_dups(texts, {"c_near": 1.0}, DedupSettings())
    assert found == {
        "a_exact": ("exact_duplicate", "a"),
        "a_near": ("near_duplicate", "a"),
        "c": ("near_duplicate", "c_near"),
    }
    _, found = _pairs_and_dups(texts, {"a_exact": 2.0, "a_near": 1.0}, DedupSettings())
    assert found["a"] == ("exact_duplicate", "a_exact") and found["a_near"] == ("near_duplicate", "a_exact")
    _, found = _pairs_and_dups(texts, {}, DedupSettings(near=False))
    assert found == {"a_exact": ("exact_duplicate", "a")}
    _, found = _pairs_and_dups(texts, {}, DedupSettings(exact=False))  # an exact copy is a near duplicate too
    assert found["a_exact"] == ("near_duplicate", "a") and "b_other" not in found


def test_band_rows_carry_one_copy_of_each_text_per_batch():
    """A text copied many times puts one row per batch into each band bucket (its smallest id there),
    and the outcome is the same as with every copy in the buckets."""
    poem = "Write a short poem about the sea and the moon in the style of a sonnet"
    texts = {f"a{i:02d}": poem.upper() if i % 2 else poem for i in range(30)}
    texts |= {"a_near": poem + " please", "b": "Explain how photosynthesis turns light into sugar in green plants."}
    cfg = DedupSettings()
    batch = _dedup_batch(texts, {"a07": 1.0}, cfg)
    batches = [batch.take(list(range(k, batch.num_rows, 3))) for k in range(3)]
    keys = pa.concat_tables([key_rows(b, cfg, partitions=1) for b in batches])
    bands = lsh_bands(cfg.threshold, cfg.num_perm, cfg.candidate_recall)[0]
    band_rows = keys.filter(pc.not_equal(keys["band"], EXACT_BAND))
    assert band_rows.num_rows == 5 * bands  # the poem in each batch, a_near and b once
    assert set(band_rows["id"].to_pylist()) == {"a00", "a01", "a02", "a_near", "b"}
    expected = {k: ("exact_duplicate", "a07") for k in texts if k.startswith("a") and k not in ("a07", "a_near")}
    assert _found(bucket_pairs(keys, cfg)) == expected | {"a_near": ("near_duplicate", "a07")}


def test_duplicate_pairs_do_not_depend_on_how_rows_are_batched():
    """Texts whose smallest ids come in one order and their largest in the other: the pairs (and
    each pair's direction) are the same whether all copies share a batch or not."""
    words = [f"w{i}" for i in range(40)]
    variants = [" ".join([*words, f"end{k}"]) for k in range(5)]
    texts = {f"t{k}": v for k, v in enumerate(variants)} | {f"z{4 - k}": v for k, v in enumerate(variants)}
    cfg = DedupSettings()
    batch = _dedup_batch(texts, {}, cfg)
    together = bucket_pairs(key_rows(batch, cfg, partitions=1), cfg)
    apart = bucket_pairs(pa.concat_tables([key_rows(batch.slice(0, 5), cfg, 1), key_rows(batch.slice(5), cfg, 1)]), cfg)

    def directed(pairs: pa.Table) -> set:
        return set(zip(*(pairs[c].to_pylist() for c in ("kind", "id", "other"))))

    assert any(kind == "near" for kind, _, _ in directed(together))
    assert directed(apart) == directed(together)


def test_near_duplicate_clusters_are_connected_components_verified_by_exact_jaccard():
    words = [f"w{i}" for i in range(40)]
    base = " ".join(words)
    texts = {"x0": base}
    for k in range(1, 4):  # a chain: each copy changes two more words of the first
        texts[f"x{k}"] = " ".join(f"v{i}" if i < 2 * k else w for i, w in enumerate(words))
    texts["far"] = " ".join(f"v{i}" if i < 20 else w for i, w in enumerate(words))
    cfg = DedupSettings(threshold=0.8)
    norm = {k: shingle_hashes(normalize_text(t), cfg.ngram) for k, t in texts.items()}
    pairs, found = _pairs_and_dups(texts, {"x2": 1.0}, cfg)
    for kind, a, b in zip(*(pairs[c].to_pylist() for c in ("kind", "id", "other"))):
        assert kind == "near" and jaccard(norm[a], norm[b]) >= 0.8  # every pair verified exactly
    assert jaccard(norm["x0"], norm["x3"]) < 0.8  # not similar, yet one cluster through x1 and x2
    assert found == {k: ("near_duplicate", "x2") for k in ("x0", "x1", "x3")}


def test_lsh_banding_reaches_the_candidate_recall():
    for threshold, recall in ((0.8, 0.95), (0.5, 0.9), (0.95, 0.99)):
        b, r = lsh_bands(threshold, 128, recall)
        assert b * r <= 128 and 1 - (1 - threshold**r) ** b >= recall
        assert b * (r + 1) > 128 or 1 - (1 - threshold ** (r + 1)) ** b < recall  # the most selective
    assert lsh_bands(1.0, 128, 0.95) == (1, 128)


def test_batched_minhash_equals_datasketch():
    import xxhash
    from datasketch import MinHash

    cfg = DedupSettings()
    texts = ["", "one", "a b c d e f", *(" ".join(f"w{(i * j) % 97}" for j in range(i)) for i in range(2, 200, 7))]
    hashes = [shingle_hashes(t, cfg.ngram) for t in texts]
    sig = minhash_signatures(hashes, cfg)
    for text, row in zip(texts, sig):
        m = MinHash(cfg.num_perm, seed=cfg.seed, hashfunc=xxhash.xxh32_intdigest, scheme="legacy")
        m.update_batch([s.encode() for s in shingles(text, cfg.ngram)])
        assert (m.hashvalues.astype(np.uint32) == row).all()


def test_decontamination_drops_rows_sharing_a_13_gram_with_an_eval_set(tmp_path):
    question = "Tom has 12 apples and gives 5 of them to his friend Sarah, how many apples does Tom have left now"
    short = "Sort the list 3 1 2."
    write_parquet(
        str(tmp_path / "eval" / "part-0.parquet"),
        pa.Table.from_pylist([row(0, question, "7"), row(1, short, "1 2 3")], schema=POOL_SCHEMA),
    )
    spec = {"kind": "decontaminate", "eval_sets": [str(tmp_path / "eval")]}
    f = RowFilter.registry.build(RowFilter.registry.parse(spec))

    def reason(instruction, output="ok"):
        r = row(9, instruction, output)
        return f.filter({**r, "prompt": instruction})

    assert reason("Please answer: " + question.upper() + "?") == "contaminated"  # normalised, inside a longer text
    assert reason(" ".join(question.split()[:12]) + " and more words here") is None  # 12 words in common only
    assert reason("Now sort the list: 3, 1, 2!") == "contaminated"  # a short eval prompt appears whole
    assert reason("Sort the list 3 2 1.") is None
    assert reason("Something else.", output=question) == "contaminated"  # the response is searched too
    cfg = SelectConfig(
        input=str(tmp_path / "eval"),
        out_dir=str(tmp_path / "sel"),
        scorers=[],
    )
    cfg.filters.append(RowFilter.registry.parse({**spec, "eval_sets": [str(tmp_path / "nope")]}))
    with pytest.raises(ConfigError, match="decontaminate.eval_sets"):  # before any work starts
        select(cfg)


def test_ifd_and_losses_match_a_hand_computation(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scorer = ModelScorer(ModelScorer.Config(model=tiny_models["student"], max_length=128, dtype="float32"))
    scorer.setup()
    rows = [
        row(0, "Reverse the letters of the word.", "elppa", inp="apple"),
        row(1, "", "the same text either way"),
        row(2, "Compute 2 + 3, then explain every step of the sum in detail.", "5"),
        row(3, "No response yet.", ""),
    ]
    got = scorer.score(rows)
    # row 1: an empty instruction is the unconditioned prompt itself, so IFD is exactly 1
    assert got["ifd"][1] == pytest.approx(1.0, abs=1e-6)
    assert got["loss"][3] is None and got["ifd"][3] is None and got["embedding"][3] is None

    tok = AutoTokenizer.from_pretrained(tiny_models["student"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["student"]).eval()

    def manual_loss(user: str, response: str) -> float:  # one unpadded sequence, explicit log-softmax
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False
        )
        full = tok.apply_chat_template(
            [{"role": "user", "content": user}, {"role": "assistant", "content": response}], tokenize=False
        )
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = tok(full, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
        return -float(np.mean([logp[t - 1, ids[t]].item() for t in range(len(p_ids), len(ids))]))

    for i, user in (
        (0, "Reverse the letters of the word.\n\napple"),
        (2, "Compute 2 + 3, then explain every step of the sum in detail."),
    ):
        cond, alone = manual_loss(user, rows[i]["output"]), manual_loss("", rows[i]["output"])
        assert got["loss"][i] == pytest.approx(cond, rel=1e-4)
        assert got["loss_uncond"][i] == pytest.approx(alone, rel=1e-4)
        assert got["ifd"][i] == pytest.approx(cond / alone, rel=1e-4)
        assert got["ppl"][i] == pytest.approx(math.exp(cond), rel=1e-4)
    assert len(got["embedding"][0]) == model.config.hidden_size

    cfg = ModelScorer.Config(model=tiny_models["student"], max_length=128, dtype="float32", unconditioned=False)
    cond_only = ModelScorer(cfg)
    cond_only.setup()
    alone = cond_only.score(rows)
    assert alone["loss"][:3] == pytest.approx(got["loss"][:3], rel=1e-5)
    assert alone["loss_uncond"] == [None] * 4 and alone["ifd"] == [None] * 4


def test_selectors_budgets_quotas_and_diversity():
    assert selectors.allocate(10, {"a": 50, "b": 30, "c": 20}, None) == {"a": 5, "b": 3, "c": 2}
    assert selectors.allocate(10, {"a": 50, "b": 2, "c": 20}, {"a": 0.2, "b": 0.5, "c": 0.3}) == {
        "a": 3,
        "b": 2,
        "c": 5,
    }  # b has only 2 of its 5; the other 8 split 0.2:0.3 = 3.2:4.8
    assert selectors.allocate(100, {"a": 3, "b": 4}, None) == {"a": 3, "b": 4}
    assert sum(selectors.allocate(7, {"a": 1, "b": 1, "c": 1, "d": 100}, None).values()) == 7

    score = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    assert selectors.topk(score, 2).tolist() == [0, 1]
    emb = np.array([[1, 0], [1, 0.001], [0, 1], [0.001, 1], [-1, 0]], dtype=float)
    # rows 1 and 3 are near copies of 0 and 2: score-first diversity skips them
    assert selectors.diverse(score, emb, 3, min_distance=0.05).tolist() == [0, 2, 4]
    assert selectors.diverse(score, emb, 5, min_distance=0.05).tolist() == [0, 2, 4, 1, 3]  # filled by score
    assert sorted(selectors.kcenter(score, emb, 3).tolist()) == [0, 2, 4]
    assert len(set(selectors.random_pick(5, 3, seed=0).tolist())) == 3
    x = np.array([3.0, 1.0, np.nan, 3.0, 2.0])
    ranks = RankSummary.of(x).percentile(x)
    assert ranks.tolist() == [pytest.approx(2.5 / 3), 0.0, 0.5, pytest.approx(2.5 / 3), pytest.approx(1 / 3)]


def test_bad_select_configs_are_named(tmp_path):
    base = {"input": "x", "out_dir": "y"}
    with pytest.raises(ConfigError, match="unknown score column\\(s\\) \\['quality'\\]"):
        parse_config(SelectConfig, base | {"weights": {"quality": 1}})
    with pytest.raises(ConfigError, match="quotas must sum to 1"):
        parse_config(SelectConfig, base | {"budget": {"stratify_by": "task", "quotas": {"a": 0.5}}})
    with pytest.raises(ConfigError, match=r"selector: Value error, unknown selector 'best'; registered: "):
        parse_config(SelectConfig, base | {"selector": "best"})
    no_model = base | {"scorers": []}
    with pytest.raises(ConfigError, match="selector kcenter needs embeddings"):
        parse_config(SelectConfig, no_model | {"selector": "kcenter"})
    with pytest.raises(ConfigError, match=r"filters: max_ifd reads score column\(s\) \['ifd'\], which no configured"):
        parse_config(SelectConfig, no_model | {"filters": ["length", "max_ifd"]})
    defaults = parse_config(SelectConfig, no_model)  # no scorer: no weights, no IFD cap, difficulty from length
    assert defaults.selector.kind == "random" and defaults.weights == {} and defaults.difficulty.source == "length"
    assert [f.kind for f in defaults.filters] == ["length", "repetition", "control_characters", "refusal", "truncated"]
    modelled = parse_config(SelectConfig, base)  # the model scorer brings its weights, difficulty and IFD cap
    assert modelled.weights == {"ifd": 1.0, "loss": -0.5} and modelled.difficulty.source == "ifd"
    assert [f.kind for f in modelled.filters][-1] == "max_ifd"
    with pytest.raises(ConfigError, match="a kind twice needs a `name` on each but one"):
        parse_config(SelectConfig, base | {"scorers": ["model", "model"]})
    two = parse_config(SelectConfig, base | {"scorers": ["model", {"kind": "model", "name": "small"}]})
    assert two.weights == {"ifd": 1.0, "loss": -0.5, "small_ifd": 1.0, "small_loss": -0.5}
    assert [f.kind for f in two.filters].count("max_ifd") == 1 and "small_ifd" in two.score_columns()
    with pytest.raises(ConfigError, match=r"filters: min_score reads score column\(s\) \['judge'\]"):
        parse_config(SelectConfig, base | {"filters": [{"kind": "min_score", "column": "judge", "min": 8}]})
    write_parquet(str(tmp_path / "part-0.parquet"), pa.Table.from_pylist([row(0, "q")], schema=POOL_SCHEMA))
    with pytest.raises(ConfigError, match="the model scorer needs `model`"):
        select(parse_config(SelectConfig, {"input": str(tmp_path), "out_dir": str(tmp_path / "o")}))


def demo_pool(path, n):
    rows = list(iter_pool_rows(DemoConfig(out_dir="x"), 0, n))
    write_parquet(str(path / "part-0.parquet"), pa.Table.from_pylist(rows, schema=POOL_SCHEMA))
    return rows


@pytest.mark.slow
def test_stage_end_to_end_on_a_demo_pool(ray_local, tiny_models, tmp_path):
    rows = demo_pool(tmp_path / "pool", 600)
    noise = {r["id"]: decode_metadata(r["metadata"])["noise"] for r in rows}
    originals = {r["id"]: decode_metadata(r["metadata"]).get("duplicate_of") for r in rows}
    from openai_stub import StubServer

    judge = StubServer(reply=lambda prompt, i: f"Score: {1 + len(prompt) % 10}")
    cfg = parse_config(
        SelectConfig,
        {
            "input": str(tmp_path / "pool"),
            "out_dir": str(tmp_path / "sel"),
            "filters": ["length", "repetition", "control_characters", "refusal", "reference_answer"],
            "scorers": [
                {"kind": "model", "model": tiny_models["student"], "batch_size": 32, "max_replicas": 2},
                # Superfiltering's second IFD from another model, and DEITA's second judge aspect
                {"kind": "model", "name": "small", "model": tiny_models["teacher"], "batch_size": 32},
                {
                    "kind": "judge",
                    "model": "stub",
                    "backend": {"kind": "openai", "base_url": judge.url, "api_key_env": None},
                },
                {
                    "kind": "judge",
                    "name": "complexity",
                    "model": "stub",
                    "backend": {"kind": "openai", "base_url": judge.url, "api_key_env": None},
                    "template": "How complex is this instruction, 1-10?\n{instruction}\n(answer: {response})",
                },
            ],
            "selector": "diverse",
            "weights": {"ifd": 1.0, "loss": -0.5, "judge": 0.5},
            "budget": {
                "budget": 200,
                "stratify_by": "task",
                "quotas": {"arithmetic": 0.4, "string": 0.2, "sorting": 0.2, "units": 0.2},
            },
            "difficulty": {"source": "metadata"},
            "batch_size": 100,
        },
    )
    try:
        m = select(cfg)
    finally:
        judge.close()
    scores = pads.dataset(str(tmp_path / "sel" / "scores"), format="parquet").to_table()
    selected = pads.dataset(str(tmp_path / "sel" / "selected"), format="parquet").to_table()
    # every input row is accounted for, once, with a status and (unless selected) a reason
    assert sorted(scores["id"].to_pylist()) == sorted(noise)
    status = Counter(scores["status"].to_pylist())
    assert status == {"selected": 200, "removed": sum(m["removed"].values()), "not_selected": m["not_selected"]}
    assert all(
        (s == "selected") == (r is None) for s, r in zip(scores["status"].to_pylist(), scores["reason"].to_pylist())
    )
    assert m["selected"] == selected.num_rows == 200
    assert m["selected_by_stratum"] == {"arithmetic": 80, "string": 40, "sorting": 40, "units": 40}
    # planted noise: wrong answers fail the verifier, exact copies are duplicates, loops are too long
    reason = dict(zip(scores["id"].to_pylist(), scores["reason"].to_pylist()))
    for rid, kind in noise.items():
        if kind == "wrong_answer":
            assert reason[rid] == "verifier_wrong"
        if kind == "duplicate":  # identical copies: one of the pair goes (the smaller id stays on a tie)
            src = originals[rid]
            assert "exact_duplicate" in (reason[rid], reason[src]) or reason[rid] == reason[src] is not None
        if kind == "overlong_output":
            assert reason[rid] in ("output_too_long", "repetitive_output")
        if kind == "empty_output":
            assert reason[rid] == "output_too_short"
    assert "minhash" not in selected.column_names and "embedding" not in selected.column_names
    assert selected["difficulty"].null_count == 0 and set(selected["difficulty"].to_pylist()) <= {1, 2, 3, 4, 5}
    assert all(v is not None for v in selected["ifd"].to_pylist())
    assert m["judge_unparsable"] == m["complexity_judge_unparsable"] == 0
    assert set(scores["judge"].to_pylist()) - {None} <= set(range(1, 11))
    # two scorers of one kind side by side: their own columns, their own values
    scored = [r for r in scores.to_pylist() if r["ifd"] is not None]
    assert all(r["small_ifd"] is not None and r["complexity_judge"] is not None for r in scored)
    assert sum(r["small_ifd"] != r["ifd"] for r in scored) > len(scored) // 2
    assert sum(r["complexity_judge"] != r["judge"] for r in scored) > 0
    # ... and how alike they rank the pool: scipy's Spearman on the rows both scored
    agree = m["rank_correlations"]
    assert set(agree) == {"small_loss", "small_loss_uncond", "small_ppl", "small_ifd", "complexity_judge"}
    for col in ("ifd", "loss", "judge"):
        other = "complexity_judge" if col == "judge" else f"small_{col}"
        both = [(r[col], r[other]) for r in scores.to_pylist() if None not in (r[col], r[other])]
        assert agree[other]["with"] == col and agree[other]["rows"] == len(both) > 0
        assert agree[other]["spearman"] == pytest.approx(spearmanr(*zip(*both)).statistic, abs=2e-4)
    judged = [
        (j is not None, f is None) for j, f in zip(scores["judge"].to_pylist(), scores["filter_reason"].to_pylist())
    ]
    assert all(has_score == unfiltered for has_score, unfiltered in judged), "filtered rows are not judged"

    # changing only the selector reuses the features and re-decides (here k-center in shards
    # of 100 rows, then a merge of 2x candidates, or with 5x a split of the budget over the shards);
    # default quotas follow the input's task mix (quota_basis input) or the mix left after filters and
    # dedup (eligible)
    tasks = {r["id"]: decode_metadata(r["metadata"])["task"] for r in rows}
    eligible = Counter(
        tasks[i] for i, st in zip(scores["id"].to_pylist(), scores["status"].to_pylist()) if st != "removed"
    )
    alloc = {}
    for basis, weights, oversample in (("input", Counter(tasks.values()), 2), ("eligible", eligible, 5)):
        again = select(
            parse_config(
                SelectConfig,
                {
                    **cfg.model_dump(mode="json"),
                    "selector": {"kind": "kcenter", "shard_rows": 100, "oversample": oversample},
                    "budget": {"budget": 100, "stratify_by": "task", "quota_basis": basis},
                },
            )
        )
        assert again["selected"] == 100 and again["features_seconds"] == m["features_seconds"]
        assert again["allocation"] == selectors.allocate(100, dict(eligible), dict(weights))
        decided = pads.dataset(str(tmp_path / "sel" / "scores"), format="parquet").to_table()
        assert all(
            (s == "selected") == (r is None)  # no removed row is picked
            for s, r in zip(decided["status"].to_pylist(), decided["reason"].to_pylist())
        )
        alloc[basis] = again["allocation"]
    assert alloc["input"] != alloc["eligible"]

    # AlpaGasus's judge threshold as a filter after scoring, then the longest responses
    longest = {
        **cfg.model_dump(mode="json"),
        "filters": [*cfg.model_dump(mode="json")["filters"], {"kind": "min_score", "column": "judge", "min": 5}],
        "selector": "longest",
        "budget": {"budget": 50},
    }
    assert select(parse_config(SelectConfig, longest))["features_seconds"] == m["features_seconds"]
    decided = pads.dataset(str(tmp_path / "sel" / "scores"), format="parquet").to_table().to_pylist()
    low = [r for r in decided if r["filter_reason"] is None and r["judge"] is not None and r["judge"] < 5]
    assert low and all(r["reason"] in ("judge_below_min", "verifier_wrong") for r in low)
    chosen = [r["output_chars"] for r in decided if r["status"] == "selected"]
    passed = [r["output_chars"] for r in decided if r["status"] == "not_selected"]
    assert len(chosen) == 50 and min(chosen) >= max(passed)  # the 50 longest of the eligible rows


def test_llm_judge_scores_through_the_openai_backend():
    from instructscale.scorers import JudgeScorer, parse_score
    from openai_stub import StubServer

    assert parse_score("Score: 7") == 7.0 and parse_score("score=8.5\nbecause") == 8.5
    assert parse_score("I think it is fine") is None and parse_score("Score: 42") is None

    def reply(prompt, i):  # a judge that likes correct sums and cannot decide on anything else
        if "Response:\n5" in prompt:
            return "Score: 9"
        return "Score: 2" if "Response:\n6" in prompt else "hard to say"

    server = StubServer(reply=reply)
    try:
        judge = JudgeScorer(
            JudgeScorer.Config(model="stub", backend={"kind": "openai", "base_url": server.url, "api_key_env": None})
        )
        judge.setup()
        rows = [row(0, "Add 2 and 3.", "5"), row(1, "Add 2 and 3.", "6"), row(2, "Add 2 and 3.", "five")]
        assert judge.score(rows) == {"judge": [9.0, 2.0, None], "judge_error": [None, None, "judge_unparsable"]}
    finally:
        server.close()
    with pytest.raises(ConfigError, match=r"unknown score column\(s\) \['judge'\]"):
        parse_config(SelectConfig, {"input": "x", "out_dir": "y", "weights": {"judge": 1.0}})
    with pytest.raises(ConfigError, match="judge template must contain \\{response\\}"):
        parse_config(
            SelectConfig,
            {"input": "x", "out_dir": "y", "scorers": [{"kind": "judge", "model": "m", "template": "{instruction}"}]},
        )


def percentile_ranks(values: np.ndarray) -> np.ndarray:
    """The reference: mean ranks among the non-NaN values (scipy), in [0, 1]; NaN ranks 0.5."""
    from scipy.stats import rankdata

    out, ok = np.full(len(values), 0.5), ~np.isnan(values)
    out[ok] = (rankdata(values[ok]) - 1) / (ok.sum() - 1)
    return out


def test_rank_summaries_merge_to_the_exact_percentile_ranks_and_stay_bounded():
    rng = np.random.default_rng(0)
    x = np.round(rng.normal(size=5000), 2)  # many ties
    x[rng.random(5000) < 0.05] = np.nan
    merged = RankSummary.of(np.array([]))
    for block in np.array_split(x, 13):
        merged = merged.merge(RankSummary.of(block))
    assert np.array_equal(merged.percentile(x), percentile_ranks(x))  # exact, ties and NaN included
    y = rng.normal(size=100_000)
    small = RankSummary.of(np.array([]))
    for block in np.array_split(y, 40):
        small = small.merge(RankSummary.of(block)).compressed(512)
    assert len(small.values) <= 514
    assert np.abs(small.percentile(y) - percentile_ranks(y)).max() < 3 / 512


def test_scorer_agreement_is_scipys_spearman_over_the_rows_both_scored(ray_local):
    from instructscale.select import agreement

    rng = np.random.default_rng(0)
    a = np.round(rng.normal(size=3000), 1)  # ties
    b = a + rng.normal(scale=0.8, size=3000)
    a[rng.random(3000) < 0.05], b[rng.random(3000) < 0.05] = np.nan, np.nan
    ds = ray_local.data.from_arrow(pa.table({"ifd": a, "small_ifd": b})).repartition(7)
    got = agreement.spearman(ds, "ifd", "small_ifd")
    ok = ~(np.isnan(a) | np.isnan(b))
    assert got["with"] == "ifd" and got["rows"] == ok.sum()
    assert got["spearman"] == pytest.approx(spearmanr(a[ok], b[ok]).statistic, abs=1e-4)
    cfg = parse_config(
        SelectConfig,
        {"input": "x", "out_dir": "y", "scorers": [{"kind": "model", "name": "small"}, "model"]},
    )
    assert ("ifd", "small_ifd") in agreement.pairs(cfg) and ("small_ifd", "ifd") not in agreement.pairs(cfg)
    assert not agreement.pairs(parse_config(SelectConfig, {"input": "x", "out_dir": "y", "scorers": ["model"]}))
