"""The training plan: every worker streams exactly its slice of the curriculum's schedule, in order."""

import numpy as np
import pyarrow as pa
import pytest

from instructscale import storage
from instructscale.train.config import TrainConfig
from instructscale.train.curriculum import build_schedule
from instructscale.train.data import usable_rows
from instructscale.train.plan import DONE, PLAN, build_plan, worker_steps


def write_files(root, sizes: list[int]) -> list[dict]:
    """Parquet files of rows with a difficulty column; every 7th row is unusable (no response or rejected)."""
    rows, k = [], 0
    for f, n in enumerate(sizes):
        part = []
        for _ in range(n):
            bad = k % 7 == 3
            part.append(
                {
                    "id": f"r{k:04d}",
                    "instruction": f"question {k}",
                    "messages": [{"role": "user", "content": f"question {k}"}],  # nested: a leaf before step
                    "output": "" if bad and k % 2 else f"answer {k}",
                    "reject_reason": "too_long" if bad and not k % 2 else None,
                    "difficulty": float((k * 37) % 11),
                    "source": "general" if k % 3 == 0 else "task",
                }
            )
            k += 1
        storage.write_parquet(str(root / f"part-{f}.parquet"), pa.Table.from_pylist(part))
        rows += part
    return rows


def config(tmp_path, curriculum: dict, workers: int = 3, **kw) -> TrainConfig:
    return TrainConfig(
        data=str(tmp_path / "data"),
        model="unused",
        out_dir=str(tmp_path / "out"),
        micro_batch_size=2,
        epochs=3,
        curriculum=curriculum,
        scaling={"num_workers": workers},
        **kw,
    )


def expected(rows: list[dict], cfg: TrainConfig) -> tuple[list[str], np.ndarray]:
    usable = usable_rows(pa.Table.from_pylist(rows))
    schedule = build_schedule(
        usable["difficulty"].to_numpy(), cfg.curriculum, global_batch=cfg.global_batch, epochs=cfg.epochs, seed=cfg.seed
    )
    return usable["id"].to_pylist(), schedule


@pytest.mark.parametrize("curriculum", [{"kind": "easy_to_hard"}, {"kind": "competence", "c0": 0.3}])
def test_every_worker_streams_its_slice_of_the_schedule(ray_local, tmp_path, curriculum):
    (tmp_path / "data").mkdir()
    rows = write_files(tmp_path / "data", [23, 5, 40])
    cfg = config(tmp_path, curriculum)
    info = build_plan(cfg, run_rows=8)  # several sorted runs per file
    ids, schedule = expected(rows, cfg)
    assert info["rows"] == len(ids) == 58 and info["steps"] == len(schedule) == 3 * (58 // 6)
    general = np.mean([sum(i % 3 == 0 for i in (int(ids[j][1:]) for j in b)) / 6 for b in schedule])
    assert info["source_share"] == {
        "general": pytest.approx(general, abs=1e-4),
        "task": pytest.approx(1 - general, abs=1e-4),
    }
    runs = storage.list_files(storage.join(cfg.out_dir, PLAN, "rank-0000"), suffix=".parquet")
    assert len(runs) > 3, "one run per chunk of a file"
    for rank in range(3):
        got = list(worker_steps(cfg, rank, 0, info["steps"]))
        assert [s for s, _, _ in got] == list(range(len(schedule)))
        assert [[r["id"] for r in step] for _, _, step in got] == [[ids[i] for i in b[rank::3]] for b in schedule]
        difficulty = np.array([r["difficulty"] for r in rows if r["id"] in set(ids)])
        assert [m["difficulty_mean"] for _, m, _ in got] == pytest.approx(difficulty[schedule].mean(axis=1).tolist())
        # each step's share of each source, the global batch's (a worker sees its slice only)
        source = {r["id"]: r["source"] for r in rows}
        shares = [{s: sum(source[ids[i]] == s for i in b) / 6 for s in ("general", "task")} for b in schedule]
        assert [m["source_share"] for _, m, _ in got] == shares
        resumed = list(worker_steps(cfg, rank, 11, info["steps"]))
        assert [(s, [r["id"] for r in rs]) for s, _, rs in resumed] == [
            (s, [r["id"] for r in rs]) for s, _, rs in got[11:]
        ]


def test_a_complete_plan_is_reused_and_one_for_other_settings_rebuilt(ray_local, tmp_path):
    (tmp_path / "data").mkdir()
    write_files(tmp_path / "data", [30])
    cfg = config(tmp_path, {"kind": "random"}, workers=2)
    first = build_plan(cfg)
    done = storage.join(cfg.out_dir, PLAN, DONE)
    stamp = storage.read_text(done)
    assert build_plan(cfg) == first and storage.read_text(done) == stamp
    three = build_plan(config(tmp_path, {"kind": "random"}, workers=3))
    assert three["settings"]["workers"] == 3 and storage.list_files(storage.join(cfg.out_dir, PLAN, "rank-0002"))
    assert build_plan(cfg) == first
    assert not storage.list_files(storage.join(cfg.out_dir, PLAN, "rank-0002")), "no stale runs of other settings"


def test_a_missing_step_is_an_error_not_a_silent_skip(ray_local, tmp_path):
    (tmp_path / "data").mkdir()
    write_files(tmp_path / "data", [30])
    cfg = config(tmp_path, {"kind": "random"}, workers=2)
    info = build_plan(cfg, run_rows=10)
    runs = storage.list_files(storage.join(cfg.out_dir, PLAN, "rank-0001"), suffix=".parquet")
    storage.remove(runs[0])
    with pytest.raises(RuntimeError, match="train plan: step \\d+ has \\d+ of worker 1's 2 rows"):
        list(worker_steps(cfg, 1, 0, info["steps"]))


def test_too_few_rows_for_one_global_batch_is_refused(ray_local, tmp_path):
    (tmp_path / "data").mkdir()
    write_files(tmp_path / "data", [5])
    with pytest.raises(ValueError, match="fewer than one global batch"):
        build_plan(config(tmp_path, {"kind": "random"}))


def test_a_row_without_difficulty_is_named(ray_local, tmp_path):
    (tmp_path / "data").mkdir()
    rows = [{"id": f"r{k}", "instruction": "q", "output": "a", "metadata": "{}"} for k in range(8)]
    storage.write_parquet(str(tmp_path / "data" / "part-0.parquet"), pa.Table.from_pylist(rows))
    with pytest.raises(ValueError, match="^row r0: no 'difficulty' column or metadata key for the curriculum$"):
        build_plan(config(tmp_path, {"kind": "easy_to_hard"}, workers=1))


def test_a_token_budget_gives_shorter_rows_more_steps_and_the_same_tokens(ray_local, tmp_path, tiny_models):
    from transformers import AutoTokenizer

    from instructscale.tokens import tokenize

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["student"])
    budget, plans = 6000, {}
    for name, words in (("short", 3), ("long", 30)):
        rows = [
            {"id": f"{name}{k:03d}", "instruction": f"q {k}", "output": " ".join([f"w{k}"] * words)} for k in range(40)
        ]
        storage.write_parquet(str(tmp_path / name / "part-0.parquet"), pa.Table.from_pylist(rows))
        cfg = TrainConfig(
            data=str(tmp_path / name),
            model=tiny_models["student"],
            out_dir=str(tmp_path / f"out-{name}"),
            micro_batch_size=2,
            max_tokens=budget,
            scaling={"num_workers": 2},
        )
        plans[name] = info = build_plan(cfg)
        longest = max(len(tokenize(r, tokenizer, cfg.max_length).input_ids) for r in rows)
        assert abs(info["tokens"] - budget) <= cfg.global_batch * longest, info  # within one step's tokens
        assert sum(1 for _ in worker_steps(cfg, 0, 0, info["steps"])) == info["steps"]
    assert plans["short"]["steps"] > 2 * plans["long"]["steps"]
    assert plans["short"]["steps"] > 10  # 10 steps an epoch: the budget repeats epochs
    capped = config(tmp_path, {"kind": "random"}, workers=1, max_steps=2)
    with pytest.raises(ValueError, match="epochs or max_tokens"):
        TrainConfig(**{**capped.model_dump(), "max_tokens": 10})
