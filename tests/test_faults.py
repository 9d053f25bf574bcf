"""One bad row costs one row: over-long prompts, engine errors and crashes, HTTP faults, rows a scorer
cannot score, bad input files, interrupted selection, changed training settings, and secrets that
must not leak. Fault-injecting backends are test-only plug-ins registered here."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from helpers import kill_with_its_ray
from instructscale.backends.base import Completion, GenerationError
from instructscale.cli import main
from instructscale.config import ConfigError, parse_config
from instructscale.demo.pool import DemoConfig, NoiseConfig, iter_pool_rows
from instructscale.generate.config import GenerateConfig
from instructscale.generate.stage import generate, read_generated
from instructscale.plugins import Backend, PluginConfig, register
from instructscale.pools.ingest import IngestConfig, PoolInput, ingest
from instructscale.progress import setup_logging
from instructscale.schema import POOL_SCHEMA
from instructscale.storage import write_parquet
from openai_stub import StubServer

CLEAN = {k: 0 for k in NoiseConfig.model_fields}


@register("poison")
class Poison(Backend):
    """Test only: echoes the prompt; raises on a row containing RAISE-ME and kills its own process on
    a row containing EXIT-ME (as a segfault or the OOM killer would)."""

    remote = True

    def __init__(self, config, model, api_key=None):
        super().__init__(config, model)

    def generate(self, conversations, sampling):
        for c in conversations:
            if "EXIT-ME" in c[-1]["content"]:
                os._exit(3)
            if "RAISE-ME" in c[-1]["content"]:
                raise RuntimeError("poisoned row")
        return [[Completion("ok: " + c[-1]["content"][:12], 3, None, "stop")] for c in conversations]


@register("broken")
class Broken(Backend):
    """Test only: an engine that fails every call the same way (a lost device, a bad kernel); each
    call leaves a file in ``calls_dir``."""

    remote = True

    class Config(PluginConfig):
        kind: str = "broken"
        calls_dir: str

    def generate(self, conversations, sampling):
        (Path(self.config.calls_dir) / f"{os.getpid()}-{time.time_ns()}").touch()
        raise RuntimeError("device lost")


@register("unloadable")
class Unloadable(Backend):
    """Test only: an engine that cannot load (a model its version does not support)."""

    class Config(PluginConfig):
        kind: str = "unloadable"

    def __init__(self, config, model):
        raise ValueError("this engine does not support the model's architecture")


def pool(path: Path, n: int, edits: dict[int, str] | None = None) -> list[dict]:
    rows = list(iter_pool_rows(DemoConfig(out_dir="x", noise=CLEAN), 0, n))
    for i, instruction in (edits or {}).items():
        rows[i]["instruction"] = instruction
    write_parquet(str(path / "part-0.parquet"), pa.Table.from_pylist(rows, schema=POOL_SCHEMA))
    return rows


def poison_config(tmp_path: Path, **options) -> GenerateConfig:
    """Generation through the test-only poison backend (imported by the actors from this file)."""
    return parse_config(
        GenerateConfig,
        {
            "input": str(tmp_path / "pool"),
            "out_dir": str(tmp_path / "out"),
            "model": "poison",
            "backend": "poison",
            "plugins": [__file__],
            **options,
        },
    )


def by_parent(out: Path) -> dict[str, dict]:
    return {r["parent_id"]: r for r in read_generated(str(out), include_rejected=True).to_pylist()}


@pytest.mark.slow
def test_a_52k_character_prompt_is_rejected_and_the_job_finishes(ray_local, tiny_models, tmp_path, capsys):
    rows = pool(tmp_path / "pool", 30, {7: "Summarise this. " + "word " * 10_400})
    assert len(rows[7]["instruction"]) > 52_000
    config = {
        "input": str(tmp_path / "pool"),
        "out_dir": str(tmp_path / "out"),
        "model": tiny_models["teacher"],
        "backend": "vllm",
        "sampling": {"max_tokens": 8},
        "replicas": {"batch_size": 16},
    }
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump(config))
    assert main(["generate", str(tmp_path / "gen.yaml")]) == 0
    out = by_parent(tmp_path / "out")
    answered = [r for r in out.values() if r["gen_model"]]  # the tiny teacher may answer with nothing
    assert len(out) == 30 and len(answered) == 29 and rows[7]["id"] not in {r["parent_id"] for r in answered}
    reason = out[rows[7]["id"]]["reject_reason"]
    assert reason.startswith("prompt_too_long: ") and reason.endswith("> 1024"), reason
    printed = json.loads(capsys.readouterr().out)
    assert printed["faults"] == 1 and printed["rejected"]["prompt_too_long"] == 1


@pytest.mark.slow
def test_engine_errors_and_crashes_cost_only_their_rows(ray_local, tmp_path):
    rows = pool(tmp_path / "pool", 40, {5: "RAISE-ME please", 22: "EXIT-ME please"})
    cfg = poison_config(tmp_path, max_faulty_fraction=0.1, replicas={"batch_size": 8})
    m = generate(cfg)
    out = by_parent(tmp_path / "out")
    assert len(out) == 40 and m["inputs"] == 40 and m["faults"] == 2
    assert out[rows[5]["id"]]["reject_reason"] == "engine_error: RuntimeError: poisoned row"
    assert out[rows[22]["id"]]["reject_reason"].startswith("engine_crash: ")
    answered = [r for r in out.values() if r["reject_reason"] is None]
    assert len(answered) == 38 and all(r["output"].startswith("ok: ") for r in answered)
    assert m["rejected"] == {"engine_error": 1, "engine_crash": 1}
    assert not (tmp_path / "out" / "_attempts").exists(), "crash markers are cleaned up"


def test_a_systematic_engine_error_stops_the_stage_instead_of_bisecting_every_row(ray_local, tmp_path):
    """Every row fails alone with the same error: after 3 such rows the stage stops and names it,
    having called the engine about log2(batch) + 3 times (plus probes), not twice per row."""
    pool(tmp_path / "pool", 64)
    (tmp_path / "calls").mkdir()
    broken = {"kind": "broken", "calls_dir": str(tmp_path / "calls")}
    cfg = poison_config(tmp_path, backend=broken, replicas={"batch_size": 64})
    with pytest.raises(GenerationError, match=r"failed 3 rows in a row.*same error: RuntimeError: device lost"):
        generate(cfg)
    calls = len(list((tmp_path / "calls").iterdir()))
    # halving 64 -> 1 (6 calls), 3 single rows, one more pair, each failure but the last probed: 19;
    # bisecting down to every row would take 127 calls and as many probes
    assert calls <= 20, f"{calls} engine calls (probes included) for a 64-row batch"


def test_a_replica_that_cannot_load_stops_the_stage_with_one_line(ray_local, tiny_models, tmp_path):
    pool(tmp_path / "pool", 8)
    cfg = poison_config(tmp_path, backend={"kind": "unloadable"}).model_copy(update={"model": tiny_models["teacher"]})
    with pytest.raises(GenerationError) as info:
        generate(cfg)
    assert str(info.value) == (
        "generate: a teacher replica failed to start: ValueError: this engine does not support the model's architecture"
    )


def test_replicas_the_cluster_cannot_place_stop_the_stage_after_the_start_timeout(ray_local, tmp_path):
    pool(tmp_path / "pool", 8)
    cfg = poison_config(tmp_path, replicas={"num_cpus": 64, "start_timeout_s": 2})
    with pytest.raises(GenerationError) as info:
        generate(cfg)
    assert str(info.value).startswith(
        "generate: 0 of 1 teacher replicas started within 2 s (min_replicas 1); each asks for 64.0 CPUs"
    )


def test_too_many_faulty_rows_fail_the_job_with_a_summary(ray_local, tmp_path):
    rows = pool(tmp_path / "pool", 150, {i: f"RAISE-ME {i}" for i in range(0, 150, 5)})
    cfg = poison_config(tmp_path, replicas={"batch_size": 50})
    with pytest.raises(
        GenerationError,
        match=r"faulted \(20\.0% > max_faulty_fraction 5\.0%\): "
        r"\{'engine_error': \d+\}; first ids: \['demo-",
    ) as info:
        generate(cfg)
    assert rows[0]["id"] in str(info.value) and "rerun to resume" in str(info.value)
    assert list((tmp_path / "out" / "rows" / "_commits").glob("*.json")), "committed parts stay for the rerun"


def http_cfg(tmp_path: Path, url: str, backend: dict, **options) -> GenerateConfig:
    """Generation from ``tmp_path/pool`` with the OpenAI backend against a local stub server."""
    return parse_config(
        GenerateConfig,
        {
            "input": str(tmp_path / "pool"),
            "out_dir": str(tmp_path / "out"),
            "model": "stub",
            "backend": {"kind": "openai", "base_url": url, "api_key_env": None, "max_concurrency": 1, **backend},
            **options,
        },
    )


def test_http_teacher_retries_429_after_retry_after_and_rejects_a_400_row(ray_local, tmp_path, monkeypatch):
    rows = pool(tmp_path / "pool", 12, {4: "FORBIDDEN-ROW here"})
    server = StubServer(fail_first=1, fail_status=429, retry_after="1", bad_marker="FORBIDDEN-ROW")
    try:
        cfg = http_cfg(tmp_path, server.url, {"backoff_s": 0.01}, max_faulty_fraction=0.2, replicas={"batch_size": 12})
        m = generate(cfg)
    finally:
        server.close()
    out = by_parent(tmp_path / "out")
    assert out[rows[4]["id"]]["reject_reason"] == "http_400: this prompt is not allowed: FORBIDDEN-ROW"
    assert sum(r["reject_reason"] is None for r in out.values()) == 11 and m["faults"] == 1
    assert server.times[1] - server.times[0] >= 1.0, "waited as Retry-After asked"


def test_a_dead_endpoint_fails_after_the_retry_budget_and_keeps_finished_rows(ray_local, tmp_path):
    pool(tmp_path / "pool", 8)
    dying = StubServer(fail_after=4, fail_status=503)  # answers 4 rows (2 batches), then only 503s

    def cfg_for(url: str) -> GenerateConfig:
        backend = {"backoff_s": 0.2, "max_retries": 100, "max_retry_s": 1.5}
        return http_cfg(tmp_path, url, backend, replicas={"batch_size": 2})

    try:
        t0 = time.time()
        with pytest.raises(GenerationError, match=r"failed after \d+ attempt\(s\) in \d+ s: HTTP 503: overloaded"):
            generate(cfg_for(dying.url))
        assert time.time() - t0 < 60
    finally:
        dying.close()
    assert len(list((tmp_path / "out" / "rows" / "_commits").glob("*.json"))) == 2, "finished batches stay"
    healthy = StubServer()
    try:
        m = generate(cfg_for(healthy.url))
    finally:
        healthy.close()
    assert m["resumed_inputs"] == 4 and m["inputs"] == 8 and healthy.requests == 4


def test_rows_a_scorer_cannot_score_get_nulls_and_a_reason(tiny_models):
    from instructscale.scorers import JudgeScorer, ModelScorer

    scorer = ModelScorer(ModelScorer.Config(model=tiny_models["student"], max_length=24))
    scorer.setup()
    rows = [
        {"id": "ok", "instruction": "Add 2 and 3.", "input": "", "output": "5"},
        {"id": "long", "instruction": "Add these numbers: " + "1 + " * 200 + "1.", "input": "", "output": "201"},
        {"id": "empty", "instruction": "Say nothing.", "input": "", "output": "  "},
        {
            "id": "chat",
            "messages": [{"role": "user", "content": "Hi"}],
            "instruction": "Hi",
            "input": "",
            "output": None,
        },
    ]
    got = scorer.score(rows)
    assert got["loss"][0] is not None and got["model_error"][0] is None
    assert got["loss"][1] is None and got["model_error"][1].startswith("no_response_tokens")
    assert got["model_error"][2] == "empty_response"
    assert got["loss"][3] is None and got["model_error"][3] is not None
    server = StubServer(
        reply=lambda prompt, i: "Score: 7" if "Response:\n5" in prompt else "no idea", bad_marker="FORBIDDEN"
    )
    try:
        judge = JudgeScorer(
            JudgeScorer.Config(model="stub", backend={"kind": "openai", "base_url": server.url, "api_key_env": None})
        )
        judge.setup()
        scored = judge.score(
            [
                rows[0],
                {"id": "x", "instruction": "Q", "output": "6"},
                {"id": "y", "instruction": "FORBIDDEN", "output": "6"},
            ]
        )
    finally:
        server.close()
    assert scored["judge"] == [7.0, None, None]
    assert scored["judge_error"][:2] == [None, "judge_unparsable"] and scored["judge_error"][2].startswith("http_400")


def test_bad_input_files_are_quarantined_exactly(ray_local, tmp_path):
    good = [json.dumps({"id": f"g{i}", "instruction": f"Task {i}", "output": "x"}) for i in range(6)]
    (tmp_path / "a.jsonl").write_bytes(("\n".join(good[:3]) + "\n").encode() + b'{"instruction": "bad \xff byte"}\n')
    (tmp_path / "dups.jsonl").write_text(json.dumps({"id": "g1", "instruction": "again", "output": "y"}) + "\n")
    array = json.dumps([{"id": f"arr{i}", "instruction": f"Array task {i}", "output": "z"} for i in range(5)])
    (tmp_path / "cut.json").write_text(array[: array.index('{"id": "arr3"') + 20])  # cut inside element 4
    m = ingest(
        IngestConfig(
            out_dir=str(tmp_path / "out"),
            inputs=[
                PoolInput(path=str(tmp_path / "a.jsonl"), format="jsonl"),
                PoolInput(path=str(tmp_path / "dups.jsonl"), format="jsonl"),
                PoolInput(path=str(tmp_path / "cut.json"), format="alpaca"),
            ],
        )
    )
    quarantine = [
        json.loads(line)
        for p in (tmp_path / "out" / "quarantine").glob("*.jsonl")
        for line in p.read_text().splitlines()
    ]
    reasons = {(Path(q["file"]).name, q["line"]): q["reason"] for q in quarantine}
    assert reasons[("a.jsonl", 4)].startswith("invalid_utf8: ")
    assert reasons[("cut.json", 4)].startswith("truncated_json: the array breaks off after element 3")
    assert reasons[("dups.jsonl", 1)] == f"duplicate_id: 'g1' first at {tmp_path / 'a.jsonl'}:2"
    assert m["rows"] == 3 + 3 and m["quarantined"] == 3
    assert m["quarantine_reasons"] == {"invalid_utf8": 1, "truncated_json": 1, "duplicate_id": 1}
    ids = pq.read_table(tmp_path / "out" / "pool")["id"].to_pylist()
    assert sorted(ids) == ["arr0", "arr1", "arr2", "g0", "g1", "g2"], "every complete row before the cut is kept"


SELECT_SCRIPT = """
import sys
from instructscale.config import load_config
from instructscale.runtime import RayConfig, init_ray
from instructscale.select.config import SelectConfig
from instructscale.select.stage import select
if __name__ == "__main__":
    init_ray(RayConfig(num_cpus=2))
    select(load_config(SelectConfig, sys.argv[1]))
"""


@pytest.mark.slow
def test_select_killed_half_way_reuses_its_committed_feature_parts(ray_local, tiny_models, tmp_path):
    rows = list(iter_pool_rows(DemoConfig(out_dir="x"), 0, 480))
    write_parquet(str(tmp_path / "pool" / "part-0.parquet"), pa.Table.from_pylist(rows, schema=POOL_SCHEMA))

    def config(out: str) -> dict:
        return {
            "input": str(tmp_path / "pool"),
            "out_dir": str(tmp_path / out),
            "batch_size": 20,
            "scorers": [
                {
                    "kind": "model",
                    "model": tiny_models["student"],
                    "batch_size": 20,
                    "max_replicas": 1,
                    "max_length": 64,
                }
            ],
            "filters": ["length", "repetition", "control_characters", "refusal", "truncated"],
            "weights": {},
            "difficulty": {"source": "length"},
            "budget": {"budget": 100},
        }

    (tmp_path / "sel.yaml").write_text(yaml.safe_dump(config("sel")))
    proc = subprocess.Popen(
        [sys.executable, "-c", SELECT_SCRIPT, str(tmp_path / "sel.yaml")],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    commits = tmp_path / "sel" / "features" / "rows" / "_commits"
    deadline = time.time() + 300
    while len(list(commits.glob("*.json"))) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    kill_with_its_ray(proc)
    assert 4 <= len(list(commits.glob("*.json"))) < 24, "killed half-way"
    from instructscale.select.config import SelectConfig
    from instructscale.select.stage import select

    resumed = select(parse_config(SelectConfig, config("sel")))
    fresh = select(parse_config(SelectConfig, config("fresh")))
    features = json.loads((tmp_path / "sel" / "features" / "_manifest.json").read_text())
    assert features["parts_reused"] >= 4 and features["parts_computed"] > 0
    assert features["rows"] == 480
    decided = {
        p: sorted(
            pq.read_table(tmp_path / p / "scores").select(["id", "status", "reason"]).to_pylist(), key=lambda r: r["id"]
        )
        for p in ("sel", "fresh")
    }
    assert decided["sel"] == decided["fresh"] and resumed["selected"] == fresh["selected"] == 100


@pytest.mark.slow
def test_training_refuses_to_resume_under_changed_settings(ray_local, tiny_models, tmp_path):
    from instructscale.train.config import TrainConfig
    from instructscale.train.stage import train

    pool(tmp_path / "data", 16)
    base = {
        "data": str(tmp_path / "data"),
        "model": tiny_models["student"],
        "out_dir": str(tmp_path / "out"),
        "micro_batch_size": 4,
        "max_steps": 2,
        "max_length": 48,
        "checkpoint_every": 1,
        "scaling": {"num_workers": 1},
        "optim": {"lr": 1e-3},
    }
    first = train(parse_config(TrainConfig, base))
    assert first["steps"] == 2 and first["skipped_nonfinite_steps"] == 0
    changed = {**base, "optim": {"lr": 5e-3}}
    with pytest.raises(
        ConfigError,
        match=r"holds checkpoints of a run with other settings \(optim\.lr\); "
        r"rerun with --restart",
    ):
        train(parse_config(TrainConfig, changed))
    again = train(parse_config(TrainConfig, {**changed, "restart": True}))
    assert again["steps"] == 2 and not any(r["resumed_from"] for r in again["history"])


@pytest.mark.slow
def test_planted_secrets_reach_no_file_and_no_log_line(ray_local, tmp_path, monkeypatch, capfd):
    pool(tmp_path / "pool", 6)
    key = "sk-planted-0123456789"
    monkeypatch.setenv("PLANTED_KEY", key)
    server = StubServer()
    try:
        config = {
            "input": str(tmp_path / "pool"),
            "out_dir": str(tmp_path / "out"),
            "model": "stub",
            "backend": {"kind": "openai", "base_url": server.url, "api_key_env": "PLANTED_KEY"},
        }
        (tmp_path / "gen.yaml").write_text(yaml.safe_dump(config))
        assert main(["-v", "generate", str(tmp_path / "gen.yaml")]) == 0
    finally:
        server.close()
        setup_logging(False)  # -v set the process-wide levels; later tests run quiet again
    assert server.auth == {f"Bearer {key}"}, "the key still reaches the endpoint"
    printed = capfd.readouterr()  # -v: every log line reaches the console
    assert key not in printed.out + printed.err
    leaks = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert leaks == [], leaks
    assert (tmp_path / "out" / "logs" / "instructscale.log").is_file()


def test_max_faulty_fraction_counts_row_faults_only():
    from instructscale.backends.faults import is_row_fault

    assert all(
        is_row_fault(r)
        for r in (
            "prompt_too_long: 9 > 8",
            "engine_error: X: y",
            "engine_crash: z",
            "http_400: bad",
            "http_422: bad",
            "empty_prompt",
        )
    )
    assert not any(is_row_fault(r) for r in (None, "empty_generation", "unchanged_instruction", "too_similar"))


def test_metadata_with_a_secret_is_masked_in_manifests(tmp_path):
    from instructscale.lifecycle import StageRun

    run = StageRun("s", str(tmp_path), {"base_url": "http://me:hunter22@host/v1"})
    run.start()
    manifest = run.publish({"note": "Authorization: Bearer abcdefghijkl"})
    text = (tmp_path / "_manifest.json").read_text()
    assert (
        "hunter22" not in text
        and "abcdefghijkl" not in text
        and manifest["config"]["base_url"] == ("http://me:***@host/v1")
    )
