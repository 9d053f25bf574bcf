"""Training metrics as one JSON-lines object (object stores have no append): rank 0 buffers the
records and rewrites the whole object now and then; a resumed run starts from what is there."""

from __future__ import annotations

import json
import time

from instructscale import storage

METRICS = "metrics.jsonl"


class MetricsLog:
    """Every logged step of a run, flushed as a whole object at most every ``every_s`` seconds
    (and whenever ``flush(force=True)``)."""

    def __init__(self, uri: str, every_s: float = 10.0):
        self.uri, self.every_s = uri, every_s
        text = storage.read_text(uri) if storage.is_file(uri) else ""
        self.lines = [line for line in text.splitlines() if line.strip()]
        self._flushed = time.time()

    def add(self, record: dict) -> None:
        self.lines.append(json.dumps(record))

    def flush(self, force: bool = False) -> None:
        if force or time.time() - self._flushed >= self.every_s:
            storage.write_text(self.uri, "\n".join(self.lines) + "\n")
            self._flushed = time.time()


def read_history(uri: str) -> list[dict]:
    """Logged metrics per step; a step logged again after a restart keeps its latest record."""
    by_step = {}
    text = storage.read_text(uri) if storage.is_file(uri) else ""
    for line in text.splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]
