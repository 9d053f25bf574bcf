"""The run report: one Markdown page with tables and plots of what every stage did (read from and
written to the run directory through the storage layer)."""

from __future__ import annotations

import os
import shutil

from instructscale import storage
from instructscale.lifecycle import part_files
from instructscale.train.metrics import METRICS, efficiency_text, read_history


def _table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _score_plot(run: str, path: str, plt) -> bool:
    scores = storage.join(run, "select", "scores")
    files = part_files(scores) if storage.exists(scores) else []
    if not files or not {"ifd", "loss"} <= set(storage.read_parquet(files[:1]).schema.names):
        return False
    t = storage.read_parquet(files, columns=["status", "ifd", "loss"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, col in zip(axes, ("ifd", "loss")):
        for status in ("selected", "not_selected", "removed"):
            vals = [v for v, s in zip(t[col].to_pylist(), t["status"].to_pylist()) if s == status and v is not None]
            if vals:
                ax.hist(vals, bins=40, alpha=0.6, label=f"{status} ({len(vals)})")
        ax.set_title(f"{col} by selection status")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _training_plot(run: str, path: str, plt) -> bool:
    history = read_history(storage.join(run, "train", METRICS))
    if not history:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], label="train loss")
    evals = [r for r in history if "eval_loss" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], marker="o", label="held-out loss")
    ax.set_xlabel("step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _plots(run: str) -> dict[str, str]:
    """PNG plots that the run's outputs allow, written to the run; name -> file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scratch = storage.local_scratch("report")
    made: dict[str, str] = {}
    try:
        for name, draw in (("scores", _score_plot), ("training", _training_plot)):
            local = os.path.join(scratch, f"{name}.png")
            if draw(run, local, plt):
                with open(local, "rb") as f:
                    storage.write_bytes(storage.join(run, f"{name}.png"), f.read())
                made[name] = f"{name}.png"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return made


def _stage_sections(stages: dict, plots: dict[str, str]) -> list[str]:
    parts: list[str] = []
    if "ingest" in stages:
        ing = stages["ingest"]
        parts += [
            "## Ingest",
            "",
            f"{ing['rows']:,} rows kept, {ing['quarantined']:,} quarantined.",
            "",
            _table(
                [{"reason": k, "rows": v} for k, v in sorted(ing["quarantine_reasons"].items())], ["reason", "rows"]
            ),
            "",
        ]
    if "generate" in stages:
        gen = stages["generate"]
        parts += [
            "## Teacher generation",
            "",
            f"{gen['rows']:,} rows; rejected: {gen['rejected'] or 'none'}; "
            f"{gen['this_run']['tokens']:,} teacher tokens this run.",
            "",
        ]
    if "select" in stages:
        sel = stages["select"]
        removed = [{"filter": k, "rows removed": v} for k, v in sel["removed"].items()]
        removed.append({"filter": "over budget (eligible, not selected)", "rows removed": sel["not_selected"]})
        parts += [
            "## Selection",
            "",
            f"{sel['selected']:,} of {sel['input_rows']:,} rows selected "
            f"(budget {sel['budget']:,}, {sel['eligible']:,} eligible).",
            "",
            _table(removed, ["filter", "rows removed"]),
            "",
            _table(
                [{"stratum": k, "selected": v} for k, v in sel["selected_by_stratum"].items()], ["stratum", "selected"]
            ),
            "",
        ]
        if "scores" in plots:
            parts += [f"![score distributions]({plots['scores']})", ""]
    if "train" in stages:
        tr = stages["train"]
        parts += [
            "## Training",
            "",
            f"{tr['steps']} steps on {tr['rows']:,} rows, final train loss "
            f"{tr['final_loss']:.4f}, held-out loss {tr.get('eval_loss') or float('nan'):.4f}, "
            f"{efficiency_text(tr.get('efficiency'))}{tr['seconds']:.0f} s. Model: `{tr['model']}`.",
            "",
        ]
        if "training" in plots:
            parts += [f"![training curves]({plots['training']})", ""]
    if stages.get("evaluate"):
        rows = []
        for model, res in stages["evaluate"].items():
            rows.append({"model": model, "group": "all", **res["overall"]})
            rows += [{"model": model, "group": g, **m} for g, m in res["by_group"].items()]
        parts += [
            "## Evaluation on the held-out split",
            "",
            _table(rows, ["model", "group", "rows", "exact_match", "token_f1", "rouge_l", "loss"]),
            "",
        ]
    return parts


def write_report(run: str, summary: dict) -> str:
    """Write ``run/report.md`` (and its plots) from the run's summary and outputs; returns its URI."""
    run = storage.normalize(str(run))
    plots = _plots(run)
    parts = [
        f"# instructscale run report: `{run}`",
        "",
        "## Stages",
        "",
        _table(
            [{"stage": k, "seconds": f"{v:.1f}"} for k, v in summary.get("seconds", {}).items()], ["stage", "seconds"]
        ),
        "",
    ]
    parts += _stage_sections(summary["stages"], plots)
    trials = storage.join(run, "tune", "trials.csv")
    if storage.is_file(trials):
        parts += ["## Tuning trials", "", f"See `{trials}` and `{storage.join(run, 'tune', 'trials.png')}`.", ""]
    path = storage.join(run, "report.md")
    storage.write_text(path, "\n".join(parts))
    return path
