"""Shared fixtures: a local S3-compatible server, one embedded Ray cluster and one set of tiny models
per test session. The S3 server starts first, so Ray workers inherit its endpoint and test keys."""

from __future__ import annotations

import logging
import os
import socket

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1, configured only through the standard AWS_* variables."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1"
    )
    yield endpoint
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, request) -> str:
    """A fresh bucket; returns its s3:// URI."""
    import boto3

    name = "t-" + "".join(ch for ch in request.node.name.lower() if ch.isalnum())[:40] + f"-{free_port()}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    import ray

    from instructscale.runtime import RayConfig, init_ray

    init_ray(RayConfig(num_cpus=8))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    from instructscale.models.tiny import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("models"), seed=0)
