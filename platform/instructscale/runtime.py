"""Ray runtime: connecting (an embedded local cluster by default, or an existing cluster by address),
and running an actor's model on one thread of its own."""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import ray
from pydantic import Field

from instructscale.config import StrictModel

log = logging.getLogger(__name__)
T = TypeVar("T")


class RayConfig(StrictModel):
    """How a stage reaches Ray. ``address: null`` starts an embedded single-node cluster."""

    address: str | None = Field(None, description='null, "auto", or "ray://host:10001"')
    num_cpus: int | None = Field(8, ge=1, description="logical CPUs of an embedded cluster (may exceed cores)")
    object_store_memory_gb: float | None = Field(None, gt=0)


def init_ray(cfg: RayConfig) -> None:
    """Start or join Ray once per process; inside a Ray job the job's cluster is used."""
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    store = int(cfg.object_store_memory_gb * 2**30) if cfg.object_store_memory_gb else None
    ray.init(num_cpus=cfg.num_cpus, object_store_memory=store, include_dashboard=False, log_to_driver=True)


class ModelThread:
    """One thread that builds and runs an actor's model, whichever thread calls the actor.

    Ray Data builds a callable-class actor on the worker's main thread but calls it from a helper
    thread. When torch starts OpenMP parallel regions from both, libgomp manages more threads than
    there are cores and (as we read libgomp) stops spin-waiting between regions, so the threads
    sleep and wake for every region: on 2 cores vLLM generated ~30% slower, with the CPU 25% idle.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        return self._pool.submit(fn, *args, **kwargs).result()
