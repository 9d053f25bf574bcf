"""Teacher engines that outlive a pass: one pool of Ray actors per stage run.

Each replica loads its backend once; every pass of the stage (the single pass of ``distill``, or
Self-Instruct's rounds and Evol-Instruct's rewrite, answer and judge passes) streams its input through
Ray Data into CPU-free feeding tasks (pooled workers: a pass starts no process), which hand each
batch to an idle replica. A replica turns a batch of rows into one committed output part and returns
a one-row record of what happened. A replica whose process dies is restarted by Ray and retries its
call (crash markers then isolate the row: ``backends/faults``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from instructscale import storage
from instructscale.backends.base import GenerationError, RowFault, SamplingConfig
from instructscale.backends.faults import Attempts, FaultGuard, is_row_fault
from instructscale.generate.config import GenerateConfig
from instructscale.lifecycle import commit_part, part_name
from instructscale.plugins import Backend, GenerationMode, secret_envs
from instructscale.process import Shipped, secret_values
from instructscale.runtime import ModelThread
from instructscale.schema import POOL_SCHEMA

log = logging.getLogger(__name__)
LOST_REPLICA_RETRIES = 8  # times a batch moves on when its replica is lost with its node
FEED_MEMORY = 2**20  # bytes a feeding task asks for (see EnginePool.run)

GEN_SCHEMA = pa.schema(
    [
        *list(POOL_SCHEMA),
        pa.field("parent_id", pa.string()),
        pa.field("sample_idx", pa.int32()),
        pa.field("gen_model", pa.string()),
        pa.field("gen_tokens", pa.int32()),
        pa.field("gen_logprob", pa.float32()),
        pa.field("finish_reason", pa.string()),
        pa.field("reject_reason", pa.string()),
    ]
)
ROWS = "rows"
ATTEMPTS = "_attempts"  # crash markers (backends/faults.py), removed when the stage publishes
FAULT_IDS = 20  # row ids a fault summary names


@dataclass(frozen=True)
class Job:
    """One pass as the replicas see it: where its parts go, which step of the mode it serves, and its
    decoding settings (None: the stage's)."""

    out_dir: str
    step: str = ""
    sampling: SamplingConfig | None = None


class Engine:
    """One replica: the backend on its own `ModelThread`, serving every pass of the stage.
    Rows the engine cannot serve are kept with a ``reject_reason``."""

    def __init__(self, shipped: Shipped[GenerateConfig], writer: tuple[str, str]):
        t0 = time.time()
        self.writer = writer  # (the run's writer file, this run's token): see ``_commit``
        self.cfg = shipped.load()
        self.thread = ModelThread()
        loading = self.thread.submit(self._build)
        # pyarrow imports pandas on its first conversion of Python rows (0.9 s on 2 cores): here,
        # while the engine loads, rather than in the first batch
        pa.Table.from_pylist([], schema=GEN_SCHEMA)
        self.backend = loading.result()
        self._modes: dict[tuple[str, str], GenerationMode] = {}
        self.load_s = time.time() - t0

    def ready(self) -> float:
        """Seconds this replica took to load."""
        return self.load_s

    def _build(self) -> Backend:
        return Backend.load(self.cfg.backend, self.cfg.model)

    def _rebuild(self) -> None:
        """After an engine exception: keep the engine if it still answers a probe, else build it anew."""
        probe = SamplingConfig(max_tokens=1, temperature=0.0, seed=0)
        try:
            self.thread.run(self.backend.generate, [[{"role": "user", "content": "Hi"}]], probe)
            return
        except Exception:  # the engine is unusable: rebuild it
            log.warning("generate: the engine failed a probe after an error; rebuilding it")
        self.backend = None
        gc.collect()
        self.backend = self.thread.run(self._build)

    def _mode(self, job: Job) -> GenerationMode:
        sampling = job.sampling or self.cfg.sampling
        key = (job.step, sampling.model_dump_json())
        if key not in self._modes:
            options = self.cfg.model_copy(update={"sampling": sampling, "out_dir": job.out_dir})
            self._modes[key] = GenerationMode.registry.build(self.cfg.mode, options, job.step)
        return self._modes[key]

    def process(self, batch: pa.Table, job: Job) -> pa.Table:
        """Answer ``batch``, commit its output part under ``job.out_dir``; a one-row record."""
        t0 = time.time()
        rows = batch.to_pylist()
        out_rows, engine_s = self._answer(rows, job)
        self._commit(job, part_name([r["id"] for r in rows]), pa.Table.from_pylist(out_rows, schema=GEN_SCHEMA))
        reasons = [r["reject_reason"] for r in out_rows if r["reject_reason"]]
        faults = [r["parent_id"] for r in out_rows if is_row_fault(r["reject_reason"])]
        return pa.table(
            {
                "inputs": [len(rows)],
                "rows": [len(out_rows) - len(reasons)],
                "tokens": [sum(r["gen_tokens"] or 0 for r in out_rows)],
                "rejected": [json.dumps(Counter(reason.split(":", 1)[0] for reason in reasons))],
                "faults": [len(faults)],
                "fault_ids": [json.dumps(faults[:FAULT_IDS])],
                "engine_s": [engine_s],
                "busy_s": [time.time() - t0],
            }
        )

    def _answer(self, rows: list[dict], job: Job) -> tuple[list[dict], float]:
        """Output rows for ``rows`` (the mode's, or the row with the reason it could not be served),
        and the seconds spent inside engine calls."""
        mode, sampling = self._mode(job), job.sampling or self.cfg.sampling
        ask = [r for r in rows if mode.needs_teacher(r)]
        prompts = mode.prompts(ask)
        reasons = self.thread.run(self.backend.check, prompts, sampling) if ask else []
        served = [i for i, reason in enumerate(reasons) if reason is None]
        guard = FaultGuard(
            lambda batch: self.thread.run(self.backend.generate, batch, sampling),
            self._rebuild,
            Attempts(storage.join(job.out_dir, ATTEMPTS)),
            self.cfg.max_same_row_errors,
        )
        t0 = time.time()
        results = dict(zip(served, guard.run([ask[i]["id"] for i in served], [prompts[i] for i in served])))
        engine_s = time.time() - t0
        asked = {r["id"] for r in ask}
        out = [mode.output_row(r, None, 0) for r in rows if r["id"] not in asked]
        for i, row in enumerate(ask):
            result = results.get(i, RowFault(reasons[i] or ""))
            if isinstance(result, RowFault):
                out.append({**mode.output_row(row, None, 0), "reject_reason": result.reason})
            else:
                out += mode.outputs(row, result)
        return out, engine_s

    def _commit(self, job: Job, name: str, table: pa.Table) -> None:
        """Commit a part, unless a newer run owns the output (a replica that outlived its killed
        driver must not add rows the rerun is already generating: its parts would duplicate them)."""
        uri, token = self.writer
        if storage.read_json(uri)["token"] != token:
            raise GenerationError(f"generate: a newer run owns {self.cfg.out_dir}; this replica stops")
        commit_part(storage.join(job.out_dir, ROWS), name, table, **part_stats(table))


def part_stats(table: pa.Table) -> dict:
    """What a part's commit record says about its rows, so that totals never reread the rows."""
    reasons = [r for r in table["reject_reason"].to_pylist() if r]
    return {
        "inputs": len(pc.unique(table["parent_id"])),
        "usable": table.num_rows - len(reasons),
        "rejected": dict(Counter(r.split(":", 1)[0] for r in reasons)),
        "faults": sum(is_row_fault(r) for r in reasons),
    }


@ray.remote(num_cpus=0)
class _Dispatcher:
    """Hands idle replicas to the feeding tasks of every pass, first free first. A replica joins as
    soon as it has loaded, so the first pass starts with the first replica (its dataset starts up
    while the others load). A replica that fails to load, or too few loaded in time, fail every
    ``acquire`` with the reason."""

    def __init__(self):
        self.free: asyncio.Queue[int] = asyncio.Queue()
        self.failed = asyncio.Event()
        self.failure = ""

    async def start(self, engines: list, min_replicas: int, timeout_s: float, asks: str) -> list[float]:
        """Wait for the replicas to load; the load seconds of those that did within ``timeout_s``."""

        async def load(i: int) -> float:
            seconds = await engines[i].ready.remote()
            self.free.put_nowait(i)
            return seconds

        tasks = [asyncio.ensure_future(load(i)) for i in range(len(engines))]
        await asyncio.wait(tasks, timeout=timeout_s, return_when=asyncio.FIRST_EXCEPTION)
        errors = [t.exception() for t in tasks if t.done() and t.exception()]
        loaded = [t.result() for t in tasks if t.done() and not t.exception()]
        for i, task in enumerate(tasks):
            if not task.done():
                task.cancel()
                ray.kill(engines[i])
        if errors:  # the replica's constructor (the engine's load) raised
            self._fail(f"generate: a teacher replica failed to start: {_last_line(errors[0])}")
        elif len(loaded) < min_replicas:
            self._fail(
                f"generate: {len(loaded)} of {len(engines)} teacher replicas started within {timeout_s:.0f} s "
                f"(min_replicas {min_replicas}); each asks for {asks}: does the cluster have (or can it add) "
                "nodes that size?"
            )
        return loaded

    def _fail(self, message: str) -> None:
        self.failure = message
        self.failed.set()

    async def acquire(self) -> int:
        getting, failing = asyncio.ensure_future(self.free.get()), asyncio.ensure_future(self.failed.wait())
        await asyncio.wait({getting, failing}, return_when=asyncio.FIRST_COMPLETED)
        if self.failed.is_set():
            getting.cancel()
            raise GenerationError(self.failure)
        failing.cancel()
        return getting.result()

    async def release(self, replica: int) -> None:
        self.free.put_nowait(replica)


def _feed(batch: pa.Table, engines: list, dispatcher, job: Job) -> pa.Table:
    """A pass's Ray Data task (no CPU of its own, a pooled worker): one batch to an idle
    replica. A replica lost with its node (Ray restarts it elsewhere) leaves the batch to the next
    free one; the part it may have committed has the same name, so nothing is duplicated."""
    lost = 0
    while True:
        replica = ray.get(dispatcher.acquire.remote())
        try:
            return ray.get(engines[replica].process.remote(batch, job))
        except ray.exceptions.RayActorError as err:  # died, or unreachable while it restarts
            lost += 1
            if lost > LOST_REPLICA_RETRIES:
                raise
            log.warning("generate: replica %d lost (%s); the batch goes to another", replica, type(err).__name__)
            time.sleep(2)
        finally:
            dispatcher.release.remote(replica)


class EnginePool:
    """The stage's replicas: started once, fed by every pass as they finish loading, killed at the end."""

    def __init__(self, cfg: GenerateConfig, writer: tuple[str, str]):
        self.cfg, replicas = cfg, cfg.replicas
        # API keys travel with the shipped config (never in the config, a log or the runtime env)
        shipped = Shipped.of(cfg, secret_values(secret_envs(cfg)))
        actor = ray.remote(Engine).options(**replicas.ray_options(), max_restarts=-1, max_task_retries=-1)
        self.engines = [actor.remote(shipped, writer) for _ in range(replicas.max_replicas)]
        # on the driver's node: a lost worker node must not take the queue of free replicas with it
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.dispatcher = _Dispatcher.options(scheduling_strategy=here).remote()
        asks = f"{replicas.num_cpus} CPUs, {replicas.num_gpus} GPUs and {replicas.resources or 'no custom resources'}"
        self.starting = self.dispatcher.start.remote(
            self.engines, replicas.min_replicas, replicas.start_timeout_s, asks
        )

    def load_s(self) -> list[float]:
        """The load seconds of the replicas that have started (none yet: the start is still waiting)."""
        if not ray.wait([self.starting], timeout=0)[0]:
            return []
        loaded = ray.get(self.starting)
        if 0 < len(loaded) < len(self.engines):
            log.warning("generate: %d of %d replicas started; ran on those", len(loaded), len(self.engines))
        return loaded

    def run(self, ds: ray.data.Dataset, job: Job) -> Iterator[dict]:
        """One pass: the records of ``ds``'s batches, as the replicas finish them."""
        results = ds.map_batches(
            _feed,
            fn_kwargs={"engines": self.engines, "dispatcher": self.dispatcher, "job": job},
            batch_size=self.cfg.replicas.batch_size,
            batch_format="pyarrow",
            compute=ray.data.TaskPoolStrategy(size=len(self.engines)),
            num_cpus=0,
            # Ray Data's resource allocator holds back an operator that asks for no resources at
            # all: 1.1-1.3 s before every pass's first batch on 2 cores, 0.2 s with this token ask
            memory=FEED_MEMORY,
        )
        return results.iter_rows()

    def close(self) -> None:
        for actor in (*self.engines, self.dispatcher):
            ray.kill(actor)


def _last_line(err: BaseException) -> str:
    """The last line of a remote error's message: the original exception's type and message."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
