"""The ingest stage on real files through Ray Data: good rows, exact quarantine counts, formats."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instructscale.config import ConfigError
from instructscale.pools.ingest import IngestConfig, PoolInput, ingest
from instructscale.schema import POOL_SCHEMA


def _quarantine(out) -> list[dict]:
    rows = []
    for p in sorted((out / "quarantine").glob("*.jsonl")):
        rows += [json.loads(line) for line in p.read_text().splitlines()]
    return rows


def _pool(out) -> pa.Table:
    return pq.read_table(out / "pool", schema=POOL_SCHEMA)


def test_jsonl_good_and_malformed_rows_exact_counts(ray_local, tmp_path):
    lines = [
        json.dumps({"id": "a", "instruction": "Compute 1 + 1.", "output": "2"}),
        "",  # blank lines are not rows
        '{"instruction": "broken"',
        json.dumps({"id": "b", "instruction": "Say hi.", "input": "", "output": "hi", "tag": 1}),
        json.dumps({"output": "no instruction"}),
        json.dumps({"instruction": "x" * 200, "output": "y"}),
        json.dumps({"instruction": "typed", "output": ["list"]}),
        json.dumps({"conversations": [{"from": "human", "value": "Hey"}, {"from": "gpt", "value": "Hello"}]}),
    ]
    src = tmp_path / "pool.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    m = ingest(IngestConfig(inputs=[PoolInput(path=str(src), format="jsonl")], out_dir=str(out), max_field_chars=100))
    assert (m["rows"], m["quarantined"]) == (3, 4)
    assert m["quarantine_reasons"] == {"invalid_json": 1, "missing_field": 1, "oversize": 1, "wrong_type": 1}
    assert m["quarantine_by_file"] == {str(src): 4}
    q = sorted(_quarantine(out), key=lambda r: r["line"])
    assert [(r["line"], r["reason"].split(":")[0]) for r in q] == [
        (3, "invalid_json"),
        (5, "missing_field"),
        (6, "oversize"),
        (7, "wrong_type"),
    ]
    assert all(r["file"] == str(src) for r in q)
    assert "field 'output' must be a string" in q[3]["reason"]
    table = _pool(out)
    assert table.num_rows == 3
    assert {"a", "b"} <= set(table["id"].to_pylist())
    assert json.loads(dict(zip(table["id"].to_pylist(), table["metadata"].to_pylist()))["b"]) == {"tag": 1}


def test_alpaca_json_array_sharegpt_and_parquet_union(ray_local, tmp_path):
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(
        json.dumps(
            [
                {"instruction": "A", "input": "", "output": "1"},
                {"instruction": "B", "input": "x", "output": "2"},
                {"conversations": [{"from": "human", "value": "chat row"}]},
            ]
        )
    )
    share = tmp_path / "share.jsonl"
    share.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"id": "s1", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
                {"id": "s2", "instruction": "not chat"},
            ]
        )
    )
    pq_dir = tmp_path / "pq"
    pq_dir.mkdir()
    pq.write_table(
        pa.table({"id": ["p1", "p2"], "instruction": ["P", None], "output": ["o", "o"]}), pq_dir / "x.parquet"
    )
    out = tmp_path / "out"
    m = ingest(
        IngestConfig(
            inputs=[
                PoolInput(path=str(alpaca), format="alpaca", source="alp"),
                PoolInput(path=str(share), format="sharegpt"),
                PoolInput(path=str(pq_dir), format="parquet"),
            ],
            out_dir=str(out),
        )
    )
    assert (m["rows"], m["quarantined"]) == (4, 3)
    reasons = {(r["file"].rsplit("/", 1)[-1], r["line"]): r["reason"] for r in _quarantine(out)}
    assert reasons[("alpaca.json", 3)].startswith("wrong_format")
    assert reasons[("share.jsonl", 2)] == "missing_field: missing field 'conversations' (or 'messages')"
    assert reasons[("x.parquet", 2)] == "missing_field: missing field 'instruction'"
    table = _pool(out)
    by_id = {r["id"]: r for r in table.to_pylist()}
    plain = {"tool_calls": None, "tool_call_id": None, "name": None, "reasoning": None, "loss_weight": None}
    assert by_id["s1"]["messages"] == [
        {"role": "user", "content": "Q", **plain},
        {"role": "assistant", "content": "A", **plain},
    ]
    assert {r["source"] for r in by_id.values()} == {"alp", "share.jsonl", "x.parquet"}


def test_completed_output_is_reused_and_overwrite_reruns(ray_local, tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"instruction": "a"}) + "\n")
    cfg = IngestConfig(inputs=[PoolInput(path=str(src), format="jsonl")], out_dir=str(tmp_path / "o"))
    first = ingest(cfg)
    src.write_text(json.dumps({"instruction": "a"}) + "\n" + json.dumps({"instruction": "b"}) + "\n")
    assert ingest(cfg) == first  # same config: finished output kept
    assert ingest(cfg.model_copy(update={"overwrite": True}))["rows"] == 2
    assert not list(tmp_path.glob(".o.*")), "no staging directories left behind"


def test_missing_input_path_is_a_config_error(ray_local, tmp_path):
    with pytest.raises(ConfigError, match=r"inputs\[0\].path: no file or directory matches"):
        ingest(
            IngestConfig(
                inputs=[PoolInput(path=str(tmp_path / "nope*.jsonl"), format="jsonl")], out_dir=str(tmp_path / "o")
            )
        )


@pytest.mark.slow
def test_s3_ingest_and_generate_read_and_write_the_bucket_and_rerun_skips(ray_local, tiny_models, bucket, tmp_path):
    """Every path an s3:// URI on the local S3 server, configured only by the AWS_* variables."""
    from instructscale import storage
    from instructscale.generate.config import GenerateConfig
    from instructscale.generate.stage import generate, read_generated

    lines = [
        json.dumps({"id": f"q{i}", "instruction": f"Compute {i} + 1.", "output": "" if i % 3 else str(i + 1)})
        for i in range(30)
    ] + ['{"broken": ']
    storage.write_text(f"{bucket}/raw/a.jsonl", "\n".join(lines[:15]) + "\n")
    storage.write_text(f"{bucket}/raw/b.jsonl", "\n".join(lines[15:]) + "\n")
    storage.copy_tree(tiny_models["teacher"], f"{bucket}/models/teacher")
    cfg = IngestConfig(inputs=[PoolInput(path=f"{bucket}/raw/*.jsonl", format="jsonl")], out_dir=f"{bucket}/ingest")
    m = ingest(cfg)
    assert (m["rows"], m["quarantined"]) == (30, 1)
    assert m["quarantine_by_file"] == {f"{bucket}/raw/b.jsonl": 1}
    pool = storage.list_files(f"{bucket}/ingest/pool", suffix=".parquet")
    assert pool and storage.read_parquet(pool).num_rows == 30

    gen = GenerateConfig(
        input=f"{bucket}/ingest/pool",
        out_dir=f"{bucket}/generate",
        model=f"{bucket}/models/teacher",
        backend="hf",
        mode={"kind": "distill", "only_missing": True},
        sampling={"max_tokens": 4},
        replicas={"batch_size": 8},
    )
    g = generate(gen)
    assert g["inputs"] == 30 and g["this_run"]["inputs"] == 30
    table = read_generated(f"{bucket}/generate", include_rejected=True)
    assert sorted(table["parent_id"].to_pylist()) == sorted(f"q{i}" for i in range(30))
    assert sum(1 for r in table.to_pylist() if r["gen_model"]) == 20  # only the empty outputs were asked
    assert ingest(cfg) == m and generate(gen) == g, "a rerun skips the finished work"
    assert not (tmp_path / "s3:").exists() and not Path("s3:").exists()
