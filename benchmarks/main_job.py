"""The README's two commands, timed as a new user meets them: a fresh clone of this repository's
HEAD, ``./setup.sh`` (skipped with ``--venv``: an existing environment is linked in), then the main
job (``instructscale pipeline configs/smollm2.yaml``). Reports the job's wall seconds, each stage's
seconds, the evaluation suites' share (IFBench, general prompts and the judge: every suite but the
held-out rows, engine start-ups excluded), and the tuned model's exact match on the held-out rows.
The model cache (``~/.cache/instructscale``) is this machine's, as for any user's second clone.
    python benchmarks/main_job.py                 # setup included
    python benchmarks/main_job.py --venv .venv    # the job only
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from harness import Bench

REPO = Path(__file__).resolve().parents[1]


def arguments(p) -> None:
    p.add_argument("--venv", help="use this environment instead of running ./setup.sh in the clone")
    p.add_argument("--config", default="configs/smollm2.yaml")


def timed_run(cmd: list[str], cwd: Path, log: Path) -> float:
    t0 = time.time()
    with log.open("w") as out:
        subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=True)
    return time.time() - t0


def suites_seconds(evaluate: dict) -> float:
    """Seconds spent on every suite but the held-out rows, over both models, plus the judge."""
    total = evaluate.get("tuned", {}).get("judge_seconds", 0.0)
    for model in evaluate.values():
        total += sum(s for name, s in model.get("seconds_by_suite", {}).items() if name != "holdout")
    return total


def main() -> None:
    bench = Bench("main_job", __doc__, arguments)
    args, clone = bench.args, bench.work / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    setup = None
    if args.venv:
        (clone / ".venv").symlink_to(Path(args.venv).resolve())
    else:
        setup = timed_run(["./setup.sh"], clone, bench.work / "setup.log")
    job = timed_run([".venv/bin/instructscale", "pipeline", args.config], clone, bench.work / "job.log")
    summary = json.loads(next((clone / "runs").glob("*/summary.json")).read_text())
    stages, evaluate = summary["seconds"], summary["stages"]["evaluate"]
    suites = suites_seconds(evaluate)
    held_out = evaluate["tuned"]["suites"]["holdout"]
    bench.results = [{"stage": k, "seconds": v} for k, v in stages.items()]
    bench.results += [{"stage": "(of evaluate: suites)", "seconds": suites}, {"stage": "job (wall)", "seconds": job}]
    if setup is not None:
        bench.results.append({"stage": "setup.sh", "seconds": setup})
    bench.table(["stage", "seconds"])
    print(
        f"main job {job / 60:.1f} min, {(job - suites) / 60:.1f} min without the suites; tuned exact match "
        f"{held_out['exact_match']:.3f} {held_out['exact_match_ci95']}"
    )
    bench.write(
        commit=commit,
        setup_seconds=setup,
        seconds_total=job,
        seconds_without_suites=job - suites,
        seconds=stages,
        suites_seconds=suites,
        tuned_exact_match=held_out["exact_match"],
        tuned_exact_match_ci95=held_out["exact_match_ci95"],
    )


if __name__ == "__main__":
    main()
