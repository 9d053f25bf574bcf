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
    """The whole pipeline and a small tuning search, every output on the object store."""
    from instructscale import storage
    from instructscale.pipeline import run_pipeline
    from instructscale.tune.config import TuneConfig
    from instructscale.tune.search import run_search

    start_cluster(node_root, {"a": 4, "b": 4})
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
    return {"summary": summary, "tune": tune, "rerun_seconds": again["seconds"]}


def node_loss_generate(run: str, node_root: Path) -> dict:
    """A worker node removed while generation runs; the job completes."""
    from instructscale import storage
    from instructscale.config import parse_config
    from instructscale.demo.pool import DemoConfig, make_demo
    from instructscale.generate.config import GenerateConfig
    from instructscale.generate.stage import generate
    from instructscale.models.tiny import ensure_tiny_models

    cluster, workers = start_cluster(node_root, {"a": 2, "b": 2})
    models = ensure_tiny_models(storage.join(run, "models"))
    make_demo(DemoConfig(out_dir=storage.join(run, "data"), rows=240, shards=2, eval_rows=0, malformed_jsonl_rows=0))
    cfg = parse_config(
        GenerateConfig,
        {
            "input": storage.join(run, "data", "pool"),
            "out_dir": storage.join(run, "generate"),
            "model": models["teacher"],
            "backend": "hf",
            "sampling": {"max_tokens": 24},
            "mode": "distill",
            "replicas": {"min_replicas": 2, "max_replicas": 2, "batch_size": 8, "num_cpus": 1},
        },
    )
    worker, outcome = in_background(lambda: generate(cfg))
    committed = wait_for_commits(storage.join(run, "generate", "rows"), 3)
    cluster.remove_node(workers["b"], allow_graceful=False)
    add_node(cluster, node_root, "c", 2)  # the autoscaler's replacement
    worker.join(timeout=600)
    return {"committed_before_loss": committed, **outcome}


def node_loss_train(run: str, node_root: Path) -> dict:
    """A worker node removed while training runs; training resumes from the object store."""
    from instructscale import storage
    from instructscale.config import parse_config
    from instructscale.demo.pool import DemoConfig, make_demo
    from instructscale.models.tiny import ensure_tiny_models
    from instructscale.train.config import TrainConfig
    from instructscale.train.stage import train

    cluster, workers = start_cluster(node_root, {"a": 2, "b": 2})
    models = ensure_tiny_models(storage.join(run, "models"))
    make_demo(DemoConfig(out_dir=storage.join(run, "data"), rows=400, shards=1, eval_rows=0, malformed_jsonl_rows=0))
    cfg = parse_config(
        TrainConfig,
        {
            "data": storage.join(run, "data", "pool"),
            "model": models["student"],
            "out_dir": storage.join(run, "train"),
            "lora": None,
            "max_steps": 120,
            "epochs": 4,
            "micro_batch_size": 4,
            "max_length": 64,
            "checkpoint_every": 10,
            "max_failures": 2,
            "scaling": {"num_workers": 2, "cpus_per_worker": 2},
        },
    )  # one worker per node
    worker, outcome = in_background(lambda: train(cfg))
    metrics = storage.join(run, "train", "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and not registered_checkpoint(run):
        time.sleep(0.5)
    steps_before = len(storage.read_text(metrics).splitlines()) if storage.is_file(metrics) else 0
    cluster.remove_node(workers["b"], allow_graceful=False)  # a crash, not a drain
    add_node(cluster, node_root, "c", 2)
    worker.join(timeout=900)
    lines = storage.read_text(metrics).splitlines() if storage.is_file(metrics) else []
    return {"steps_logged_before_loss": steps_before, "metric_lines": len(lines), **outcome}


def registered_checkpoint(run: str) -> bool:
    """Whether Ray Train's controller has registered a checkpoint (its snapshot names one).

    A checkpoint on storage is not enough: workers upload it before the controller, which polls
    every 2 s, takes the report in; a node lost in between restarts the run from the previous one.
    """
    from instructscale import storage

    snapshot = storage.join(run, "train", "ray_train", "checkpoint_manager_snapshot.json")
    return bool((storage.read_json_if_exists(snapshot) or {}).get("latest_checkpoint_result"))


def local_run_dir(run: str, node_root: Path) -> dict:
    """A local run_dir on a multi-node cluster is refused before any work."""
    from instructscale.config import ConfigError
    from instructscale.pipeline import run_pipeline

    start_cluster(node_root, {"a": 1, "b": 1})
    try:
        run_pipeline(demo_config(str(node_root / "local-run")))
    except ConfigError as err:
        return {"error": str(err)}
    return {"error": None}


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
