"""Ray job submission: run a command of the table (the pipeline, a stage, a search) on a cluster
through its dashboard.

What a job runs is a *job specification* (``jobs/*.yaml``, :class:`JobSpec`): the command, its
config, overrides, the entrypoint's resources and the runtime environment. ``submit`` reads one,
or makes one from a config and ``--stage``. The job runs the installed command line
(``python -m instructscale COMMAND config.yaml``); the `instructscale` package travels as a
runtime_env py_module (so the cluster runs this code), and the config, plug-in files and local
plug-in packages with it. Paths inside the config are resolved on the cluster.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

import instructscale
from instructscale import storage
from instructscale.config import ConfigError, StrictModel, parse_config, parse_overrides, read_yaml, set_dotted
from instructscale.process import prepare_for
from instructscale.stage import command

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
AGENT_WAIT_S = 120.0  # a just-started head answers "No available agent to submit job" until its agent is up


class JobSpec(StrictModel):
    """What a submitted job runs: a command of the table with its config, plus the job's resources
    and runtime environment. ``config`` is relative to the spec's own folder."""

    command: str = Field("pipeline", description="pipeline, a stage (train, select, ...), tune, ...")
    config: str
    set: dict[str, Any] = Field(default_factory=dict, description="overrides, as --set KEY=VALUE")
    entrypoint_num_cpus: float | None = Field(None, ge=0, description="CPUs reserved for the job's driver")
    entrypoint_num_gpus: float | None = Field(None, ge=0, description="GPUs reserved for the job's driver")
    pip: list[str] = Field(default_factory=list, description="extra pip requirements of the job")
    env: dict[str, str] = Field(default_factory=dict, description="job environment variables (no secrets)")

    @classmethod
    def load(cls, path: str) -> JobSpec:
        spec = parse_config(cls, read_yaml(path), path)
        return spec.model_copy(update={"config": str(Path(path).parent / spec.config)})

    def overrides(self) -> list[str]:
        return [f"{k}={json.dumps(v)}" for k, v in self.set.items()]

    def job_config(self) -> dict:
        """The job's config as a mapping, overrides applied (not validated here: plug-ins may only
        exist on the cluster)."""
        data = read_yaml(self.config)
        for key, value in self.set.items():
            set_dotted(data, key, value)
        return data


def is_job_spec(path: str) -> bool:
    """Whether the YAML file at ``path`` is a job specification (it names a ``command``), not a config."""
    return "command" in read_yaml(path)


def job_spec(
    path: str, stage: str | None = None, overrides: list[str] = (), pip: list[str] = (), env: dict | None = None
) -> JobSpec:
    """The job to submit: the spec at ``path``, or ``path`` as the config of ``stage`` (default: the
    pipeline); ``overrides`` (KEY=VALUE), ``pip`` and ``env`` are added to it."""
    if not Path(path).is_file():
        raise ConfigError(f"config: {path} not found")
    spec = JobSpec.load(path) if is_job_spec(path) else JobSpec(config=path)
    update = {
        "set": {**spec.set, **parse_overrides(list(overrides))},
        "pip": [*spec.pip, *pip],
        "env": {**spec.env, **(env or {})},
    }
    return spec.model_copy(update={**update, **({"command": stage} if stage else {})})


def _client(address: str | None):
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)  # as `ray job submit` does
    try:
        return JobSubmissionClient(address)
    except Exception as err:  # connection refused, bad scheme, no dashboard, no or a wrong token
        if "Unauthorized" in str(err) or "Authentication" in str(err):
            raise ConfigError(
                f"--address: the Ray cluster at {address} refused this client: it needs the cluster's token "
                "(RAY_AUTH_TOKEN, a file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token; the token you "
                "generated for the cluster, `ray get-auth-token` on its head)"
            ) from None
        raise ConfigError(f"--address: cannot reach a Ray dashboard at {address}: {err}") from None


@contextlib.contextmanager
def _known_job(job_id: str, address: str | None) -> Iterator[None]:
    """A job the cluster does not know is a clear error, not a traceback."""
    try:
        yield
    except RuntimeError as err:
        if "does not exist" not in str(err):
            raise
        raise ConfigError(f"job {job_id!r}: the cluster at {address or DEFAULT_ADDRESS} has no such job") from None


def _cli_name(spec: JobSpec, job_config: dict) -> str:
    """The command's CLI name, after importing the plug-ins the config lists that exist here (a
    plug-in command of a file that only the cluster has is taken on trust)."""
    with contextlib.suppress(ConfigError, ImportError):
        prepare_for({"plugins": job_config.get("plugins") or []})
    try:
        cls = command(spec.command)
    except ValueError as err:
        raise ConfigError(f"--stage: {err}") from None
    return cls.cli_name or cls.name


def submit(spec: JobSpec, address: str | None = None, job_id: str | None = None) -> str:
    """Submit ``spec`` as a Ray job; returns the job id."""
    _refuse_secrets(spec.env)
    job_config = spec.job_config()
    name = _cli_name(spec, job_config)
    client = _client(address)
    warn_if_local_output(job_config, address)
    staging = Path(tempfile.mkdtemp(prefix="instructscale-job-"))
    try:
        shutil.copy(spec.config, staging / "config.yaml")
        packages, plugins = _ship_plugins(job_config, staging)
        overrides = [*spec.overrides(), *([f"plugins={json.dumps(plugins)}"] if plugins else [])]
        runtime_env: dict = {
            "working_dir": str(staging),
            "py_modules": [str(Path(instructscale.__file__).parent), *packages],
            "env_vars": {"PYTHONUNBUFFERED": "1", **spec.env},
            **({"pip": list(spec.pip)} if spec.pip else {}),
        }
        sets = " ".join(f"--set {shlex.quote(s)}" for s in overrides)
        entrypoint = f"python -m instructscale {name} config.yaml {sets}".strip()
        resources = {"entrypoint_num_cpus": spec.entrypoint_num_cpus, "entrypoint_num_gpus": spec.entrypoint_num_gpus}
        return _submit_when_ready(client, entrypoint, runtime_env, job_id, resources)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _submit_when_ready(client, entrypoint: str, runtime_env: dict, job_id: str | None, resources: dict) -> str:
    deadline = time.time() + AGENT_WAIT_S
    resources = {k: v for k, v in resources.items() if v is not None}
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=job_id, **resources)
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.time() > deadline:
                raise
            time.sleep(2)


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
    with _known_job(job_id, address):
        return str(_client(address).get_job_status(job_id).value)


def stop(job_id: str, address: str | None = None) -> bool:
    with _known_job(job_id, address):
        return _client(address).stop_job(job_id)


def logs(job_id: str, address: str | None = None) -> str:
    with _known_job(job_id, address):
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
