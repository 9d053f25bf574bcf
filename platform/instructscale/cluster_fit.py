"""Does a config fit a cluster? Every resource request of a pipeline config (the teacher replicas,
the actor scorers, the training workers, the evaluation engine) must fit on one node type of the
cluster config, or the autoscaler never adds a node for it and the job waits forever.

Node types come from a Ray cluster launcher YAML (``available_node_types``) or a KubeRay
RayCluster/RayJob manifest (each worker group's pod limits and ``rayStartParams``).
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from instructscale import storage
from instructscale.config import ActorPool

Resources = dict[str, float]


def node_types(path: str) -> dict[str, Resources]:
    """The worker node types a cluster config can start, with the resources each offers."""
    docs = [d for d in yaml.safe_load_all(storage.read_text(path)) if d]
    for doc in docs:
        if "available_node_types" in doc:
            head = doc.get("head_node_type")
            return {n: _floats(t.get("resources", {})) for n, t in doc["available_node_types"].items() if n != head}
        spec = doc.get("spec", {})
        cluster = spec.get("rayClusterSpec", spec)  # a RayJob holds a RayCluster's spec
        if "workerGroupSpecs" in cluster:
            return {g["groupName"]: _kuberay_group(g) for g in cluster["workerGroupSpecs"]}
    raise ValueError(f"{path}: neither a Ray cluster config (available_node_types) nor a KubeRay RayCluster")


def _floats(resources: dict) -> Resources:
    return {k: float(v) for k, v in resources.items()}


def _kuberay_group(group: dict) -> Resources:
    """A worker group's Ray resources: CPUs and GPUs from the container's limits, unless
    ``rayStartParams`` overrides them, plus its custom ``resources``."""
    params = group.get("rayStartParams", {})
    limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
    offered = {"CPU": _quantity(params.get("num-cpus", limits.get("cpu", 0)))}
    gpus = params.get("num-gpus", limits.get("nvidia.com/gpu", 0))
    if float(gpus):
        offered["GPU"] = float(gpus)
    if custom := params.get("resources"):
        offered |= _floats(json.loads(json.loads(custom) if custom.startswith('"') else custom))
    return offered


def _quantity(value: Any) -> float:
    """A Kubernetes CPU quantity ("16", "500m") in CPUs."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def requests(cfg: Any) -> dict[str, Resources]:
    """Each resource request of a pipeline config, by the config key that sets it."""
    found: dict[str, Resources] = {}
    if cfg.generate is not None:
        found["generate.replicas"] = _pool(cfg.generate.replicas)
    if cfg.select is not None:
        for i, scorer in enumerate(cfg.select.scorers):
            if isinstance(scorer, ActorPool):
                found[f"select.scorers.{i}"] = _pool(scorer)
    if cfg.train is not None:
        found["train.scaling"] = cfg.train.scaling.worker_resources()
    if cfg.evaluate is not None:
        found["evaluate.replicas"] = _pool(cfg.evaluate.replicas)
    return {key: {k: v for k, v in r.items() if v} for key, r in found.items()}


def _pool(pool: ActorPool) -> Resources:
    return {"CPU": pool.num_cpus, "GPU": pool.num_gpus, **pool.resources}


def misfits(asked: dict[str, Resources], types: dict[str, Resources], cluster: str) -> list[str]:
    """One line per request that no node type can hold, saying what it asks and what is offered."""
    offered = "; ".join(f"{name} {_text(r)}" for name, r in types.items())
    lines = []
    for key, need in asked.items():
        if not any(all(have.get(k, 0.0) >= v for k, v in need.items()) for have in types.values()):
            missing = sorted(k for k in need if not any(k in have for have in types.values()))
            why = f"no node type offers {', '.join(missing)}" if missing else "no node type is that large"
            lines.append(f"{key} asks for {_text(need)}: {why} in {cluster} ({offered})")
    return lines


def _text(resources: Resources) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in resources.items()) + "}"
