"""Demo pool: verifiable answers, planted noise at the configured rates, disjoint eval split."""

import json
import random
from collections import Counter

import pyarrow.parquet as pq
import pytest

from instructscale.answers import check_answer
from instructscale.chat import prompt_text
from instructscale.demo.general import iter_general_rows
from instructscale.demo.pool import DemoConfig, NoiseConfig, _is_eval, iter_eval_rows, iter_pool_rows, make_demo
from instructscale.demo.tasks import MAX_DIFFICULTY, TASKS
from instructscale.plugins import RowFilter


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_and_difficulty_yields_exact_answers(task):
    rng = random.Random(1)
    for d in range(1, MAX_DIFFICULTY + 1):
        instruction, _inp, answer = TASKS[task](rng, d)
        assert instruction and answer


def test_known_answers():
    assert check_answer(" 95. ", "95")
    assert not check_answer("96", "95")
    rng = random.Random(0)
    _instruction, inp, answer = TASKS["sorting"](rng, 1)
    assert answer == ", ".join(map(str, sorted(int(x) for x in inp.split(", "))))
    _instruction, inp, answer = TASKS["string"](rng, 2)
    assert answer == inp[::-1]


def test_rows_deterministic_noise_rates_and_labels():
    cfg = DemoConfig(
        out_dir="x",
        noise=NoiseConfig(wrong_answer=0.1, duplicate=0.1, near_duplicate=0.1, empty_output=0.05, overlong_output=0.05),
    )
    rows = list(iter_pool_rows(cfg, 0, 4000))
    assert rows == list(iter_pool_rows(cfg, 0, 4000))
    assert rows != list(iter_pool_rows(cfg, 1, 4000))
    metas = [json.loads(r["metadata"]) for r in rows]
    noise = Counter(m["noise"] for m in metas)
    for kind, rate in [
        ("wrong_answer", 0.1),
        ("duplicate", 0.1),
        ("near_duplicate", 0.1),
        ("empty_output", 0.05),
        ("overlong_output", 0.05),
    ]:
        assert abs(noise[kind] / len(rows) - rate) < 0.03, (kind, noise)
    by_id = {r["id"]: r for r in rows}
    for r, m in zip(rows, metas):
        if m["noise"] is None:
            assert check_answer(r["output"], m["answer"])
        elif m["noise"] == "wrong_answer":
            assert not check_answer(r["output"], m["answer"])
        elif m["noise"] == "duplicate":
            src = by_id[m["duplicate_of"]]
            assert (r["instruction"], r["input"], r["output"]) == (src["instruction"], src["input"], src["output"])
        elif m["noise"] == "near_duplicate":
            assert r["instruction"] != by_id[m["duplicate_of"]]["instruction"]
        elif m["noise"] == "overlong_output":
            assert len(r["output"]) > 20 * len(m["answer"])
    assert set(m["task"] for m in metas) == set(TASKS)
    assert set(m["difficulty"] for m in metas) == set(range(1, MAX_DIFFICULTY + 1))


def test_eval_split_is_disjoint_from_pool():
    cfg = DemoConfig(out_dir="x", eval_rows=300)
    eval_rows = list(iter_eval_rows(cfg))
    assert len(eval_rows) == 300 and all(_is_eval(r["instruction"], r["input"]) for r in eval_rows)
    pool_keys = {(r["instruction"], r["input"]) for r in iter_pool_rows(cfg, 0, 3000)}
    assert not pool_keys & {(r["instruction"], r["input"]) for r in eval_rows}


def test_make_demo_writes_shards_and_is_reused(ray_local, tmp_path):
    cfg = DemoConfig(
        out_dir=str(tmp_path / "d"), rows=1001, shards=3, eval_rows=20, malformed_jsonl_rows=40, general_rows=50
    )
    m = make_demo(cfg)
    assert m["pool_rows"] == 1001 and m["general_rows"] == 50
    general = pq.read_table(tmp_path / "d" / "general").to_pylist()
    assert len(general) == 50 and {r["source"] for r in general} == {"demo/general"}
    assert all(r["output"] == "" for r in general)  # the teacher answers them
    assert sorted(p.name for p in (tmp_path / "d" / "pool").glob("*.parquet")) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert pq.read_table(tmp_path / "d" / "pool").num_rows == 1001
    assert pq.read_table(tmp_path / "d" / "eval").num_rows == 20
    assert sum(m["side_jsonl_malformed"].values()) == 10
    mtime = (tmp_path / "d" / "_manifest.json").stat().st_mtime_ns
    assert make_demo(cfg) == m and (tmp_path / "d" / "_manifest.json").stat().st_mtime_ns == mtime


def test_general_rows_are_distinct_and_kept_apart_from_the_evaluation_suites():
    rows = list(iter_general_rows(300, seed=0))
    assert len(rows) == 300 == len({(r["instruction"], r["input"]) for r in rows})
    assert rows == list(iter_general_rows(300, seed=0))
    assert len({json.loads(r["metadata"])["template"] for r in rows}) >= 8
    spec = {"kind": "decontaminate", "suites": ["general", "ifbench"]}
    f = RowFilter.registry.build(RowFilter.registry.parse(spec))
    assert [r["id"] for r in rows if f.filter({**r, "prompt": prompt_text(r)})] == []
    held_out = "What do bees make?"  # one of the general suite's prompts, inside a training row
    assert f.filter({**rows[0], "prompt": f"Quick question. {held_out}"}) == "contaminated"
