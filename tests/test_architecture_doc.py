"""The custom filter and selector of docs/architecture.md, run exactly as the page shows them."""

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from instructscale.cli import main
from instructscale.schema import POOL_SCHEMA, encode_metadata
from instructscale.storage import write_parquet

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_documented_plugin_example_runs(ray_local, tmp_path, monkeypatch):
    (code,) = blocks("python")
    (config,) = blocks("yaml")
    assert len(code.strip().splitlines()) <= 30, "the example stays short"
    (tmp_path / "my_plugins.py").write_text(code)
    outputs = ["one two", "one two three four", "x", "a b c d e f", "fine answer"] * 40
    rows = [
        {
            "id": f"r{i:03d}",
            "instruction": f"Question {i}?",
            "input": "",
            "output": out,
            "messages": None,
            "source": "t",
            "metadata": encode_metadata({}),
        }
        for i, out in enumerate(outputs)
    ]
    write_parquet(
        str(tmp_path / "runs" / "demo" / "ingest" / "pool" / "part-0.parquet"),
        pa.Table.from_pylist(rows, schema=POOL_SCHEMA),
    )
    (tmp_path / "my_select.yaml").write_text(config)
    monkeypatch.chdir(tmp_path)
    assert main(["select", "my_select.yaml"]) == 0

    scores = pq.read_table(tmp_path / "runs" / "mine" / "select" / "scores").to_pylist()
    wordy = {r["id"] for r in rows if len(r["output"].split()) > 3}
    assert {r["id"] for r in scores if r["reason"] == "too_many_words"} == wordy
    selected = pq.read_table(tmp_path / "runs" / "mine" / "select" / "selected")
    assert selected.num_rows == yaml.safe_load(config)["budget"]["budget"]
    assert not wordy & set(selected["id"].to_pylist())
