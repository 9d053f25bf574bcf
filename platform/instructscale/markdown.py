"""Markdown tables and PNG figures for reports, written through the storage layer."""

from __future__ import annotations

import os
import tempfile

from instructscale import storage


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, uri: str) -> str:
    """Write a matplotlib figure as PNG to ``uri`` (any storage) and close it; returns its file name."""
    plt = pyplot()
    with tempfile.TemporaryDirectory(dir=storage.scratch_root()) as scratch:
        local = os.path.join(scratch, "figure.png")
        fig.tight_layout()
        fig.savefig(local, dpi=100)
        plt.close(fig)
        with open(local, "rb") as f:
            storage.write_bytes(uri, f.read())
    return uri.rsplit("/", 1)[-1]
