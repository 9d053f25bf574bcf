"""The run report: one Markdown page with what every stage did, each stage's section written by the
stage itself (:meth:`instructscale.stage.Stage.report`), read from and written to the run directory
through the storage layer."""

from __future__ import annotations

from instructscale import storage
from instructscale.markdown import markdown_table
from instructscale.stage import pipeline_stages


def write_report(run: str, summary: dict) -> str:
    """Write ``run/report.md`` (and its plots) from the run's summary and outputs; returns its URI."""
    run = storage.normalize(str(run))
    seconds = [{"stage": k, "seconds": f"{v:.1f}"} for k, v in summary.get("seconds", {}).items()]
    parts = [f"# instructscale run report: `{run}`", "", "## Stages", "", markdown_table(seconds, ["stage", "seconds"])]
    parts.append("")
    for stage in pipeline_stages():
        if summary["stages"].get(stage.name):
            parts += stage.report(summary["stages"][stage.name], run)
    trials = storage.join(run, "tune", "trials.csv")
    if storage.is_file(trials):
        parts += ["## Tuning trials", "", f"See `{trials}` and `{storage.join(run, 'tune', 'trials.png')}`.", ""]
    path = storage.join(run, "report.md")
    storage.write_text(path, "\n".join(parts))
    return path
