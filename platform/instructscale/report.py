"""The run report: one Markdown page with tables and plots of what every stage did."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.dataset as pads


def _table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _plots(run: Path, out: Path) -> dict[str, str]:
    """PNG plots that the run's outputs allow; name -> file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: dict[str, str] = {}
    scores = run / "select" / "scores"
    if scores.is_dir():
        t = pads.dataset(str(scores), format="parquet").to_table(columns=["status", "ifd", "loss"])
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for ax, col in zip(axes, ("ifd", "loss")):
            for status in ("selected", "not_selected", "removed"):
                vals = [v for v, s in zip(t[col].to_pylist(), t["status"].to_pylist()) if s == status and v is not None]
                if vals:
                    ax.hist(vals, bins=40, alpha=0.6, label=f"{status} ({len(vals)})")
            ax.set_title(f"{col} by selection status")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "scores.png", dpi=100)
        plt.close(fig)
        made["scores"] = "scores.png"
    metrics = run / "train" / "metrics.jsonl"
    if metrics.is_file():
        records = {}
        for line in metrics.read_text().splitlines():
            r = json.loads(line)
            records[r["step"]] = r
        steps = sorted(records)
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.plot(steps, [records[s]["loss"] for s in steps], label="train loss")
        ev = [s for s in steps if "eval_loss" in records[s]]
        if ev:
            ax.plot(ev, [records[s]["eval_loss"] for s in ev], marker="o", label="held-out loss")
        ax.set_xlabel("step")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "training.png", dpi=100)
        plt.close(fig)
        made["training"] = "training.png"
    return made


def write_report(run: Path, summary: dict) -> Path:
    """Write ``run/report.md`` (and its plots) from the run's summary and outputs."""
    run = Path(run)
    stages = summary["stages"]
    plots = _plots(run, run)
    parts = [f"# instructscale run report: `{run}`", ""]
    parts += ["## Stages", "", _table([{"stage": k, "seconds": f"{v:.1f}"} for k, v in summary.get("seconds", {}).items()],
                                      ["stage", "seconds"]), ""]
    if "ingest" in stages:
        ing = stages["ingest"]
        parts += ["## Ingest", "", f"{ing['rows']:,} rows kept, {ing['quarantined']:,} quarantined.", "",
                  _table([{"reason": k, "rows": v} for k, v in sorted(ing["quarantine_reasons"].items())],
                         ["reason", "rows"]), ""]
    if "generate" in stages:
        gen = stages["generate"]
        parts += ["## Teacher generation", "", f"{gen['rows']:,} rows; rejected: {gen['rejected'] or 'none'}; "
                  f"{gen['this_run']['tokens']:,} teacher tokens this run.", ""]
    if "select" in stages:
        sel = stages["select"]
        removed = [{"filter": k, "rows removed": v} for k, v in sel["removed"].items()]
        removed.append({"filter": "over budget (eligible, not selected)", "rows removed": sel["not_selected"]})
        parts += ["## Selection", "", f"{sel['selected']:,} of {sel['input_rows']:,} rows selected "
                  f"(budget {sel['budget']:,}, {sel['eligible']:,} eligible).", "",
                  _table(removed, ["filter", "rows removed"]), "",
                  _table([{"stratum": k, "selected": v} for k, v in sel["selected_by_stratum"].items()],
                         ["stratum", "selected"]), ""]
        if "scores" in plots:
            parts += [f"![score distributions]({plots['scores']})", ""]
    if "train" in stages:
        tr = stages["train"]
        parts += ["## Training", "", f"{tr['steps']} steps on {tr['rows']:,} rows, final train loss "
                  f"{tr['final_loss']:.4f}, held-out loss {tr.get('eval_loss') or float('nan'):.4f}, "
                  f"{tr['seconds']:.0f} s. Model: `{tr['model']}`.", ""]
        if "training" in plots:
            parts += [f"![training curves]({plots['training']})", ""]
    if stages.get("evaluate"):
        ev = stages["evaluate"]
        rows = []
        for model, res in ev.items():
            rows.append({"model": model, "group": "all", **res["overall"]})
            rows += [{"model": model, "group": g, **m} for g, m in res["by_group"].items()]
        parts += ["## Evaluation on the held-out split", "",
                  _table(rows, ["model", "group", "rows", "exact_match", "token_f1", "rouge_l", "loss"]), ""]
    trials = run / "tune" / "trials.csv"
    if trials.is_file():
        parts += ["## Tuning trials", "", f"See `{trials}` and `{run / 'tune' / 'trials.png'}`.", ""]
    path, tmp = run / "report.md", run / ".report.md.tmp"
    tmp.write_text("\n".join(parts))
    os.replace(tmp, path)
    return path
