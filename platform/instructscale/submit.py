"""Ray job submission: run a stage or the whole pipeline on a cluster through its dashboard.

The job's working directory holds the `jobs/` entry points and the config (as ``config.yaml``);
the `instructscale` package travels as a runtime_env py_module, so the cluster only needs the
dependencies (see `cluster/`). Paths inside the config are resolved on the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import tempfile
import time
from pathlib import Path

import instructscale
from instructscale.config import ConfigError

# stage -> entry point; not jobs/select.py, which would shadow the standard library's `select`
ENTRYPOINTS = {
    "pipeline": "pipeline.py",
    "generate": "generate.py",
    "select": "selection.py",
    "train": "train.py",
    "tune": "tune.py",
    "evaluate": "evaluate.py",
}
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
AGENT_WAIT_S = 120.0  # a just-started head answers "No available agent to submit job" until its agent is up


def _client(address: str | None):
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)  # as `ray job submit` does
    try:
        return JobSubmissionClient(address)
    except Exception as err:  # connection refused, bad scheme, no dashboard
        raise ConfigError(f"--address: cannot reach a Ray dashboard at {address}: {err}") from None


def _jobs_dir() -> Path:
    """The repository's `jobs/` entry points (a source checkout) or the packaged copy."""
    repo = Path(instructscale.__file__).resolve().parents[2] / "jobs"
    if repo.is_dir():
        return repo
    raise ConfigError("cannot find the jobs/ entry points next to the instructscale package")


def submit(
    config: str,
    stage: str = "pipeline",
    address: str | None = None,
    overrides: list[str] = (),
    pip: list[str] = (),
    env: dict[str, str] | None = None,
    job_id: str | None = None,
) -> str:
    """Submit ``jobs/<stage>.py CONFIG`` as a Ray job; returns the job id."""
    if stage not in ENTRYPOINTS:
        raise ConfigError(f"--stage: {stage!r} is not one of {', '.join(ENTRYPOINTS)}")
    if not Path(config).is_file():
        raise ConfigError(f"config: {config} not found")
    client = _client(address)
    staging = Path(tempfile.mkdtemp(prefix="instructscale-job-"))
    try:
        shutil.copytree(_jobs_dir(), staging / "jobs", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(config, staging / "config.yaml")
        runtime_env: dict = {
            "working_dir": str(staging),
            "py_modules": [str(Path(instructscale.__file__).parent)],
            "env_vars": {"PYTHONUNBUFFERED": "1", **(env or {})},
        }
        if pip:
            runtime_env["pip"] = list(pip)
        sets = " ".join(f"--set {shlex.quote(s)}" for s in overrides)
        entrypoint = f"python jobs/{ENTRYPOINTS[stage]} config.yaml {sets}".strip()
        deadline = time.time() + AGENT_WAIT_S
        while True:
            try:
                return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=job_id)
            except RuntimeError as err:
                if "No available agent" not in str(err) or time.time() > deadline:
                    raise
                time.sleep(2)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def status(job_id: str, address: str | None = None) -> str:
    return str(_client(address).get_job_status(job_id).value)


def stop(job_id: str, address: str | None = None) -> bool:
    return _client(address).stop_job(job_id)


def logs(job_id: str, address: str | None = None) -> str:
    return _client(address).get_job_logs(job_id)


def follow(job_id: str, address: str | None = None, timeout_s: float | None = None) -> str:
    """Stream the job's logs to stdout until it ends; returns its final status."""
    client = _client(address)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    with contextlib.suppress(asyncio.TimeoutError):
        asyncio.run(asyncio.wait_for(tail(), timeout_s))
    deadline = time.time() + 30
    while (state := str(client.get_job_status(job_id).value)) not in TERMINAL and time.time() < deadline:
        time.sleep(1)
    return state
