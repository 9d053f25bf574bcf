"""Plug-ins of every kind, defined in this file, picked by name from a YAML config and applied by the
pipeline where each kind runs: filters in Ray Data tasks, the scorer and the backend in Ray actors,
the generation mode in the generation actor, the curriculum on the driver, the callback in Ray
Train workers, and a stage of its own between selection and training (the whole pipeline with them
runs as a Ray job in tests/test_cluster.py). Nothing under platform/ knows about them."""

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from instructscale import storage
from instructscale.backends.base import Completion
from instructscale.chat import user_turn
from instructscale.cli import main
from instructscale.config import ConfigError, StrictModel, parse_config
from instructscale.lifecycle import StageConfig, commit_part, part_files
from instructscale.pipeline import PipelineConfig
from instructscale.plugins import (
    ActorScorerConfig,
    Backend,
    Curriculum,
    GenerationMode,
    PluginConfig,
    RowFilter,
    Scorer,
    Selector,
    TrainCallback,
    load_plugins,
    register,
)
from instructscale.select.config import SelectConfig
from instructscale.stage import Stage, pipeline_stages

ECHO = "echo: "


@register("no_sevens")
class NoSevens(RowFilter):
    """Drops rows whose output contains the digit 7."""

    def filter(self, row):
        return "has_seven" if "7" in (row.get("output") or "") else None


@register("vowel_share")
class VowelShare(Scorer):
    """Share of vowels in the instruction; runs in an actor pool and counts its set-up calls."""

    columns = {"vowel_share": pa.float32(), "scorer_pid": pa.int64()}
    actor = True

    class Config(ActorScorerConfig):
        kind: str = "vowel_share"

    def setup(self):
        self.pid = os.getpid()

    def score(self, rows):
        share = [sum(ch in "aeiou" for ch in r["instruction"].lower()) / max(len(r["instruction"]), 1) for r in rows]
        return {"vowel_share": share, "scorer_pid": [self.pid] * len(rows)}


@register("lowest_score")
class LowestScore(Selector):
    """Picks the k worst-scored rows (a contrarian's top-k)."""

    def select(self, score, embeddings, k, seed):
        return np.argsort(score, kind="stable")[:k]


@register("shout")
class Shout(GenerationMode):
    """Asks the teacher to repeat the instruction in capitals; the answer becomes the output."""

    def prompts(self, rows):
        return [[{"role": "user", "content": user_turn(r).upper()}] for r in rows]

    def outputs(self, row, completions):
        c = completions[0]
        return [
            {
                **row,
                "output": c.text,
                "parent_id": row["id"],
                "sample_idx": 0,
                "reject_reason": None,
                "gen_model": "echo",
                "gen_tokens": c.num_tokens,
                "gen_logprob": None,
                "finish_reason": c.finish_reason,
            }
        ]


@register("echo")
class Echo(Backend):
    """A backend without a model: the answer is the last user message."""

    remote = True

    def __init__(self, config, model, api_key=None):
        super().__init__(config, model)

    def generate(self, conversations, sampling):
        return [[Completion(ECHO + c[-1]["content"], 3, None, "stop")] * sampling.n for c in conversations]


@register("longest_first")
class LongestFirst(Curriculum):
    """Global batches in order of descending difficulty, one epoch after another."""

    def schedule(self, difficulty, global_batch, epochs, seed, max_steps):
        order = np.argsort(-difficulty, kind="stable")
        steps = len(order) // global_batch
        batches = [order[i * global_batch : (i + 1) * global_batch].tolist() for i in range(steps)] * epochs
        return batches[:max_steps]


@register("touch_marker")
class TouchMarker(TrainCallback):
    """Leaves a file per worker at the first step, with the worker's pid."""

    class Config(PluginConfig):
        kind: str = "touch_marker"
        folder: str

    def on_step_start(self, step, rank, out_dir):
        if step == 1:
            Path(self.config.folder, f"rank-{rank}").write_text(str(os.getpid()))


class KeepShortOptions(StrictModel):
    max_words: int = 10


class KeepShortConfig(KeepShortOptions, StageConfig):
    input: str
    out_dir: str


@register("keep_short")
class KeepShort(Stage[KeepShortConfig]):
    """A stage of this file: keeps the rows whose output has at most ``max_words`` words."""

    Config, Options = KeepShortConfig, KeepShortOptions
    summary = "keep the rows with short outputs"
    after = "select"
    rebuilt = published = ("rows",)

    def run(self, run):
        table = storage.read_parquet(part_files(self.cfg.input))
        short = [len((o or "").split()) <= self.cfg.max_words for o in table["output"].to_pylist()]
        commit_part(run.uri("rows"), "part-0.parquet", table.filter(pa.array(short)))
        return {"rows": sum(short), "dropped": len(short) - sum(short), "driver_pid": os.getpid()}

    @classmethod
    def hand_on(cls, manifest, pipe):
        pipe.pool = storage.join(cls.out_dir(pipe.run_dir), "rows")


def test_a_stage_of_this_file_is_a_command_and_a_pipeline_step(ray_local, tmp_path, capsys):
    order = [s.name for s in pipeline_stages()]  # other test files may register stages of their own
    assert [n for n in order if n in ("select", "keep_short", "train")] == ["select", "keep_short", "train"]
    rows = [{"id": f"r{i}", "instruction": "q", "output": " ".join(["w"] * i)} for i in range(1, 21)]
    storage.write_parquet(str(tmp_path / "pool" / "part-0.parquet"), pa.Table.from_pylist(rows))
    config = {"plugins": [__file__], "input": str(tmp_path / "pool"), "out_dir": str(tmp_path / "out"), "max_words": 5}
    (tmp_path / "keep.yaml").write_text(yaml.safe_dump(config))
    assert main(["keep_short", str(tmp_path / "keep.yaml")]) == 0  # a sub-command, with the lifecycle
    assert json.loads(capsys.readouterr().out)["rows"] == 5
    assert json.loads((tmp_path / "out" / "_manifest.json").read_text())["datasets"] == {"rows": 5}
    with pytest.raises(ConfigError, match=r"keep_short: max_words: Input should be a valid integer"):
        parse_config(PipelineConfig, {"keep_short": {"max_words": "many"}})


def test_registry_errors_and_shorthands():
    assert RowFilter.registry.parse("no_sevens").kind == "no_sevens"
    with pytest.raises(ValueError, match="unknown filter 'nope'; registered: .*no_sevens.*list its module"):
        RowFilter.registry.parse("nope")
    with pytest.raises(ValueError, match="already registered"):
        register("length")(type("Other", (RowFilter,), {}))
    with pytest.raises(ConfigError, match="filters.0: Value error, expected a filter name or a mapping"):
        parse_config(SelectConfig, {"input": "x", "out_dir": "y", "filters": [3]})
    load_plugins([__file__])  # a file already imported under its module name is not imported again
    assert RowFilter.registry.get("no_sevens") is NoSevens


def plugin_pipeline(run: Path, markers: Path) -> dict:
    """A pipeline config that uses a plug-in of every kind defined in this file. It runs as a Ray job on a
    real head in tests/test_cluster.py: the file is shipped with the job and imported there."""
    return {
        "run_dir": str(run),
        "plugins": [__file__],
        "demo": {"rows": 600, "eval_rows": 20, "malformed_jsonl_rows": 8, "shards": 2},
        "generate": {"mode": "shout", "backend": "echo", "replicas": {"batch_size": 100}},
        "select": {
            "filters": ["length", "no_sevens"],
            "scorers": [{"kind": "vowel_share", "max_replicas": 2}],
            "weights": {"vowel_share": 1.0},
            "difficulty": {"source": "vowel_share"},
            "budget": {"budget": 64},
            "selector": "lowest_score",
        },
        "train": {
            "curriculum": "longest_first",
            "callbacks": [{"kind": "touch_marker", "folder": str(markers)}],
            "max_steps": 4,
            "micro_batch_size": 4,
            "max_length": 64,
            "lora": None,
        },
        "evaluate": {"backend": "echo", "loss": False, "max_rows": 20},
        "keep_short": {"max_words": 12},
    }


def check_every_plugin_ran(run: Path, markers: Path) -> None:
    """Each plug-in of :func:`plugin_pipeline` ran where its kind runs: not in the pipeline's driver
    process (which runs the ``keep_short`` stage) but in Ray tasks, actors and Train workers."""
    summary = json.loads((run / "summary.json").read_text())
    driver_pid = summary["stages"]["keep_short"]["driver_pid"]
    generated = pq.read_table(run / "generate" / "rows").to_pylist()
    assert generated and all(
        r["output"].startswith(ECHO) and r["output"] == r["output"].upper().replace(ECHO.upper(), ECHO)
        for r in generated
    ), "mode shout through backend echo, in the generation actor"
    scores = pq.read_table(run / "select" / "scores")
    reasons = dict(zip(scores["id"].to_pylist(), scores["reason"].to_pylist()))
    sevens = {r["id"] for r in generated if "7" in r["output"]}
    assert sevens and all(reasons[i] == "has_seven" for i in sevens), "filter in Ray Data tasks"
    scored = scores.filter(pc.is_null(scores["filter_reason"]))
    assert scored["vowel_share"].null_count == 0 and 0 < pc.max(scored["vowel_share"]).as_py() < 1
    assert driver_pid not in set(scored["scorer_pid"].to_pylist()), "scorer ran in actors, not the driver"
    sel = summary["stages"]["select"]
    picked = [s for s, st in zip(scores["score"].to_pylist(), scores["status"].to_pylist()) if st == "selected"]
    passed = [s for s, st in zip(scores["score"].to_pylist(), scores["status"].to_pylist()) if st == "not_selected"]
    assert sel["selected"] == len(picked) == 64 and max(picked) <= min(passed), "the selector took the lowest scores"

    kept = summary["stages"]["keep_short"]
    assert kept["rows"] + kept["dropped"] == 64 and summary["stages"]["train"]["rows"] == kept["rows"]
    history = summary["stages"]["train"]
    metrics = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    means = [m["difficulty_mean"] for m in metrics]
    assert history["steps"] == 4 and means == sorted(means, reverse=True), "curriculum: hardest batches first"
    pids = {p.name: int(p.read_text()) for p in markers.iterdir()}
    assert set(pids) == {"rank-0", "rank-1"} and driver_pid not in pids.values(), "callback ran in the workers"
    ev = summary["stages"]["evaluate"]["tuned"]["overall"]
    assert ev["rows"] == 20 and ev["exact_match"] == 0.0  # an echo is not an answer
