"""Connecting to Ray: an embedded local cluster by default, or an existing cluster by address."""
from __future__ import annotations

import logging
import os

import ray
from pydantic import Field

from instructscale.config import StrictModel

log = logging.getLogger(__name__)


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
