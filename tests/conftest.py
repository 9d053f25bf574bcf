"""Shared fixtures: one embedded Ray cluster and one set of tiny models per test session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from instructscale.runtime import RayConfig, init_ray

    init_ray(RayConfig(num_cpus=8))
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    from instructscale.models.tiny import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("models"), seed=0)
