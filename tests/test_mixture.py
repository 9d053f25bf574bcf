"""Mixtures of sources: each source's share of a budget in rows or tokens, and what happens when a
source is too small for its share; through the select stage on Ray Data."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from instructscale.config import ConfigError, parse_config
from instructscale.demo.pool import DemoConfig, iter_pool_rows
from instructscale.schema import POOL_SCHEMA, decode_metadata
from instructscale.select.config import SelectConfig
from instructscale.select.mixture import allocation
from instructscale.select.stage import select
from instructscale.storage import write_parquet
from instructscale.tokens import load_tokenizer, row_tokens

SOURCES = {"arithmetic": "math", "string": "text", "sorting": "lists", "units": "lists"}
WEIGHTS = {"math": 5, "text": 3, "lists": 2}


def three_sources(path, n: int = 600) -> list[dict]:
    """Demo rows whose ``source`` follows their task: math, text and lists (two tasks)."""
    rows = list(iter_pool_rows(DemoConfig(out_dir="x"), 0, n))
    for r in rows:
        r["source"] = SOURCES[decode_metadata(r["metadata"])["task"]]
    write_parquet(str(path / "part-0.parquet"), pa.Table.from_pylist(rows, schema=POOL_SCHEMA))
    return rows


def run(tmp_path, mix: dict, budget: dict, tag: str) -> tuple[dict, list[dict]]:
    cfg = parse_config(
        SelectConfig,
        {
            "input": str(tmp_path / "pool"),
            "out_dir": str(tmp_path / tag),
            "features_dir": None,
            "filters": [],
            "dedup": {"exact": False, "near": False},
            "scorers": [],
            "mix": mix,
            "budget": budget,
        },
    )
    m = select(cfg)
    return m, pads.dataset(str(tmp_path / tag / "selected"), format="parquet").to_table().to_pylist()


def test_row_and_token_weights_give_each_source_its_share(ray_local, tiny_models, tmp_path):
    rows = three_sources(tmp_path / "pool")
    have = Counter(r["source"] for r in rows)

    m, chosen = run(tmp_path, {"weights": WEIGHTS}, {"budget": 200}, "rows")
    got = Counter(r["source"] for r in chosen)
    assert got == {"math": 100, "text": 60, "lists": 40}  # 5:3:2 of 200, within one row (here exact)
    assert {s: v["rows"] for s, v in m["mix"].items()} == got and m["mix"]["math"]["target_share"] == 0.5

    tokenizer = tiny_models["student"]
    mix = {"weights": WEIGHTS, "unit": "tokens", "tokenizer": tokenizer}
    m, chosen = run(tmp_path, mix, {"tokens": 6000}, "tokens")
    counted = dict(zip((r["id"] for r in chosen), row_tokens(chosen, load_tokenizer(tokenizer), 10**6)))
    assert all(r["tokens"] == counted[r["id"]] for r in chosen), "the tokens training counts"
    by_source: Counter = Counter()
    longest: Counter = Counter()
    for r in chosen:
        by_source[r["source"]] += r["tokens"]
        longest[r["source"]] = max(longest[r["source"]], r["tokens"])
    for source, weight in WEIGHTS.items():
        target = 6000 * weight / 10
        assert target <= by_source[source] < target + longest[source], (source, by_source, target)
    assert {s: v["tokens"] for s, v in m["mix"].items()} == by_source and m["budget_unit"] == "tokens"
    assert sum(m["token_targets"].values()) == 6000 and m["selected_tokens"] == sum(by_source.values())

    # a source too small for its share (80% of 500 rows): its rest goes to the others, or the stage stops
    budget = {"budget": 500}
    small = {"weights": {"math": 1, "text": 1, "lists": 8}}
    m, chosen = run(tmp_path, small, budget, "redistribute")
    got = Counter(r["source"] for r in chosen)
    assert got["lists"] == have["lists"] < 400 and abs(got["math"] - got["text"]) <= 1 and got.total() == 500
    with pytest.raises(ConfigError, match=r"lists needs 400 rows and has \d+.*shortfall: stop"):
        run(tmp_path, small | {"shortfall": "stop"}, budget, "stop")


def test_allocation_skips_unweighted_sources_and_checks_configs():
    mix = parse_config(SelectConfig, {"input": "x", "out_dir": "y", "mix": {"weights": {"a": 1, "b": 3}}}).mix
    assert allocation(mix, 100, {"a": 500, "b": 500, "c": 500}) == {"a": 25, "b": 75, "c": 0}
    assert allocation(mix, 100, {"a": 10, "b": 500}) == {"a": 10, "b": 90}
    with pytest.raises(ConfigError, match="mix stratifies by its `by` column"):
        parse_config(
            SelectConfig,
            {"input": "x", "out_dir": "y", "mix": {"weights": {"a": 1}}, "budget": {"stratify_by": "task"}},
        )
    with pytest.raises(ConfigError, match="budget.tokens is the budget of a mixture in tokens"):
        parse_config(SelectConfig, {"input": "x", "out_dir": "y", "budget": {"tokens": 100}})
    with pytest.raises(ConfigError, match="weights must be positive"):
        parse_config(SelectConfig, {"input": "x", "out_dir": "y", "mix": {"weights": {"a": 0}}})
