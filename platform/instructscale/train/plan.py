"""The training plan: the curriculum's schedule written out as one sorted stream of rows per worker.

Built once per run by Ray tasks, never on the driver. Pass 1 reads each data file's difficulties;
the curriculum turns them into a (steps, global_batch) schedule of row positions. Pass 2 reads each
file's text again and writes, for every worker, the scheduled copies of its rows sorted by (step,
position): one sorted run per chunk of a file. A worker merges its runs lazily while it trains, so
its memory follows the number of runs, never the pool, and a restarted worker starts the merge at
the step it resumes from.

Layout under ``<out_dir>/plan/``: ``rank-0000/run-00000-00000.parquet``, ...; ``_plan.json``
(rows, steps, the settings it was built for), written last, marks it complete.
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from instructscale import storage
from instructscale.lifecycle import part_files
from instructscale.plugins import Curriculum
from instructscale.process import Shipped
from instructscale.train.config import TrainConfig
from instructscale.train.curriculum import build_schedule
from instructscale.train.data import FILTER_COLUMNS, TEXT_COLUMNS, difficulty_of, usable_rows

PLAN, DONE = "plan", "_plan.json"
SOURCE = "source"  # the column naming a row's source (a mixture's)
RUN_ROWS = 65_536  # data rows per sorted run: a run's scheduled copies are sorted in one task's memory
ROW_GROUP = 512  # rows a worker decodes at a time from each run


def _settings(cfg: TrainConfig) -> dict:
    """What the plan depends on: a plan built for other settings is rebuilt."""
    keys = ("data", "curriculum", "global_batch", "epochs", "seed", "max_steps", "max_tokens", "max_length")
    return {**cfg.model_dump(mode="json", include=set(keys)), "workers": cfg.scaling.num_workers}


def _chunks(uri: str, columns: list[str], rows: int = RUN_ROWS) -> Iterator[pa.Table]:
    """The usable rows of one Parquet file, ``rows`` stored rows at a time (``columns`` that exist)."""
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        names = parquet.schema_arrow.names
        wanted = sorted({c for c in (*columns, *FILTER_COLUMNS) if c in names})
        for batch in parquet.iter_batches(batch_size=rows, columns=wanted):
            yield usable_rows(pa.Table.from_batches([batch]))


def _difficulty(table: pa.Table, key: str) -> np.ndarray:
    column = table[key] if key in table.column_names else None
    if (
        column is not None
        and column.null_count == 0
        and (pa.types.is_floating(column.type) or pa.types.is_integer(column.type))
    ):
        return column.to_numpy().astype(float)
    return np.array([difficulty_of(r, key) for r in table.to_pylist()], dtype=float)


def _row_tokens(table: pa.Table, cfg: TrainConfig) -> np.ndarray:
    """Each row's training tokens (prompt and response, truncated), as the workers tokenize it."""
    from instructscale.tokens import load_tokenizer, row_tokens

    return np.array(row_tokens(table.to_pylist(), load_tokenizer(cfg.model), cfg.max_length, cfg.train_reasoning))


@ray.remote(num_returns=3)
def _difficulties(
    uri: str, key: str | None, shipped: Shipped[TrainConfig] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pass 1 for one file: each usable row's difficulty (zeros when ``key`` is None), with
    ``shipped`` (a token budget) its training tokens (else zeros), and its source."""
    cfg = shipped.load() if shipped else None
    columns = ["id", "metadata", key] if key else []
    difficulty, tokens, sources = [np.zeros(0)], [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=object)]
    for t in _chunks(uri, [*columns, SOURCE, *(TEXT_COLUMNS if cfg else ())]):
        difficulty.append(_difficulty(t, key) if key else np.zeros(t.num_rows))
        tokens.append(_row_tokens(t, cfg) if cfg else np.zeros(t.num_rows, dtype=np.int64))
        sources.append(np.asarray(t[SOURCE].to_pylist() if SOURCE in t.column_names else [""] * t.num_rows, object))
    return np.concatenate(difficulty), np.concatenate(tokens), np.concatenate(sources)


def source_shares(sources: np.ndarray, schedule: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The sources' names and each step's share of each (steps x sources), from the rows' sources
    and the schedule's row positions."""
    names, codes = np.unique(sources.astype(str), return_inverse=True)
    counts = np.stack([np.bincount(step, minlength=len(names)) for step in codes[schedule]]) if len(schedule) else None
    shares = counts / schedule.shape[1] if counts is not None else np.zeros((0, len(names)))
    return names.tolist(), shares


def budget_steps(cfg: TrainConfig, tokens: np.ndarray) -> tuple[int | None, int]:
    """(max_steps, epochs) the schedule is built with: with a token budget, the steps whose global
    batches of mean-length rows hold ``max_tokens``, and the epochs they take."""
    if not cfg.max_tokens:
        return cfg.max_steps, cfg.epochs
    if len(tokens) < cfg.global_batch:
        raise ValueError(f"training set has {len(tokens)} rows, fewer than one global batch ({cfg.global_batch})")
    steps = max(1, round(cfg.max_tokens / (cfg.global_batch * float(tokens.mean()))))
    steps = min(steps, cfg.max_steps or steps)
    return steps, -(-steps // (len(tokens) // cfg.global_batch))


@ray.remote
def _write_runs(
    uri: str,
    index: int,
    offset: int,
    positions: np.ndarray,
    slots: np.ndarray,
    step_means: np.ndarray,
    step_sources: list[str],
    global_batch: int,
    world: int,
    plan: str,
    run_rows: int,
) -> int:
    """Pass 2 for one file (rows ``offset`` on): every worker's scheduled copies of its rows, one
    sorted run per chunk. ``positions`` is the schedule's row positions sorted, ``slots`` where each
    sits in the flattened schedule. Returns the copies written."""
    written, first = 0, offset
    for k, table in enumerate(_chunks(uri, TEXT_COLUMNS, run_rows)):
        lo, hi = np.searchsorted(positions, [first, first + table.num_rows])
        step, within = np.divmod(slots[lo:hi], global_batch)
        copies = (
            table.select([c for c in TEXT_COLUMNS if c in table.column_names])
            .take(pa.array(positions[lo:hi] - first))
            .append_column("step", pa.array(step.astype(np.int32)))
            .append_column("pos", pa.array((within // world).astype(np.int32)))
            .append_column("difficulty_mean", pa.array(step_means[step]))
            .append_column("source_share", pa.array([step_sources[i] for i in step], pa.string()))
        )
        rank = within % world
        for r in range(world):
            mine = copies.filter(pa.array(rank == r))
            if mine.num_rows:
                run = storage.join(plan, f"rank-{r:04d}", f"run-{index:05d}-{k:05d}.parquet")
                storage.write_parquet(run, mine.sort_by([("step", "ascending"), ("pos", "ascending")]), ROW_GROUP)
        written, first = written + copies.num_rows, first + table.num_rows
    return written


# outside any placement group: a Tune trial's driver holds a bundle of trial_cpus (0.5), which a
# task it starts would otherwise have to fit into
@ray.remote(scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))
def _build(shipped: Shipped[TrainConfig], plan: str, run_rows: int) -> dict:
    """Both passes, as Ray tasks per data file; returns _plan.json's content, or {"error": ...} for
    data that cannot make the schedule (a row without difficulty, too few rows)."""
    cfg = shipped.load()
    files = part_files(cfg.data)
    key = cfg.curriculum.difficulty_key if Curriculum.registry.get(cfg.curriculum.kind).needs_difficulty else None
    budget = shipped if cfg.max_tokens else None
    try:
        passes = [_difficulties.remote(f, key, budget) for f in files]
        per_file = ray.get([d for d, _, _ in passes])
        difficulty = np.concatenate(per_file) if per_file else np.zeros(0)
        tokens = np.concatenate(ray.get([t for _, t, _ in passes])) if passes else np.zeros(0, dtype=np.int64)
        sources = np.concatenate(ray.get([s for _, _, s in passes])) if passes else np.zeros(0, dtype=object)
        max_steps, epochs = budget_steps(cfg, tokens)
        schedule = build_schedule(
            difficulty, cfg.curriculum, global_batch=cfg.global_batch, epochs=epochs, seed=cfg.seed, max_steps=max_steps
        )
    except ValueError as err:  # a task's error arrives wrapped: report the row's own message
        return {"error": str(getattr(err, "cause", None) or err)}
    flat = schedule.ravel()
    slots = np.argsort(flat, kind="stable")
    names, shares = source_shares(sources, schedule)
    mixed = len(names) > 1  # one source: nothing to interleave
    step_sources = [json.dumps(dict(zip(names, map(float, row)))) if mixed else None for row in shares]
    shared = [ray.put(a) for a in (flat[slots], slots, difficulty[schedule].mean(axis=1), step_sources)]
    offsets = np.cumsum([0] + [len(d) for d in per_file])
    world = cfg.scaling.num_workers
    tasks = [
        _write_runs.remote(f, i, int(offsets[i]), *shared, cfg.global_batch, world, plan, run_rows)
        for i, f in enumerate(files)
    ]
    written = sum(ray.get(tasks))
    if written != flat.size:
        raise RuntimeError(f"train plan: wrote {written} scheduled rows of {flat.size}; did {cfg.data} change?")
    info = {"rows": len(difficulty), "steps": len(schedule), "settings": _settings(cfg)}
    if cfg.max_tokens:
        info["tokens"] = int(tokens[schedule].sum())
    if mixed:
        info["source_share"] = {n: round(float(v), 4) for n, v in zip(names, shares.mean(axis=0))}
    storage.write_json(storage.join(plan, DONE), info)
    return info


def build_plan(cfg: TrainConfig, run_rows: int = RUN_ROWS) -> dict:
    """The plan under ``out_dir/plan`` (reused when complete and built for these settings):
    ``{"rows", "steps", "settings"}``; ``run_rows`` data rows make one sorted run. Raises
    ValueError when the data cannot fill the schedule."""
    plan = storage.join(cfg.out_dir, PLAN)
    done = storage.read_json_if_exists(storage.join(plan, DONE))
    if done and done.get("settings") == _settings(cfg):
        return done
    storage.remove(plan)
    info = ray.get(_build.remote(Shipped.of(cfg), plan, run_rows))
    if "error" in info:
        raise ValueError(info["error"])
    return info


def _run_rows(uri: str, first: int) -> Iterator[dict]:
    """The rows of one sorted run from step ``first`` on, a row group at a time."""
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        leaves = parquet.schema  # statistics are per leaf column: nested columns come first
        step_column = next(j for j in range(len(leaves)) if leaves.column(j).path == "step")
        for g in range(parquet.num_row_groups):
            stats = parquet.metadata.row_group(g).column(step_column).statistics
            if stats is not None and stats.has_min_max and stats.max < first:
                continue
            group = parquet.read_row_group(g)
            yield from group.filter(pc.greater_equal(group["step"], first)).to_pylist()


def use_system_allocator() -> None:
    """Arrow's system allocator for this (training worker) process. Reading a plan row group at a
    time for hours, Arrow's default mimalloc pool kept freed pages: a worker's RSS grew by about
    0.5 KB per row read (46 MB per 100k rows), while with the system allocator it stays flat."""
    pa.set_memory_pool(pa.system_memory_pool())


def worker_steps(cfg: TrainConfig, rank: int, first: int, steps: int) -> Iterator[tuple[int, dict, list[dict]]]:
    """(step, the global batch's ``difficulty_mean`` and (several sources) ``source_share``, this
    worker's rows in schedule order) for steps ``first`` to ``steps - 1`` (0-based), read lazily
    from the worker's sorted runs."""
    world = cfg.scaling.num_workers
    share = len(range(rank, cfg.global_batch, world))
    runs = storage.list_files(storage.join(cfg.out_dir, PLAN, f"rank-{rank:04d}"), suffix=".parquet")
    merged = heapq.merge(*(_run_rows(u, first) for u in runs), key=lambda r: (r["step"], r["pos"]))
    expected = first
    for step, group in itertools.groupby(merged, key=lambda r: r["step"]):
        rows = list(group)
        if step != expected or len(rows) != share:
            raise RuntimeError(f"train plan: step {step} has {len(rows)} of worker {rank}'s {share} rows")
        batch = {"difficulty_mean": rows[0]["difficulty_mean"]}
        if sources := rows[0].get("source_share"):
            batch["source_share"] = json.loads(sources)
        yield step, batch, rows
        expected += 1
    if expected < steps:
        raise RuntimeError(f"train plan: worker {rank}'s rows end at step {expected} of {steps}")
