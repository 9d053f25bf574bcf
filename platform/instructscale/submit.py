"""Ray job submission: run a stage or the whole pipeline on a cluster through its dashboard.

The job's working directory holds the `jobs/` entry points and the config (as ``config.yaml``);
the `instructscale` package travels as a runtime_env py_module, so the cluster only needs the
dependencies (see `cluster/`). Paths inside the config are resolved on the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

import instructscale
from instructscale import storage
from instructscale.config import ConfigError, set_dotted

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
    _refuse_secrets(env or {})
    job_config = _job_config(config, overrides)
    client = _client(address)
    warn_if_local_output(job_config, address)
    staging = Path(tempfile.mkdtemp(prefix="instructscale-job-"))
    try:
        shutil.copytree(_jobs_dir(), staging / "jobs", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(config, staging / "config.yaml")
        packages, plugins = _ship_plugins(job_config, staging)
        if plugins:
            overrides = [*overrides, f"plugins={json.dumps(plugins)}"]
        runtime_env: dict = {
            "working_dir": str(staging),
            "py_modules": [str(Path(instructscale.__file__).parent), *packages],
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


SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")


def _refuse_secrets(env: dict[str, str]) -> None:
    """A job's runtime_env is visible in the Ray dashboard: secrets must come from the cluster."""
    secret = [k for k in env if any(w in k.upper() for w in SECRET_WORDS)]
    if secret:
        raise ConfigError(
            f"--env {', '.join(secret)}: a job's environment shows in the Ray dashboard; set secrets "
            "in the cluster's environment (a Kubernetes Secret, an instance role; see cluster/) and "
            "name the variable in the config (e.g. backend.api_key_env)"
        )


def _job_config(config: str, overrides: list[str]) -> dict:
    """The job's config as a mapping, with the ``--set`` overrides applied (not validated here:
    plug-ins may only exist on the cluster)."""
    data = yaml.safe_load(Path(config).read_text()) or {}
    for pair in overrides:
        key, _, value = pair.partition("=")
        set_dotted(data, key, yaml.safe_load(value))
    return data


def output_dir(job_config: dict) -> str | None:
    return job_config.get("run_dir", job_config.get("out_dir"))


def warn_if_local_output(job_config: dict, address: str | None) -> None:
    """Warn (before the job fails on the cluster) when its outputs would land on several local disks."""
    out = output_dir(job_config)
    shared = (job_config.get("storage") or {}).get("shared_mount", False)
    if out is None or shared or not storage.is_local(out):
        return
    nodes = _node_count(address)
    if nodes > 1:
        print(
            f"warning: the job's output {out!r} is a local path and the cluster has {nodes} nodes: outputs on "
            "other nodes would be lost, and the job refuses to start. Use s3://, gs:// or abfs:// (or "
            "storage.shared_mount: true for NFS/EFS/Filestore)",
            file=sys.stderr,
            flush=True,
        )


def _node_count(address: str | None) -> int:
    from ray.util.state import list_nodes

    try:
        return sum(
            1
            for n in list_nodes(address=address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS)
            if n.state == "ALIVE"
        )
    except Exception:  # the warning is best effort; the job itself refuses a scattered output
        return 0


def _ship_plugins(job_config: dict, staging: Path) -> tuple[list[str], list[str]]:
    """Plug-ins travel with the job: files and single-file modules into its working directory (on
    every node's import path, so the job names them as modules), local packages (not installed ones)
    as py_modules. Returns the py_modules and the job's ``plugins`` list."""
    packages, names = [], []
    for entry in job_config.get("plugins") or []:
        if entry.endswith(".py"):
            path = Path(entry)
            if path.is_file():
                shutil.copy(path, staging / path.name)
                entry = path.stem
            names.append(entry)  # a file not here must exist on the cluster
            continue
        names.append(entry)
        spec = importlib.util.find_spec(entry.split(".")[0])
        if spec is None or spec.origin is None or "site-packages" in spec.origin:
            continue  # installed on the cluster, or not found here (then it must be there)
        if spec.submodule_search_locations:
            packages.append(os.path.dirname(spec.origin))
        else:
            shutil.copy(spec.origin, staging / os.path.basename(spec.origin))
    return packages, names


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
