"""What every benchmark shares: its arguments, a scratch workspace, an embedded Ray, timed rows, a
printed table and the JSON it writes to ``benchmarks/results/NAME.json`` (``$BENCH_OUT`` elsewhere);
plus peak-memory samplers. A benchmark file is then its measurement only::

    bench = Bench("pool", __doc__, lambda p: p.add_argument("--rows", type=int, default=1000))
    bench.ray()
    with bench.timed(method="ingest", rows=bench.args.rows):
        ...
    bench.table(["method", "rows", "seconds"])
    bench.write(ratio=...)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil


class Bench:
    """One run of a benchmark: parsed arguments, a scratch workspace and the result rows."""

    def __init__(self, name: str, doc: str, arguments: Callable[[argparse.ArgumentParser], None] | None = None):
        parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        if arguments:
            arguments(parser)
        self.name, self.args = name, parser.parse_args()
        self.work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.results: list[dict] = []

    def ray(self, num_cpus: int = 8) -> None:
        """Start (or join) the embedded Ray cluster, quietly."""
        import ray

        from instructscale.runtime import RayConfig, init_ray

        init_ray(RayConfig(num_cpus=num_cpus))
        ray.data.DataContext.get_current().enable_progress_bars = False

    def demo(self, rows: int, eval_rows: int = 0, shards: int = 2, folder: str = "data") -> tuple[str, str]:
        """The demo pool and held-out split in ``folder`` of the workspace: (pool URI, held-out URI)."""
        from instructscale.demo.pool import DemoConfig, make_demo

        data = self.work / folder
        make_demo(DemoConfig(out_dir=str(data), rows=rows, eval_rows=eval_rows, shards=shards, malformed_jsonl_rows=0))
        return str(data / "pool"), str(data / "eval")

    @contextlib.contextmanager
    def timed(self, **row) -> Iterator[dict]:
        """A result row: the block fills it in, its wall seconds are added, and it joins the results."""
        t0 = time.time()
        yield row
        row.setdefault("seconds", time.time() - t0)
        self.results.append(row)

    def table(self, columns: list[str], rows: list[dict] | None = None) -> None:
        print_table(self.results if rows is None else rows, columns)

    def write(self, name: str | None = None, **payload) -> Path:
        """``{"args", "results", **payload}`` as ``results/NAME.json``."""
        return write_result(name or self.name, {"args": vars(self.args), "results": self.results, **payload})


class _Sampler:
    """Calls ``_sample`` every ``interval`` seconds on a thread while the ``with`` block runs."""

    def __init__(self, interval: float):
        self.interval, self._stop = interval, threading.Event()

    def _sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self):
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class PeakRSS(_Sampler):
    """Samples the summed PSS of this process and all its descendants (Ray workers included).

    PSS splits shared pages (Ray's object store, shared libraries) between the processes that map
    them, so the sum is the tree's real footprint rather than an RSS double count.
    """

    def __init__(self, interval: float = 0.2):
        super().__init__(interval)
        self.peak = 0

    def now(self) -> int:
        """The summed PSS at this moment, in bytes."""
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_full_info().pss
        return total

    def _sample(self) -> None:
        self.peak = max(self.peak, self.now())

    @property
    def gib(self) -> float:
        return self.peak / 2**30


class PeakProcessRSS(_Sampler):
    """Peak RSS of this process, and of the largest Ray worker process (``ray::`` in its title), with
    the peak of each kind of worker (its title). ``worker_private`` leaves out a worker's shared pages
    (RSS minus psutil's ``shared``): those of Ray's object store that the worker has read or written
    stay in its RSS, capped by the store's size, not by anything the worker holds."""

    def __init__(self, interval: float = 0.25):
        super().__init__(interval)
        self.driver, self.worker, self.worker_private, self.by_title = 0, 0, 0, {}

    def _sample(self) -> None:
        me = psutil.Process()
        self.driver = max(self.driver, me.memory_info().rss)
        for p in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                title = p.cmdline()[0] if p.cmdline() else ""
                if title.startswith("ray::"):
                    info = p.memory_info()
                    self.worker = max(self.worker, info.rss)
                    self.worker_private = max(self.worker_private, info.rss - info.shared)
                    self.by_title[title] = max(self.by_title.get(title, 0), info.rss)


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def result_path(file: str) -> Path:
    """Where a result file goes: benchmarks/results/, or ``$BENCH_OUT``."""
    out = Path(os.environ.get("BENCH_OUT", Path(__file__).parent / "results")) / file
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def write_result(name: str, payload: dict) -> Path:
    out = result_path(f"{name}.json")
    out.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {out}")
    return out


def with_zero_score(ds):
    """Dedup input rows (a Ray dataset) with a constant score: these benchmarks time dedup, not the
    ranking. The function is defined here, so Ray ships it by value to workers that cannot import
    this module."""

    def zero(batch):
        import numpy as np
        import pyarrow as pa

        return batch.append_column("score", pa.array(np.zeros(batch.num_rows)))

    return ds.map_batches(zero, batch_format="pyarrow")
