"""Object storage vs a local disk, in one run: ingest -> generate -> select on the same demo pool,
once with every path local and once with every path an s3:// URI on a local S3-compatible server
(moto, in a process of its own on 127.0.0.1, configured only through the AWS_* variables).

generate is the demo's: the teacher fills the ~1% of rows without an output and every row is
written; select runs the filters, exact + MinHash dedup and the decisions without the model scorer
(whose forward passes cost the same wherever the rows live). The arms alternate (local, S3, local,
S3) and the table compares the second, warm run of each (the first pays Ray's worker start-up and
the engine's first load). Goal: object storage >= 0.8x local.
    python benchmarks/storage.py --rows 100000
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from harness import Bench


def start_s3() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1"
    )
    import boto3

    for _ in range(100):
        try:
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
            return proc, "s3://bench"
        except Exception:
            time.sleep(0.2)
    raise RuntimeError("moto did not start")


def stages(root: str, teacher: str, rows: int) -> list[dict]:
    """ingest -> generate -> select under ``root``; rows/s of each."""
    from instructscale import storage
    from instructscale.demo.pool import DemoConfig, make_demo
    from instructscale.generate.config import GenerateConfig
    from instructscale.generate.stage import generate
    from instructscale.pools.ingest import IngestConfig, PoolInput, ingest
    from instructscale.select.config import SelectConfig
    from instructscale.select.stage import select

    make_demo(DemoConfig(out_dir=storage.join(root, "data"), rows=rows, shards=8, eval_rows=0, malformed_jsonl_rows=0))
    out = []
    t0 = time.time()
    m = ingest(
        IngestConfig(
            inputs=[PoolInput(path=storage.join(root, "data", "pool"), format="parquet")],
            out_dir=storage.join(root, "ingest"),
        )
    )
    out.append({"stage": "ingest", "rows": m["rows"], "seconds": time.time() - t0})
    t0 = time.time()
    m = generate(
        GenerateConfig(
            input=storage.join(root, "ingest", "pool"),
            out_dir=storage.join(root, "generate"),
            model=teacher,
            mode={"kind": "distill", "only_missing": True},
            sampling={"max_tokens": 32},
            replicas={"batch_size": 4096, "num_cpus": 2},
        )
    )
    out.append({"stage": "generate", "rows": m["inputs"], "seconds": time.time() - t0})
    t0 = time.time()
    m = select(
        SelectConfig(
            input=storage.join(root, "generate", "rows"),
            out_dir=storage.join(root, "select"),
            scorers=[],
            filters=["length", "repetition", "control_characters", "refusal", "reference_answer"],
            budget={"fraction": 0.5, "stratify_by": "task"},
        )
    )
    out.append({"stage": "select", "rows": m["input_rows"], "seconds": time.time() - t0})
    for r in out:
        r["rows_per_s"] = r["rows"] / r["seconds"]
    return out


def main() -> None:
    bench = Bench("storage", __doc__, lambda p: p.add_argument("--rows", type=int, default=100_000))
    s3, bucket = start_s3()  # before Ray starts, so its workers inherit the endpoint
    try:
        from instructscale.models.tiny import build_tiny_models

        teacher = build_tiny_models(bench.work / "models")["teacher"]
        bench.ray()
        runs = {}
        for round_ in (1, 2):
            runs["local", round_] = stages(str(bench.work / f"run{round_}"), teacher, bench.args.rows)
            runs["s3", round_] = stages(f"{bucket}/run{round_}", teacher, bench.args.rows)
        local, remote = runs["local", 2], runs["s3", 2]
    finally:
        s3.terminate()
    results = bench.results
    for lo, re_ in zip(local, remote):
        results.append(
            {
                "stage": lo["stage"],
                "rows": lo["rows"],
                "local_rows_per_s": lo["rows_per_s"],
                "s3_rows_per_s": re_["rows_per_s"],
                "s3_over_local": re_["rows_per_s"] / lo["rows_per_s"],
                "local_s": lo["seconds"],
                "s3_s": re_["seconds"],
            }
        )
    bench.table(["stage", "rows", "local_rows_per_s", "s3_rows_per_s", "s3_over_local", "local_s", "s3_s"])
    total = sum(r["local_s"] for r in results) / sum(r["s3_s"] for r in results)
    print(
        f"\nall three stages: object storage at {total:.2f}x the local rows/s (goal >= 0.8) on {os.cpu_count()} cores"
    )
    first = {f"{arm}_first_run": r for (arm, round_), r in runs.items() if round_ == 1}
    bench.write(s3_over_local_total=total, **first)


if __name__ == "__main__":
    main()
