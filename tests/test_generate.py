"""Generation stage: vLLM and HF backends for real through Ray Data, the OpenAI backend against a
local server, resume after a kill, and clear errors for bad configs and unreachable endpoints."""

import json
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest

from helpers import kill_generate_when
from instructscale.backends.base import GenerationError
from instructscale.backends.hf import HFBackend
from instructscale.config import ConfigError, parse_config
from instructscale.demo.pool import DemoConfig, NoiseConfig, iter_pool_rows
from instructscale.generate.config import GenerateConfig
from instructscale.generate.stage import generate, read_generated
from instructscale.plugins import register
from instructscale.runtime import ModelThread
from instructscale.schema import POOL_SCHEMA, decode_metadata
from instructscale.storage import write_parquet
from openai_stub import StubServer


def make_pool(path, n, blank_outputs=()):
    rows = list(iter_pool_rows(DemoConfig(out_dir="x", noise={k: 0 for k in NoiseConfig.model_fields}), 0, n))
    for i in blank_outputs:
        rows[i]["output"] = ""
    write_parquet(str(path / "part-0.parquet"), pa.Table.from_pylist(rows, schema=POOL_SCHEMA))
    return rows


def cfg_for(tmp_path, teacher, **kw):
    base = {
        "input": str(tmp_path / "pool"),
        "out_dir": str(tmp_path / "out"),
        "model": teacher,
        "replicas": {"batch_size": 8},
        "sampling": {"max_tokens": 8},
    }
    for key, value in kw.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return parse_config(GenerateConfig, base)


def test_model_thread_runs_every_call_on_one_thread():
    """A replica builds and calls its engine on one thread, whichever threads call the actor."""
    model_thread = ModelThread()
    built_on = model_thread.run(threading.get_ident)
    with ThreadPoolExecutor(2) as callers:
        called_on = {f.result() for f in [callers.submit(model_thread.run, threading.get_ident) for _ in range(4)]}
    assert called_on == {built_on} and built_on != threading.get_ident()
    with pytest.raises(ZeroDivisionError):  # errors reach the caller
        model_thread.run(lambda: 1 / 0)


def test_vllm_backend_k_samples_through_ray_data(ray_local, tiny_models, tmp_path):
    rows = make_pool(tmp_path / "pool", 20)
    cfg = cfg_for(
        tmp_path,
        tiny_models["teacher"],
        mode="sample",
        backend={"kind": "vllm"},
        sampling={"n": 3, "temperature": 1.0, "max_tokens": 6, "stop": ["\n"]},
    )
    m = generate(cfg)
    table = read_generated(cfg.out_dir, include_rejected=True)
    assert table.num_rows == 60 and m["inputs"] == 20
    assert len(set(table["id"].to_pylist())) == 60
    assert Counter(table["parent_id"].to_pylist()) == {r["id"]: 3 for r in rows}
    assert sorted(set(table["sample_idx"].to_pylist())) == [0, 1, 2]
    assert all(0 < t <= 6 for t in table["gen_tokens"].to_pylist())
    assert all(lp is not None and lp <= 0 for lp in table["gen_logprob"].to_pylist())
    assert not any("\n" in o for o in table["output"].to_pylist())
    accepted = read_generated(cfg.out_dir)
    assert m["rows"] == accepted.num_rows and m["rows"] + sum(m["rejected"].values()) == 60
    meta = decode_metadata(table["metadata"][0].as_py())
    assert "original_output" in meta and table["gen_model"][0].as_py() == tiny_models["teacher"]


@pytest.mark.slow
def test_hf_backend_distill_only_missing_is_seeded(ray_local, tiny_models, tmp_path):
    make_pool(tmp_path / "pool", 24, blank_outputs=[1, 5, 9])
    cfg = cfg_for(
        tmp_path,
        tiny_models["teacher"],
        backend={"kind": "hf"},
        mode={"kind": "distill", "only_missing": True},
        sampling={"temperature": 0.9, "seed": 7},
    )
    m = generate(cfg)
    table = read_generated(cfg.out_dir, include_rejected=True)
    assert m["inputs"] == 24 and table.num_rows == 24
    asked = [r for r in table.to_pylist() if r["gen_model"]]
    assert len(asked) == 3 and all(r["gen_tokens"] <= 8 for r in asked)
    assert all(r["gen_logprob"] is None for r in asked), "n=1: no log-probs unless sampling.logprobs"
    again = generate(cfg.model_copy(update={"out_dir": str(tmp_path / "again")}))
    assert again["rows"] == m["rows"]
    first = {r["id"]: r["output"] for r in table.to_pylist()}
    second = {r["id"]: r["output"] for r in read_generated(tmp_path / "again", include_rejected=True).to_pylist()}
    assert first == second, "same seed, same outputs"


@pytest.mark.slow
@register("counted_hf")
class CountedHF(HFBackend):
    """Test only: the hf backend, leaving a file in ``count_dir`` each time an engine is built."""

    class Config(HFBackend.Config):
        kind: str = "counted_hf"
        count_dir: str

    def __init__(self, config: Config, model: str):
        super().__init__(config, model)
        (Path(config.count_dir) / f"{os.getpid()}-{time.time_ns()}").touch()


def test_evolve_rounds_with_hf_backend(ray_local, tiny_models, tmp_path):
    """Two Evol-Instruct rounds on a real (tiny) teacher: every input row is evolved once in round 1,
    and round 2 evolves exactly round 1's survivors. Both rounds' passes share one engine."""
    rows = make_pool(tmp_path / "pool", 16)
    (tmp_path / "built").mkdir()
    cfg = cfg_for(
        tmp_path,
        tiny_models["teacher"],
        mode={
            "kind": "evolve",
            "rounds": 2,
            "eliminate": False,  # the eliminations are counted in test_synthesis.py
            "template": "Make it harder ({operation}): {instruction} {input_line}",
        },
        backend={"kind": "counted_hf", "count_dir": str(tmp_path / "built")},
        plugins=[__file__],
        sampling={"temperature": 1.0, "n": 1, "max_tokens": 12},
    )
    m = generate(cfg)
    assert len(list((tmp_path / "built").iterdir())) == 1, "one engine built for all passes"
    assert 0 < m["this_run"]["engine_s"] < m["this_run"]["seconds"]
    table = read_generated(cfg.out_dir, include_rejected=True).to_pylist()
    assert m["rows"] + sum(m["rejected"].values()) == len(table)
    first = [r for r in table if decode_metadata(r["metadata"])["round"] == 1]
    second = [r for r in table if decode_metadata(r["metadata"])["round"] == 2]
    assert Counter(r["parent_id"] for r in first) == {r["id"]: 1 for r in rows}
    survivors = {r["id"] for r in first if r["reject_reason"] is None}
    assert survivors and {r["parent_id"] for r in second} == survivors and len(second) == len(survivors)
    assert all(r["instruction"].strip() for r in table if r["reject_reason"] is None)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sample", "self_instruct", "evolve"])
def test_seeded_sampling_on_vllm_cpu_with_prompts_longer_than_a_step(ray_local, tiny_models, tmp_path, mode):
    """vLLM splits a prefill over steps when a step's token budget (4096) runs out; a seeded request
    then needs a generator offset, which CPU generators lack. Prompts of ~600 tokens, 12 per batch."""
    import random

    rows = make_pool(tmp_path / "pool", 12)
    k = 30 if mode == "self_instruct" else 250  # a self_instruct prompt shows 8 tasks
    words = random.Random(0).choices(["river", "cloud", "stone", "seven", "blue", "quick", "north", "sum"], k=k)
    for i, row in enumerate(rows):
        row["instruction"] = f"{i}: " + " ".join(words[i:] + words[:i])
    write_parquet(str(tmp_path / "pool" / "part-0.parquet"), pa.Table.from_pylist(rows, schema=POOL_SCHEMA))
    mode_cfg = {
        "sample": {"kind": "sample"},
        "self_instruct": {"kind": "self_instruct", "prompts_per_round": 12, "instances": False},
        "evolve": {"kind": "evolve", "eliminate": False, "template": "Harder ({operation}): {instruction}"},
    }[mode]

    def run(out: str, batch_size: int) -> dict:
        cfg = cfg_for(
            tmp_path,
            tiny_models["teacher"],
            out_dir=str(tmp_path / out),
            mode=mode_cfg,
            backend={"kind": "vllm"},
            replicas={"batch_size": batch_size},
            sampling={"n": 3, "temperature": 0.7, "seed": 0, "max_tokens": 6},
        )
        m = generate(cfg)
        table = read_generated(cfg.out_dir, include_rejected=True).to_pylist()
        assert m["rows"] + sum(m["rejected"].values()) == len(table)
        assert len(table) == 36 or (mode == "self_instruct" and len(table) >= 36)  # 12 prompts x 3, parsed
        assert not any((r["reject_reason"] or "").startswith(("engine_error", "model_error")) for r in table)
        return {r["id"]: (r["instruction"], r["output"]) for r in table}

    first = run("a", 12)
    assert len({v for v in first.values()}) > 12, "the samples differ between rows and between draws"
    if mode == "sample":
        assert first == run("b", 5), "a row samples the same answers whichever batch it lands in"


def test_openai_backend_against_local_server_with_retries(ray_local, tmp_path, monkeypatch):
    make_pool(tmp_path / "pool", 12)
    server = StubServer(fail_first=2)
    monkeypatch.setenv("STUB_KEY", "sk-test-123")
    try:
        cfg = cfg_for(
            tmp_path,
            "stub-model",
            backend={
                "kind": "openai",
                "base_url": server.url,
                "api_key_env": "STUB_KEY",
                "backoff_s": 0.01,
                "max_concurrency": 4,
            },
            mode="sample",
            sampling={"n": 2, "temperature": 0.7},
        )
        m = generate(cfg)
    finally:
        server.close()
    table = read_generated(cfg.out_dir).to_pylist()
    assert m["rows"] == 24 and len(table) == 24
    assert server.requests == 12 + 2  # two 503s were retried
    assert server.auth == {"Bearer sk-test-123"}
    assert all(r["output"].startswith(f"reply {r['sample_idx']}: ") for r in table)
    assert all(r["gen_logprob"] == pytest.approx(-0.5) for r in table)
    assert "sk-test" not in json.dumps(m) and "sk-test" not in (tmp_path / "out" / "_manifest.json").read_text()


def test_unreachable_endpoint_is_clear(ray_local, tmp_path):
    """(Exhausted retries: tests/test_faults.py.)"""
    make_pool(tmp_path / "pool", 4)
    cfg = cfg_for(tmp_path, "m", backend={"kind": "openai", "base_url": "http://127.0.0.1:9/v1"})
    with pytest.raises(GenerationError, match=r"cannot reach http://127.0.0.1:9/v1"):
        generate(cfg)


def test_bad_configs_are_named(tmp_path, tiny_models):
    with pytest.raises(ConfigError, match="mode 'sample' needs sampling.n >= 2"):
        parse_config(GenerateConfig, {"input": "x", "out_dir": "y", "model": "m", "mode": "sample"})
    with pytest.raises(
        ConfigError, match=r"backend: Value error, unknown backend 'tgi'; registered: .*hf, openai, .*vllm"
    ):
        parse_config(GenerateConfig, {"input": "x", "out_dir": "y", "model": "m", "backend": {"kind": "tgi"}})
    with pytest.raises(ConfigError, match=r"replicas: Value error, max_replicas \(1\) < min_replicas \(2\)"):
        parse_config(GenerateConfig, {"input": "x", "out_dir": "y", "model": "m", "replicas": {"min_replicas": 2}})
    make_pool(tmp_path / "pool", 4)
    with pytest.raises(ConfigError, match="model: '/nonexistent/teacher' is not a model directory"):
        generate(cfg_for(tmp_path, "/nonexistent/teacher"))
    with pytest.raises(ConfigError, match="input: .* does not exist"):
        generate(cfg_for(tmp_path, tiny_models["teacher"], input=str(tmp_path / "nope")))


@pytest.mark.slow
def test_resume_after_kill_has_exact_rows_and_no_duplicates(ray_local, tiny_models, tmp_path):
    rows = make_pool(tmp_path / "pool", 64)
    cfg = cfg_for(
        tmp_path,
        tiny_models["teacher"],
        backend={"kind": "hf"},
        sampling={"max_tokens": 48},
        replicas={"batch_size": 4},
    )
    out = tmp_path / "out" / "rows"
    kill_generate_when(cfg, tmp_path / "gen.yaml", lambda: len(list(out.glob("_commits/*.json"))) >= 3)
    committed = [p.name.removesuffix(".json") for p in out.glob("_commits/*.json")]
    before = {name: (out / name).stat().st_mtime_ns for name in committed}
    assert 3 <= len(before) < 16, "killed mid-run"
    assert not (tmp_path / "out" / "_manifest.json").exists()

    m = generate(cfg)
    table = read_generated(cfg.out_dir, include_rejected=True)
    assert table.num_rows == 64 and m["inputs"] == 64
    assert sorted(table["id"].to_pylist()) == sorted(r["id"] for r in rows)
    assert m["resumed_inputs"] == 4 * len(before)
    assert all(out.joinpath(n).stat().st_mtime_ns == t for n, t in before.items()), "committed parts kept"
    # the rest was batched anew after the anti-join, so a batch may fall short of batch_size
    assert len(list(out.glob("part-*.parquet"))) == m["files"] >= 16
    with pytest.raises(ConfigError, match="holds a run with a different config"):
        generate(cfg.model_copy(update={"sampling": cfg.sampling.model_copy(update={"max_tokens": 5})}))
