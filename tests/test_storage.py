"""The storage layer and the stage lifecycle, on a local disk and on a real S3 protocol server (moto):
atomic writes, listing, globbing, copies, the per-node model cache, committed parts, resume and
publish, skip-if-done, and the errors a user meets."""

import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

from instructscale import storage
from instructscale.config import ConfigError
from instructscale.lifecycle import SCHEMA_VERSION, StageRun, commit_part, commit_records, part_files


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("bucket") + "/root"


def test_files_roundtrip_list_glob_copy_and_remove(root, tmp_path):
    storage.write_json(storage.join(root, "a", "x.json"), {"k": 1})
    storage.write_text(storage.join(root, "a", "b", "y.txt"), "hello")
    storage.write_parquet(storage.join(root, "a", "t.parquet"), pa.table({"v": [1, 2, 3]}))
    storage.write_text(storage.join(root, "a", "_hidden.json"), "{}")
    assert storage.read_json(storage.join(root, "a", "x.json")) == {"k": 1}
    assert storage.read_json_if_exists(storage.join(root, "nope.json")) is None
    assert storage.exists(storage.join(root, "a")) and storage.is_file(storage.join(root, "a", "b", "y.txt"))
    assert not storage.exists(storage.join(root, "zzz"))
    listed = storage.list_files(storage.join(root, "a"))
    assert listed == sorted(listed) and [storage.name(u) for u in listed] == ["y.txt", "t.parquet", "x.json"]
    assert [storage.name(u) for u in storage.glob(storage.join(root, "a", "*.json"))] == ["_hidden.json", "x.json"]
    assert storage.read_parquet(storage.list_files(storage.join(root, "a"), suffix=".parquet"))["v"].to_pylist() == [
        1,
        2,
        3,
    ]

    storage.copy_tree(storage.join(root, "a"), storage.join(root, "copy"))
    assert storage.read_text(storage.join(root, "copy", "b", "y.txt")) == "hello"
    storage.copy_tree(storage.join(root, "a"), str(tmp_path / "down"))  # any store to a local disk
    assert (tmp_path / "down" / "b" / "y.txt").read_text() == "hello"
    storage.remove(storage.join(root, "a"))
    assert not storage.exists(storage.join(root, "a", "x.json")) and storage.list_files(storage.join(root, "a")) == []
    storage.remove(storage.join(root, "never-there"))  # missing is fine


def test_a_failed_write_leaves_the_old_file(root):
    uri = storage.join(root, "f.txt")
    storage.write_text(uri, "old")
    with pytest.raises(RuntimeError), storage.open_output(uri) as f:
        f.write(b"half")
        raise RuntimeError("crash mid-write")
    assert storage.read_text(uri) == "old"
    assert storage.list_files(root, hidden=True) == [uri], "no temp file left"


def test_remote_models_are_cached_per_node_by_listing(bucket, tmp_path, monkeypatch):
    monkeypatch.setenv(storage.ENV_CACHE_DIR, str(tmp_path / "cache"))
    model = f"{bucket}/models/m"
    storage.write_text(f"{model}/config.json", '{"a": 1}')
    first = storage.local_dir(model)
    assert Path(first, "config.json").read_text() == '{"a": 1}'
    assert storage.local_dir(model) == first, "second call is served from the cache"
    storage.write_text(f"{model}/config.json", '{"a": 22}')  # a changed model is fetched again
    second = storage.local_dir(model)
    assert second != first and Path(second, "config.json").read_text() == '{"a": 22}'
    assert storage.local_dir(str(tmp_path)) == str(tmp_path)  # local directories are used in place
    with pytest.raises(ConfigError, match="no files there"):
        storage.local_dir(f"{bucket}/models/absent")


def test_model_refs_and_storage_settings(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    assert storage.model_ref(str(tmp_path / "m")) == str(tmp_path / "m")
    assert storage.model_ref("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"  # a hub id
    with pytest.raises(ConfigError, match="model: './nope' is not a model directory"):
        storage.model_ref("./nope")
    monkeypatch.setenv("MY_KEY", "k")
    env = storage.apply(storage.StorageConfig(region="eu-west-1", access_key_env="MY_KEY"))
    assert env[storage.ENV_ACCESS_KEY_NAME] == "MY_KEY" and os.environ["AWS_REGION"] == "eu-west-1"
    assert "k" not in env.values(), "settings carry variable names, never secrets"


def test_stage_lifecycle_commits_resumes_and_publishes(root):
    run = StageRun("demo-stage", storage.join(root, "out"), {"x": 1})
    assert run.finished() is None
    run.start(resumable=("rows",), rebuilt=("other",))
    commit_part(run.uri("rows"), "part-a.parquet", pa.table({"id": ["a", "b"]}))
    storage.write_parquet(run.uri("rows", "part-b.parquet"), pa.table({"id": ["c"]}))  # crashed before commit
    assert [storage.name(u) for u in part_files(run.uri("rows"))] == ["part-a.parquet"], "readers trust commits"

    again = StageRun("demo-stage", storage.join(root, "out"), {"x": 1})
    again.start(resumable=("rows",))  # a rerun keeps committed parts and drops the uncommitted one
    assert [r["file"] for r in commit_records(again.uri("rows"))] == ["part-a.parquet"]
    assert not storage.exists(again.uri("rows", "part-b.parquet"))
    commit_part(again.uri("rows"), "part-c.parquet", pa.table({"id": ["c"]}))
    manifest = again.publish({"rows_done": 3}, datasets=("rows",))
    assert manifest["datasets"] == {"rows": 3} and manifest["schema_version"] == SCHEMA_VERSION
    assert storage.read_json(again.uri("rows", "_manifest.json"))["rows"] == 3
    assert StageRun("demo-stage", storage.join(root, "out"), {"x": 1}).finished() == manifest

    changed = StageRun("demo-stage", storage.join(root, "out"), {"x": 2})
    assert changed.finished() is None
    with pytest.raises(ConfigError, match="holds a run with a different config"):
        changed.start(resumable=("rows",))
    StageRun("demo-stage", storage.join(root, "out"), {"x": 2}, overwrite=True).start(resumable=("rows",))
    assert part_files(storage.join(root, "out", "rows")) == []


def test_output_of_an_older_version_names_the_fix(tmp_path):
    storage.write_json(str(tmp_path / "_manifest.json"), {"config": {"x": 1}})  # schema 1: no version key
    with pytest.raises(ConfigError, match="another instructscale version .* --overwrite"):
        StageRun("s", str(tmp_path), {"x": 1}).finished()
    assert StageRun("s", str(tmp_path), {"x": 1}, overwrite=True).finished() is None
    v3 = {"config": {"x": 1}, "schema_version": 3}  # before reasoning and loss_weight: still read
    storage.write_json(str(tmp_path / "_manifest.json"), v3)
    assert StageRun("s", str(tmp_path), {"x": 1}).finished() == v3


def test_schema_3_rows_read_as_schema_4_rows_without_reasoning(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from instructscale.schema import POOL_SCHEMA

    v3_message = pa.struct([(f.name, f.type) for f in POOL_SCHEMA.field("messages").type.value_type][:5])
    v3 = pa.schema([pa.field("messages", pa.list_(v3_message)) if f.name == "messages" else f for f in POOL_SCHEMA])
    row = {c: "x" for c in ("id", "instruction", "input", "output", "source", "metadata")}
    pq.write_table(
        pa.Table.from_pylist([{**row, "messages": [{"role": "user", "content": "hi"}]}], v3), tmp_path / "p.parquet"
    )
    message = storage.read_parquet([str(tmp_path / "p.parquet")], schema=POOL_SCHEMA).to_pylist()[0]["messages"][0]
    assert (message["content"], message["reasoning"], message["loss_weight"]) == ("hi", None, None)


def test_plain_directories_and_files_are_readable_inputs(tmp_path):
    storage.write_parquet(str(tmp_path / "d" / "x.parquet"), pa.table({"v": [1]}))
    storage.write_text(str(tmp_path / "d" / "notes.txt"), "not data")
    assert part_files(str(tmp_path / "d")) == [str(tmp_path / "d" / "x.parquet")]
    assert part_files(str(tmp_path / "d" / "x.parquet")) == [str(tmp_path / "d" / "x.parquet")]
    assert json.loads(json.dumps(commit_records(str(tmp_path / "d")))) == []
