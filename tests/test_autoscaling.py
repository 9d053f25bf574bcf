"""Autoscaling, drilled on one machine: Ray's autoscaler over its fake multi-node provider, with the
worker types of cluster/aws.yaml (tests/cluster_scenarios.py `autoscaling`). The pipeline's teacher
replicas and training worker ask for the custom resources those node types offer; each type comes
up from zero for its stage and goes away once idle, and every row is accounted for."""

import pytest

from test_multinode import run_scenario

pytestmark = pytest.mark.slow


def test_autoscaling_brings_up_each_worker_type_from_zero_for_its_stage_and_removes_it_idle(tmp_path):
    # one auth mode for the driver, the head and its nodes, whatever an embedded Ray of this test
    # session left in the environment (a new local cluster turns token auth on when a token exists)
    result = run_scenario("autoscaling", str(tmp_path / "run"), tmp_path / "nodes", env={"RAY_AUTH_MODE": "disabled"})
    assert set(result["types"]) == {"cpu_worker", "gpu_teacher", "gpu_trainer"}, "cluster/aws.yaml's worker types"
    assert result["before"] == [], "no worker node before the pipeline asks for one"
    seen = result["seen"]
    assert {"gpu_teacher", "gpu_trainer", "cpu_worker"} <= set(seen), seen
    assert seen["gpu_teacher"][0] < seen["gpu_trainer"][0], f"the teacher's node type first, then the trainer's: {seen}"
    summary = result["summary"]
    ing, gen, sel = (summary["stages"][s] for s in ("ingest", "generate", "select"))
    assert gen["inputs"] == ing["rows"] and gen["rows"] + sum(gen["rejected"].values()) == ing["rows"]
    assert sel["selected"] + sel["not_selected"] + sum(sel["removed"].values()) == ing["rows"]
    assert summary["stages"]["train"]["steps"] == 4
    assert result["removed_after_s"] is not None, f"idle worker nodes were not removed: {seen}"
