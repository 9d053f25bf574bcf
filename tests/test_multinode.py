"""A real multi-node Ray cluster on one machine (a head without CPUs and worker nodes, each with its
own temp root), every output on a real S3 protocol server: the refusal of a local run_dir, the whole
pipeline and a search; a node lost during generation, then one during training. Each scenario is a
driver process of its own (tests/cluster_scenarios.py)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from instructscale import storage
from instructscale.generate.stage import read_generated

SCENARIOS = Path(__file__).with_name("cluster_scenarios.py")
pytestmark = pytest.mark.slow


def run_scenario(name: str, run: str, node_root: Path, timeout_s: int = 1200, env: dict | None = None) -> dict:
    proc = subprocess.Popen(
        [sys.executable, str(SCENARIOS), name, run, str(node_root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "RAY_ADDRESS": "", **(env or {})},
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, out[-6000:]
    return json.loads(lines[-1][len("RESULT ") :])


def local_outputs(root: Path) -> list[Path]:
    """Stage outputs (Parquet, manifests, model weights) on a node's disk outside its caches."""
    found = []
    for path in root.rglob("*"):
        output = path.suffix in (".parquet", ".safetensors") or path.name == "_manifest.json"
        if path.is_file() and output and "cache" not in path.relative_to(root).parts:
            found.append(path)
    return found


def test_multinode_refuses_a_local_run_dir_then_runs_the_pipeline_and_search_on_object_storage(bucket, tmp_path):
    run = f"{bucket}/run"
    result = run_scenario("multinode_pipeline", run, tmp_path / "nodes")
    assert "is a local path, but this Ray cluster has 3 nodes" in result["refusal"]
    assert "storage.shared_mount: true" in result["refusal"]
    assert not (tmp_path / "nodes" / "local-run").exists()
    summary, tune = result["summary"], result["tune"]
    assert set(summary["stages"]) == {"models", "demo", "ingest", "generate", "select", "train", "evaluate"}
    ing = summary["stages"]["ingest"]
    assert ing["rows"] == 600 + 6 and ing["quarantined"] == 2
    assert summary["stages"]["generate"]["inputs"] == ing["rows"]
    sel = summary["stages"]["select"]
    assert sel["selected"] + sel["not_selected"] + sum(sel["removed"].values()) == ing["rows"]
    assert summary["stages"]["train"]["steps"] == 6 and summary["model"] == f"{run}/train/model"
    assert storage.is_file(f"{run}/train/model/model.safetensors") and storage.is_file(f"{run}/report.md")
    assert storage.glob(f"{run}/train/ray_train/checkpoint_*/state.json"), "checkpoints on the object store"
    assert storage.list_files(f"{run}/logs"), "logs uploaded"
    assert set(summary["stages"]["evaluate"]) == {"base", "tuned"}
    assert tune["trials"] == 2 and storage.is_file(f"{run}/tune/best_model/model.safetensors")
    assert storage.is_file(f"{run}/tune/trials.csv")
    assert all(s < 5 for s in result["rerun_seconds"].values()), result["rerun_seconds"]  # every stage skipped
    assert local_outputs(tmp_path / "nodes") == [], "nothing written to the nodes' disks outside caches"
    assert not Path("s3:").exists()


def test_a_node_lost_during_generate_and_one_during_train_cost_no_row_and_no_step(bucket, tmp_path):
    run = f"{bucket}/run"
    result = run_scenario("node_loss", run, tmp_path / "nodes")
    gen, tr = result["generate"], result["train"]
    assert gen.get("manifest") and gen["progress_before_loss"] >= 3, gen
    table = read_generated(f"{run}/generate", include_rejected=True)
    pool = storage.read_parquet(storage.list_files(f"{run}/gen-data/pool", suffix=".parquet"))
    assert sorted(table["parent_id"].to_pylist()) == sorted(pool["id"].to_pylist()), "each input exactly once"
    assert gen["manifest"]["inputs"] == pool.num_rows == 240

    manifest = tr.get("manifest")
    assert manifest and manifest["steps"] == 60, tr
    steps = [r["step"] for r in manifest["history"]]
    assert sorted(set(steps)) == list(range(1, 61))
    resumed = {r["resumed_from"] for r in manifest["history"] if r["resumed_from"]}
    assert resumed and all(r % 10 == 0 for r in resumed), tr  # restarted from a checkpoint (every 10 steps)
    assert storage.is_file(f"{run}/train/model/model.safetensors")
