"""Multi-node scenarios on one machine, each run as its own driver process by tests/test_multinode.py:
a Ray cluster of a head (no CPUs: only the driver runs there) and worker nodes started with
`ray.cluster_utils.Cluster`, each node with its own temp root and model cache, outputs on the S3
server whose endpoint and keys come in the standard AWS_* variables.

    python tests/cluster_scenarios.py SCENARIO RUN_URI NODE_ROOT

Prints one line ``RESULT <json>`` at the end.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_cluster(node_root: Path, nodes: dict[str, int]):
    """A head with 0 CPUs and one worker node per ``nodes`` entry (name -> CPUs)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "env_vars": node_env(node_root, "head")})
    CLUSTERS.append(cluster)
    workers = {name: add_node(cluster, node_root, name, cpus) for name, cpus in nodes.items()}
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    return cluster, workers


CLUSTERS: list = []  # shut down at exit


def node_env(node_root: Path, name: str) -> dict[str, str]:
    """Each node's processes get a temp root and a model cache of their own."""
    tmp, cache = node_root / name / "tmp", node_root / name / "cache"
    tmp.mkdir(parents=True, exist_ok=True)
    return {"TMPDIR": str(tmp), "INSTRUCTSCALE_CACHE_DIR": str(cache)}


def add_node(cluster, node_root: Path, name: str, cpus: int):
    return cluster.add_node(num_cpus=cpus, resources={f"node_{name}": 1}, env_vars=node_env(node_root, name))


def in_background(fn) -> tuple[threading.Thread, dict]:
    """Run ``fn`` in a thread; its result or error lands in the returned dict."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["manifest"] = fn()
        except BaseException as err:  # reported in the scenario's result
            outcome["error"] = f"{type(err).__name__}: {err}"

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def wait_for_commits(uri: str, at_least: int, timeout_s: float = 300) -> int:
    from instructscale import storage

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        n = len(storage.list_files(storage.join(uri, "_commits"), hidden=True))
        if n >= at_least:
            return n
        time.sleep(0.5)
    raise TimeoutError(f"no {at_least} commits under {uri}")


def demo_config(run: str, **overrides):
    from instructscale.config import load_config
    from instructscale.pipeline import PipelineConfig

    small = {
        "run_dir": run,
        "ray.address": "auto",
        "demo.rows": 600,
        "demo.eval_rows": 16,
        "demo.malformed_jsonl_rows": 8,
        "demo.shards": 2,
        "generate.replicas.batch_size": 128,
        "select.scorers.0.max_replicas": 1,
        "train.max_steps": 6,
        "train.micro_batch_size": 4,
        "train.checkpoint_every": 3,
        "train.eval_every": 3,
        "evaluate.max_rows": 16,
    }
    return load_config(PipelineConfig, ROOT / "configs" / "demo.yaml", {**small, **overrides})


def multinode_pipeline(run: str, node_root: Path) -> dict:
    """A local run_dir refused before any work, then the whole pipeline and a small tuning search,
    every output on the object store."""
    from instructscale import storage
    from instructscale.config import ConfigError
    from instructscale.pipeline import run_pipeline
    from instructscale.tune.config import TuneConfig
    from instructscale.tune.search import run_search

    start_cluster(node_root, {"a": 4, "b": 4})
    try:
        run_pipeline(demo_config(str(node_root / "local-run")))
        refusal = None
    except ConfigError as err:
        refusal = str(err)
    summary = run_pipeline(demo_config(run))
    tune = run_search(
        TuneConfig(
            data=summary["pool"],
            eval_data=storage.join(run, "data", "eval"),
            model=summary["models"]["student"],
            out_dir=storage.join(run, "tune"),
            num_samples=2,
            max_concurrent=2,
            grace_period=2,
            space={"train.optim.lr": {"choice": [1e-4, 5e-3]}},
            train={
                "max_steps": 4,
                "eval_every": 2,
                "micro_batch_size": 4,
                "max_length": 64,
                "checkpoint_every": 2,
                "scaling": {"num_workers": 1},
            },
        )
    )
    again = run_pipeline(demo_config(run))
    return {"refusal": refusal, "summary": summary, "tune": tune, "rerun_seconds": again["seconds"]}


def node_loss(run: str, node_root: Path) -> dict:
    """A worker node removed while generation runs, then another while training runs; both jobs
    complete, training resumed from its checkpoint on the object store."""
    from instructscale import storage
    from instructscale.models.tiny import ensure_tiny_models

    cluster, workers = start_cluster(node_root, {"a": 2, "b": 2})
    models = ensure_tiny_models(storage.join(run, "models"))
    generated, c = _lose_a_node_while(cluster, node_root, workers["b"], "c", _generate(run, models))
    trained, _ = _lose_a_node_while(cluster, node_root, c, "d", _train(run, models))  # one worker per node: a, c
    return {"generate": generated, "train": trained}


def _lose_a_node_while(cluster, node_root: Path, node, replacement: str, job) -> tuple[dict, object]:
    """Run ``job`` (a function, and one that waits until it has committed work) in a thread; then kill
    ``node`` (a crash, not a drain) and add a ``replacement`` node, as an autoscaler would, and wait for
    the job. Returns its outcome and the replacement node."""
    run, ready = job
    worker, outcome = in_background(run)
    progress = ready()
    cluster.remove_node(node, allow_graceful=False)
    added = add_node(cluster, node_root, replacement, 2)
    worker.join(timeout=900)
    return {"progress_before_loss": progress, **outcome}, added


def _generate(run: str, models: dict):
    from instructscale import storage
    from instructscale.config import parse_config
    from instructscale.demo.pool import DemoConfig, make_demo
    from instructscale.generate.config import GenerateConfig
    from instructscale.generate.stage import generate

    data = storage.join(run, "gen-data")
    make_demo(DemoConfig(out_dir=data, rows=240, shards=2, eval_rows=0, malformed_jsonl_rows=0))
    cfg = parse_config(
        GenerateConfig,
        {
            "input": storage.join(data, "pool"),
            "out_dir": storage.join(run, "generate"),
            "model": models["teacher"],
            "backend": "hf",
            "sampling": {"max_tokens": 24},
            "mode": "distill",
            "replicas": {"min_replicas": 2, "max_replicas": 2, "batch_size": 8, "num_cpus": 1},
        },
    )
    return (lambda: generate(cfg)), (lambda: wait_for_commits(storage.join(run, "generate", "rows"), 3))


def _train(run: str, models: dict):
    from instructscale import storage
    from instructscale.config import parse_config
    from instructscale.demo.pool import DemoConfig, make_demo
    from instructscale.train.config import TrainConfig
    from instructscale.train.stage import train

    data = storage.join(run, "train-data")
    make_demo(DemoConfig(out_dir=data, rows=400, shards=1, eval_rows=0, malformed_jsonl_rows=0))
    cfg = parse_config(
        TrainConfig,
        {
            "data": storage.join(data, "pool"),
            "model": models["student"],
            "out_dir": storage.join(run, "train"),
            "lora": None,
            "max_steps": 60,
            "epochs": 4,
            "micro_batch_size": 4,
            "max_length": 64,
            "checkpoint_every": 10,
            "max_failures": 2,
            "scaling": {"num_workers": 2, "cpus_per_worker": 2},
        },
    )  # one worker per node

    def ready() -> int:
        deadline = time.time() + 300
        while time.time() < deadline and not registered_checkpoint(run):
            time.sleep(0.5)
        metrics = storage.join(run, "train", "metrics.jsonl")
        return len(storage.read_text(metrics).splitlines()) if storage.is_file(metrics) else 0

    return (lambda: train(cfg)), ready


def registered_checkpoint(run: str) -> bool:
    """Whether Ray Train's controller has registered a checkpoint (its snapshot names one).

    A checkpoint on storage is not enough: workers upload it before the controller, which polls
    every 2 s, takes the report in; a node lost in between restarts the run from the previous one.
    """
    from instructscale import storage

    snapshot = storage.join(run, "train", "ray_train", "checkpoint_manager_snapshot.json")
    return bool((storage.read_json_if_exists(snapshot) or {}).get("latest_checkpoint_result"))


def autoscaling(run: str, node_root: Path) -> dict:
    """The demo pipeline on an autoscaling cluster whose worker types mirror cluster/aws.yaml's
    (same names and custom resources, 2 CPUs each, no GPUs, 0 to 1 node each, a 6 s idle timeout):
    the teacher replicas ask for ``accelerator_type:L4`` and the training worker for
    ``accelerator_type:A100``, as a GPU cluster's configs would; no worker node exists before."""
    import ray

    from instructscale.cluster_fit import node_types
    from instructscale.pipeline import run_pipeline

    types = {name: _scaled(r) for name, r in node_types(str(ROOT / "cluster" / "aws.yaml")).items()}
    address = start_autoscaling_head(node_root, types, idle_timeout_minutes=0.1)
    ray.init(address=address, log_to_driver=False)
    watcher = NodeWatcher(types)
    before = watcher.alive()
    cfg = demo_config(
        run,
        **{
            "ray.address": address,
            "storage.shared_mount": True,  # the fake nodes share this machine's disk
            "demo.rows": 200,
            "generate.replicas": {"num_cpus": 2, "batch_size": 64, "resources": {"accelerator_type:L4": 1}},
            "select.scorers": [],
            "select.difficulty": {"source": "length"},
            "select.weights": {},
            "train.scaling": {"num_workers": 1, "cpus_per_worker": 1, "resources": {"accelerator_type:A100": 1}},
            "train.max_steps": 4,
            "evaluate": None,
        },
    )
    summary = run_pipeline(cfg)
    removed_after_s = watcher.wait_until_no_workers(timeout_s=120)
    watcher.stop()
    return {
        "types": types,
        "before": before,
        "seen": watcher.seen,
        "summary": summary,
        "removed_after_s": removed_after_s,
    }


def _scaled(resources: dict) -> dict:
    """A node type's resources at this machine's size: 2 CPUs, no GPUs, the custom resources kept."""
    return {"CPU": 2.0, **{k: v for k, v in resources.items() if k not in ("CPU", "GPU")}}


def start_autoscaling_head(node_root: Path, types: dict, idle_timeout_minutes: float) -> str:
    """A head with 0 CPUs and Ray's autoscaler over the fake multi-node provider (worker nodes are
    Ray nodes this machine starts and stops, as a cloud provider would); returns its address.
    The head runs in its own temp dir, and its process group is killed at exit (never ``ray
    stop``: other Ray clusters on the machine stay up)."""
    import signal
    import socket
    import subprocess
    import tempfile

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    port, temp = free_port(), tempfile.mkdtemp(prefix="autoscale-", dir="/tmp")  # short: socket paths
    nodes = {n: {"resources": r, "node_config": {}, "min_workers": 0, "max_workers": 1} for n, r in types.items()}
    config = {
        "cluster_name": "drill",
        "max_workers": len(types),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{port}",
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            **nodes,
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
        },
        "head_node_type": "ray.head.default",
        **{
            k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands")
        },
        **{k: [] for k in ("head_start_ray_commands", "worker_start_ray_commands", "rsync_exclude", "rsync_filter")},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
    }
    config_file = Path(temp) / "autoscaling.json"
    config_file.write_text(json.dumps(config))
    # the head, the nodes its autoscaler starts and this driver share one auth mode, set before Ray
    # was imported (tests/test_autoscaling.py: disabled; token auth is drilled in tests/test_cluster.py)
    env = {**os.environ, **node_env(node_root, "head"), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    env |= {"RAY_ADDRESS": ""}
    ray_bin = Path(sys.executable).with_name("ray")
    args = [f"--port={port}", "--num-cpus=0", f"--temp-dir={temp}", f"--autoscaling-config={config_file}"]
    args += [
        "--include-dashboard=false",
        f"--dashboard-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
    ]
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the head, its autoscaler and the nodes it starts: one process group
    )
    CLEANUPS.append(lambda: os.killpg(head.pid, signal.SIGKILL))
    deadline = time.time() + 120
    while time.time() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return f"127.0.0.1:{port}"
        time.sleep(0.5)
    raise TimeoutError("the autoscaling head did not come up")


class NodeWatcher:
    """Samples the cluster's alive nodes every 0.5 s: when each worker type was first and last seen."""

    def __init__(self, types: dict):
        self.types, self.t0, self.seen = types, time.time(), {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def alive(self) -> list[str]:
        import ray

        return [self._type(n["Resources"]) for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")]

    def _type(self, resources: dict) -> str:
        custom = {k for k in resources if k.startswith("accelerator_type:")}
        return next(n for n, r in self.types.items() if {k for k in r if k.startswith("accelerator_type:")} == custom)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = round(time.time() - self.t0, 1)
            for name in self.alive():
                self.seen.setdefault(name, [now, now])[1] = now
            time.sleep(0.5)

    def wait_until_no_workers(self, timeout_s: float) -> float | None:
        """Seconds until no worker node is alive, or None after ``timeout_s``."""
        start = time.time()
        while time.time() - start < timeout_s:
            if not self.alive():
                return round(time.time() - start, 1)
            time.sleep(1)
        return None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


CLEANUPS: list = []  # run at exit


if __name__ == "__main__":
    scenario, run_uri, node_root = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        result = globals()[scenario](run_uri, node_root)
        print("RESULT " + json.dumps(result, default=str), flush=True)
    finally:
        import ray

        ray.shutdown()
        for cluster in CLUSTERS:
            cluster.shutdown()
        for cleanup in CLEANUPS:
            cleanup()
