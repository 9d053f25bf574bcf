"""Ray runtime: connecting (an embedded local cluster by default, or an existing cluster by address),
refusing local outputs that a multi-node cluster would scatter, and running an actor's model on one
thread of its own."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import ray
from pydantic import Field

from instructscale import storage
from instructscale.config import ConfigError, StrictModel
from instructscale.progress import name_the_accelerator, quiet_library_handlers, setup_logging, verbose

log = logging.getLogger(__name__)
T = TypeVar("T")
SHUFFLE_INPUT_BATCH_BYTES = 16 * 2**20


class RayConfig(StrictModel):
    """How a stage reaches Ray. ``address: null`` starts an embedded single-node cluster."""

    address: str | None = Field(None, description='null, "auto", or "ray://host:10001"')
    num_cpus: int | None = Field(8, ge=1, description="logical CPUs of an embedded cluster (may exceed cores)")
    object_store_memory_gb: float | None = Field(None, gt=0)


def init_ray(cfg: RayConfig) -> None:
    """Start or join Ray once per process; inside a Ray job the job's cluster is used. Worker output
    reaches the console only with ``-v`` (it stays in Ray's log files either way)."""
    if not ray.is_initialized():
        loud = verbose()
        kwargs = {"log_to_driver": loud, "configure_logging": False}
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        if address:
            log.info("connecting to Ray at %s", address)
            ray.init(address=address, **kwargs)
        else:
            store = int(cfg.object_store_memory_gb * 2**30) if cfg.object_store_memory_gb else None
            if not loud:  # Ray announces its default (token auth for a new local cluster) on every start
                logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            # as many worker processes may start at once as there are logical CPUs (Ray's default, the
            # physical cores, makes the raylet warn about every busy stage on a small machine)
            # "local": a new cluster even when another one on this machine (a `ray start` head)
            # wrote its address where a bare ray.init() would look for one and join it
            ray.init(
                address="local",
                num_cpus=cfg.num_cpus,
                object_store_memory=store,
                include_dashboard=False,
                _system_config={"worker_maximum_startup_concurrency": cfg.num_cpus or os.cpu_count()},
                **kwargs,
            )
        name_the_accelerator()
    configure_ray_data()


def configure_ray_data() -> None:
    """Ray Data's settings for the datasets this process runs: a driver's, and those of a Ray
    actor that runs stages (DataContext is per process; an actor starts with Ray's defaults)."""
    from ray.data.context import DataContext, ShuffleStrategy

    ctx = DataContext.get_current()
    # Ray 2.60's Parquet reader (DataSourceV2) starts a pool of footer-reading actors for every
    # read_parquet: ~5 s per read on a 2-core machine against ~0.3 s for the V1 reader, which every
    # stage pass and every shuffle input here pays (benchmarks/ray_data_read.py)
    ctx.use_datasource_v2 = False
    # every groupby here passes num_partitions so that a reduce task holds one partition, and only the
    # hash shuffles honour it. The sort shuffle splits by sampled key ranges: its largest worker grew
    # 0.54 -> 1.94 GiB from 100k to 1M rows in `benchmarks/selection.py --scale` (this one: 0.55 -> 0.83
    # then, 0.43 -> 0.65 with the bounds below)
    ctx.shuffle_strategy = ShuffleStrategy.SHUFFLE_V2
    # a hash shuffle's map side coalesces up to this much input into one task. Ray's default, 1 GiB,
    # made one ~3 GiB task partition a 1M-row pool's dedup keys; at 64 MiB the largest map task still
    # grew 0.50 -> 0.84 GiB from 100k to 1M rows, at 16 MiB 0.37 -> 0.62 (benchmarks/selection.py --scale)
    ctx.shuffle_input_batch_bytes = SHUFFLE_INPUT_BATCH_BYTES
    ctx.enable_progress_bars = verbose()
    ctx.print_on_execution_start = verbose()
    quiet_library_handlers()


def alive_nodes() -> int:
    return sum(1 for n in ray.nodes() if n.get("Alive"))


def check_output_location(uri: str, field: str = "run_dir") -> None:
    """On a cluster of several nodes, a local output directory must be a shared mount: otherwise
    each node writes its part to its own disk and the next stage sees only some of them."""
    if not storage.is_local(uri) or os.environ.get(storage.ENV_SHARED_MOUNT) == "1":
        return
    if ray.is_initialized() and alive_nodes() > 1:
        raise ConfigError(
            f"{field}: {uri!r} is a local path, but this Ray cluster has {alive_nodes()} nodes: "
            "outputs written on other nodes would be lost. Use object storage (s3://, gs://, "
            "abfs://) or, if every node mounts this path (NFS, EFS, Filestore), set "
            "storage.shared_mount: true"
        )


def session_logs_dir() -> str | None:
    """The local directory of this Ray session's logs (an embedded cluster's workers write there)."""
    try:
        node = ray._private.worker.global_worker.node
        return node.get_logs_dir_path() if node is not None else None
    except AttributeError:
        return None


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
        return self.submit(fn, *args, **kwargs).result()

    def submit(self, fn: Callable[..., T], *args, **kwargs) -> Future[T]:
        return self._pool.submit(fn, *args, **kwargs)


@contextmanager
def run_logs(out: str) -> Iterator[str]:
    """Log to ``out/logs/instructscale.log`` for the duration of a command (a local scratch file,
    uploaded at the end, when ``out`` is an object store), then add the logs of an embedded Ray
    cluster's workers (Ray Data, vLLM, DeepSpeed, Train) under ``out/logs/ray``."""
    remote = not storage.is_local(out)
    local = storage.local_scratch("logs") if remote else storage.join(storage.normalize(out), "logs")
    path = setup_logging(verbose(), local)
    try:
        yield path
    finally:
        ray_logs = session_logs_dir()
        if ray_logs and os.path.isdir(ray_logs):
            shutil.copytree(
                ray_logs,
                os.path.join(local, "ray"),
                dirs_exist_ok=True,
                ignore=lambda d, names: [n for n in names if n.endswith((".sock", ".lock"))],
            )
        if remote:
            storage.copy_tree(local, storage.join(out, "logs"))
            shutil.rmtree(local, ignore_errors=True)
