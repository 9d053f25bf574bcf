"""Demo instruction pool: verifiable tasks plus planted noise, streamed to Parquet shards.

Rows are generated shard by shard in Ray tasks and written in bounded chunks, so a pool of
millions of rows never sits in memory. The planted noise is labelled in ``metadata.noise``
(ground truth for measuring selection; no stage may read it to make decisions).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import deque
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from pydantic import Field

from instructscale import storage
from instructscale.config import StrictModel
from instructscale.demo.general import iter_general_rows
from instructscale.demo.tasks import MAX_DIFFICULTY, TASKS
from instructscale.lifecycle import StageConfig, StageRun, commit_part, record_commit
from instructscale.plugins import register
from instructscale.pools.ingest import PoolInput
from instructscale.process import Shipped
from instructscale.schema import POOL_SCHEMA, encode_metadata
from instructscale.stage import Pipe, Stage


class NoiseConfig(StrictModel):
    """Fractions of pool rows that are deliberately bad, by kind."""

    wrong_answer: float = Field(0.05, ge=0, le=1)
    duplicate: float = Field(0.05, ge=0, le=1)
    near_duplicate: float = Field(0.05, ge=0, le=1)
    empty_output: float = Field(0.01, ge=0, le=1)
    overlong_output: float = Field(0.01, ge=0, le=1)


class DemoOptions(StrictModel):
    """The demo pool, its eval split and a malformed side file; the `demo` section of a pipeline."""

    rows: int = Field(20_000, ge=1)
    shards: int = Field(4, ge=1)
    eval_rows: int = Field(400, ge=0)
    seed: int = 0
    tasks: list[str] = Field(default_factory=lambda: sorted(TASKS))
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    malformed_jsonl_rows: int = Field(200, ge=0, description="rows of a side JSONL file, ~1/4 malformed")
    general_rows: int = Field(
        0, ge=0, le=300, description="general instructions without answers (source `demo/general`), for a mixture"
    )
    chunk_rows: int = Field(8192, ge=1)


class DemoConfig(DemoOptions, StageConfig):
    """`instructscale make-demo`: out_dir/pool (Parquet shards), out_dir/eval, out_dir/side.jsonl."""

    out_dir: str = Field(description="where to write the demo data (a path or URI)")


EVAL_MODULUS = 16  # a row is held out iff hash(instruction, input) % 16 == 0: disjoint by construction


def _is_eval(instruction: str, inp: str) -> bool:
    digest = hashlib.blake2b(f"{instruction}\x1f{inp}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % EVAL_MODULUS == 0


def _clean_row(rng: random.Random, tasks: list[str], want_eval: bool) -> tuple[str, str, str, str, int]:
    while True:
        task = rng.choice(tasks)
        difficulty = rng.randint(1, MAX_DIFFICULTY)
        instruction, inp, answer = TASKS[task](rng, difficulty)
        if _is_eval(instruction, inp) == want_eval:
            return task, instruction, inp, answer, difficulty


def _near_duplicate(rng: random.Random, instruction: str) -> str:
    edits = [
        lambda s: "Please " + s[0].lower() + s[1:],
        lambda s: s.rstrip(".?") + "!",
        lambda s: s.upper(),
        lambda s: s.replace(" ", "  ", 1),
    ]
    return rng.choice(edits)(instruction)


def _wrong(rng: random.Random, answer: str) -> str:
    digits = [i for i, ch in enumerate(answer) if ch.isdigit()]
    if digits:
        i = rng.choice(digits)
        return answer[:i] + str((int(answer[i]) + rng.randint(1, 9)) % 10) + answer[i + 1 :]
    return answer[::-1] + "x"


def iter_pool_rows(cfg: DemoConfig, shard: int, n_rows: int) -> Iterator[dict]:
    """Rows of one pool shard, deterministic in (seed, shard)."""
    rng = random.Random(f"{cfg.seed}:{shard}")
    recent: deque[dict] = deque(maxlen=256)
    noise = cfg.noise
    thresholds = [
        ("duplicate", noise.duplicate),
        ("near_duplicate", noise.near_duplicate),
        ("wrong_answer", noise.wrong_answer),
        ("empty_output", noise.empty_output),
        ("overlong_output", noise.overlong_output),
    ]
    for i in range(n_rows):
        row_id = f"demo-{shard:04d}-{i:08d}"
        u, kind, acc = rng.random(), None, 0.0
        for name, p in thresholds:
            acc += p
            if u < acc:
                kind = name
                break
        if kind in ("duplicate", "near_duplicate") and recent:
            src = rng.choice(recent)
            instruction = src["instruction"]
            if kind == "near_duplicate":
                instruction = _near_duplicate(rng, instruction)
            meta = dict(json.loads(src["metadata"]), noise=kind, duplicate_of=src["id"])
            row = dict(src, id=row_id, instruction=instruction, metadata=encode_metadata(meta))
            yield row
            continue
        task, instruction, inp, answer, difficulty = _clean_row(rng, cfg.tasks, want_eval=False)
        output = answer
        if kind == "wrong_answer":
            output = _wrong(rng, answer)
        elif kind == "empty_output":
            output = ""
        elif kind == "overlong_output":
            output = " ".join([answer] * 600)
        elif kind in ("duplicate", "near_duplicate"):
            kind = None  # nothing to copy yet at the start of a shard
        meta = {"task": task, "difficulty": difficulty, "answer": answer, "noise": kind}
        row = {
            "id": row_id,
            "instruction": instruction,
            "input": inp,
            "output": output,
            "messages": None,
            "source": f"demo/{task}",
            "metadata": encode_metadata(meta),
        }
        if kind is None:
            recent.append(row)
        yield row


def iter_eval_rows(cfg: DemoConfig) -> Iterator[dict]:
    """Clean held-out rows; disjoint from the pool by the hash rule in `_is_eval`."""
    rng = random.Random(f"{cfg.seed}:eval")
    for i in range(cfg.eval_rows):
        task, instruction, inp, answer, difficulty = _clean_row(rng, cfg.tasks, want_eval=True)
        meta = {"task": task, "difficulty": difficulty, "answer": answer, "noise": None}
        yield {
            "id": f"eval-{i:06d}",
            "instruction": instruction,
            "input": inp,
            "output": answer,
            "messages": None,
            "source": f"demo/{task}",
            "metadata": encode_metadata(meta),
        }


def _write_rows(uri: str, rows: Iterator[dict], chunk_rows: int) -> int:
    """Stream rows into one Parquet file in chunks (bounded memory); returns the row count."""
    n = 0
    with storage.open_output(uri) as f, pq.ParquetWriter(f, POOL_SCHEMA) as writer:
        chunk: list[dict] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= chunk_rows:
                writer.write_table(pa.Table.from_pylist(chunk, schema=POOL_SCHEMA))
                n += len(chunk)
                chunk = []
        if chunk:
            writer.write_table(pa.Table.from_pylist(chunk, schema=POOL_SCHEMA))
            n += len(chunk)
    return n


@ray.remote(num_cpus=1)
def _write_shard(shipped: Shipped[DemoConfig], shard: int, n_rows: int) -> int:
    cfg = shipped.load()
    dataset, name = storage.join(cfg.out_dir, "pool"), f"part-{shard:05d}.parquet"
    n = _write_rows(storage.join(dataset, name), iter_pool_rows(cfg, shard, n_rows), cfg.chunk_rows)
    record_commit(dataset, name, n)
    return n


_MALFORMED = [
    ("invalid_json", lambda i: '{"instruction": "Compute 1 + 1.", "output": "2"'),
    ("missing_field", lambda i: json.dumps({"input": "", "output": "2"})),
    ("wrong_type", lambda i: json.dumps({"instruction": "Compute 2 + 2.", "output": 4})),
    ("oversize", lambda i: json.dumps({"instruction": "x" * 40_000, "output": "y"})),
    ("empty_field", lambda i: json.dumps({"instruction": "   ", "output": "3"})),
]


def write_side_jsonl(uri: str, n_rows: int, seed: int) -> dict[str, int]:
    """An Alpaca-style JSONL file where every 4th line is malformed; returns the planted counts."""
    rng = random.Random(f"{seed}:side")
    planted: dict[str, int] = {}
    lines = []
    for i in range(n_rows):
        if i % 4 == 3:
            kind, make = _MALFORMED[(i // 4) % len(_MALFORMED)]
            planted[kind] = planted.get(kind, 0) + 1
            lines.append(make(i))
        else:
            _task, instruction, inp, answer, _difficulty = _clean_row(rng, sorted(TASKS), want_eval=False)
            lines.append(json.dumps({"instruction": instruction, "input": inp, "output": answer}))
    storage.write_text(uri, "\n".join(lines) + "\n")
    return planted


@register("demo")
class Demo(Stage[DemoConfig]):
    """The demo pool's shards, its eval split and the side JSONL; in a pipeline, the ingest stage's
    inputs and the held-out rows."""

    Config = DemoConfig
    Options = DemoOptions
    summary = "generate the demo instruction pool, eval split and a malformed side file"
    cli_name = "make-demo"
    folder = "data"
    rebuilt = ("pool", "eval", "general")
    published = ("pool", "eval", "general")

    def run(self, run: StageRun) -> dict:
        cfg = self.cfg
        per_shard = [cfg.rows // cfg.shards + (1 if s < cfg.rows % cfg.shards else 0) for s in range(cfg.shards)]
        refs = [_write_shard.remote(Shipped.of(cfg), s, n) for s, n in enumerate(per_shard) if n]
        written = sum(ray.get(refs))
        eval_rows = pa.Table.from_pylist(list(iter_eval_rows(cfg)), schema=POOL_SCHEMA)
        commit_part(run.uri("eval"), "part-00000.parquet", eval_rows)
        if cfg.general_rows:
            general = pa.Table.from_pylist(list(iter_general_rows(cfg.general_rows, cfg.seed)), schema=POOL_SCHEMA)
            commit_part(run.uri("general"), "part-00000.parquet", general)
        planted = {}
        if cfg.malformed_jsonl_rows:
            planted = write_side_jsonl(run.uri("side.jsonl"), cfg.malformed_jsonl_rows, cfg.seed)
        return {
            "pool_rows": written,
            "eval_rows": cfg.eval_rows,
            "side_jsonl_rows": cfg.malformed_jsonl_rows,
            "side_jsonl_malformed": planted,
            "general_rows": cfg.general_rows,
        }

    @classmethod
    def wiring(cls, pipe: Pipe) -> dict:
        return {}

    @classmethod
    def hand_on(cls, manifest: dict, pipe: Pipe) -> None:
        data = cls.out_dir(pipe.run_dir)
        pipe.inputs.append(PoolInput(path=storage.join(data, "pool"), format="parquet"))
        if manifest["side_jsonl_rows"]:
            pipe.inputs.append(PoolInput(path=storage.join(data, "side.jsonl"), format="alpaca", source="demo/side"))
        if manifest.get("general_rows"):
            pipe.inputs.append(PoolInput(path=storage.join(data, "general"), format="parquet"))
        pipe.eval_data = pipe.eval_data or storage.join(data, "eval")


def make_demo(cfg: DemoConfig) -> dict:
    """Generate the pool shards, the eval split and the side JSONL; a finished identical output is kept."""
    return Demo(cfg).execute()
