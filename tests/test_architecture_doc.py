"""The worked examples of docs/architecture.md ("How to extend"), run exactly as the page shows them."""

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from instructscale.cli import main
from instructscale.schema import POOL_SCHEMA, encode_metadata
from instructscale.stage import pipeline_stages
from instructscale.storage import write_parquet

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def section(title: str, language: str) -> list[str]:
    """The ``language`` code blocks of the ``### title`` section."""
    text = DOC.read_text().split(f"### {title}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def write_pool(tmp_path: Path, outputs: list[str]) -> list[dict]:
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
    path = tmp_path / "runs" / "demo" / "ingest" / "pool" / "part-0.parquet"
    write_parquet(str(path), pa.Table.from_pylist(rows, schema=POOL_SCHEMA))
    return rows


def test_the_documented_plugin_example_runs(ray_local, tmp_path, monkeypatch):
    (code,) = section("Add a plug-in", "python")
    (config,) = section("Add a plug-in", "yaml")
    assert len(code.strip().splitlines()) <= 30, "the example stays short"
    (tmp_path / "my_plugins.py").write_text(code)
    rows = write_pool(tmp_path, ["one two", "one two three four", "x", "a b c d e f", "fine answer"] * 40)
    (tmp_path / "my_select.yaml").write_text(config)
    monkeypatch.chdir(tmp_path)
    assert main(["select", "my_select.yaml"]) == 0

    scores = pq.read_table(tmp_path / "runs" / "mine" / "select" / "scores").to_pylist()
    wordy = {r["id"] for r in rows if len(r["output"].split()) > 3}
    assert {r["id"] for r in scores if r["reason"] == "too_many_words"} == wordy
    selected = pq.read_table(tmp_path / "runs" / "mine" / "select" / "selected")
    assert selected.num_rows == yaml.safe_load(config)["budget"]["budget"]
    assert not wordy & set(selected["id"].to_pylist())


def test_the_documented_stage_example_runs(ray_local, tmp_path, monkeypatch, capsys):
    (code,) = section("Add a stage", "python")
    (config,) = section("Add a stage", "yaml")
    assert len(code.strip().splitlines()) <= 40, "the example stays short"
    (tmp_path / "my_stage.py").write_text(code)
    rows = write_pool(tmp_path, [" ".join(["w"] * (i % 37)) for i in range(100)])
    (tmp_path / "my_longest.yaml").write_text(config)
    monkeypatch.chdir(tmp_path)
    assert main(["longest", "my_longest.yaml"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 20
    kept = pq.read_table(tmp_path / "runs" / "mine" / "longest" / "rows")["output"].to_pylist()
    assert sorted(map(len, kept)) == sorted(len(r["output"]) for r in rows)[-20:]
    order = [s.name for s in pipeline_stages()]
    assert order.index("select") < order.index("longest") < order.index("train")
    assert main(["longest", "my_longest.yaml"]) == 0  # the lifecycle: done, so skipped
    assert "longest" in capsys.readouterr().out
