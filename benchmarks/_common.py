"""Helpers shared by the benchmark scripts: peak memory sampling, tables and JSON results."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil


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


def write_result(name: str, payload: dict) -> Path:
    out = Path(os.environ.get("BENCH_OUT", Path(__file__).parent / "results")) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {out}")
    return out


def demo_workspace(prefix: str, rows: int, eval_rows: int) -> tuple[Path, str, str]:
    """A scratch directory with the demo's pool and held-out split, and an embedded Ray started:
    (work dir, pool URI, held-out URI)."""
    import ray

    from instructscale.demo.pool import DemoConfig, make_demo
    from instructscale.runtime import RayConfig, init_ray

    work = Path(tempfile.mkdtemp(prefix=prefix))
    init_ray(RayConfig(num_cpus=8))
    ray.data.DataContext.get_current().enable_progress_bars = False
    make_demo(DemoConfig(out_dir=str(work / "data"), rows=rows, eval_rows=eval_rows, shards=2, malformed_jsonl_rows=0))
    return work, str(work / "data" / "pool"), str(work / "data" / "eval")


def with_zero_score(ds):
    """Dedup input rows (a Ray dataset) with a constant score: these benchmarks time dedup, not the
    ranking. The function is defined here, so Ray ships it by value to workers that cannot import
    this module."""

    def zero(batch):
        import numpy as np
        import pyarrow as pa

        return batch.append_column("score", pa.array(np.zeros(batch.num_rows)))

    return ds.map_batches(zero, batch_format="pyarrow")
