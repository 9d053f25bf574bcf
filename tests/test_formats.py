"""LLaMA-Factory v1 messages (typed parts with ``value``, reasoning, tool calls, tools, per-turn
``loss_weight``) and media rows, from the fixture files in tests/data: parsed, quarantined with file
and line, rendered and label-masked token by token."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from instructscale.chat import inline_reasoning
from instructscale.pools.ingest import IngestConfig, PoolInput, ingest
from instructscale.pools.records import RecordLimits, RowError, normalize_record
from instructscale.tokens import IGNORE, tokenize

DATA = Path(__file__).parent / "data"
V1 = [json.loads(line) for line in (DATA / "llamafactory_v1.jsonl").read_text().splitlines()]
V1_ROWS = {r["id"]: r for r in V1}


def norm(rec: dict) -> dict:
    return normalize_record(rec, style="auto", file="f.jsonl", line=3, source="s", limits=RecordLimits())


def trained_text(tok, ex) -> str:
    return tok.decode([t for t, label in zip(ex.input_ids, ex.labels) if label != IGNORE])


@pytest.fixture(scope="module")
def tok(tiny_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models["student"])


def test_v1_parts_with_value_tool_calls_tools_and_weights_parse():
    plain = norm(V1_ROWS["v1_plain"])
    assert [(m["role"], m["content"], m["loss_weight"]) for m in plain["messages"]] == [
        ("system", "Answer briefly.", 0.0),
        ("user", "Name a primary colour.", 0.0),
        ("assistant", "Red.", 1.0),
    ]
    assert (plain["instruction"], plain["output"]) == ("Name a primary colour.", "Red.")
    tools = norm(V1_ROWS["v1_tools"])
    assert [m["role"] for m in tools["messages"]] == ["user", "assistant", "tool", "assistant"], "tools-only turn"
    assert json.loads(tools["tools"])[0]["name"] == "get_weather"
    call = tools["messages"][1]["tool_calls"][0]
    assert (call["name"], json.loads(call["arguments"])) == ("get_weather", {"city": "Oslo"})
    both = norm(V1_ROWS["v1_reasoning_tool"])
    assert both["messages"][1]["reasoning"] == "I need the weather first." and both["messages"][1]["tool_calls"]
    assert both["messages"][3]["reasoning"] == "3 degrees is cold." and both["output"] == "Yes, 3 degrees."
    assert norm(V1_ROWS["openai_reasoning_content"])["messages"][1]["reasoning"] == "Two and two make four."


@pytest.mark.parametrize(
    "row_id,text",
    [
        ("bad_weight", "field 'messages[1].loss_weight' is 0.5; only 0 and 1 are supported"),
        ("trained_user", "field 'messages[0].loss_weight' is 1 on a user turn"),
    ],
)
def test_unsupported_loss_weights_are_refused_with_a_reason(row_id, text):
    with pytest.raises(RowError) as info:
        norm(V1_ROWS[row_id])
    assert info.value.code == "bad_value" and text in str(info.value)


def test_reasoning_on_a_user_turn_and_unknown_parts_are_refused():
    with pytest.raises(RowError, match="bad_value: field 'messages\\[0\\]' is a user turn with tool calls"):
        norm({"messages": [{"role": "user", "content": [{"type": "reasoning", "value": "x"}]}]})
    with pytest.raises(RowError, match="unknown part type 'sticker'"):
        norm({"messages": [{"role": "user", "content": [{"type": "sticker", "value": "x"}]}]})


def test_loss_weight_zero_turns_are_not_trained_token_by_token(tok):
    row = norm(V1_ROWS["v1_weighted"])
    ex = tokenize(row, tok, 1024)
    rendered = tok.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in row["messages"]], tokenize=False
    )
    enc = tok(rendered, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"] == ex.input_ids
    second = rendered.rindex("<|assistant|>\n") + len("<|assistant|>\n")
    for token, label, (start, _) in zip(ex.input_ids, ex.labels, enc["offset_mapping"]):
        assert label == (token if start >= second else IGNORE), (start, rendered[start:])
    assert trained_text(tok, ex) == "Two.<|end|>\n"
    unweighted = {**row, "messages": [{**m, "loss_weight": None} for m in row["messages"]]}
    assert trained_text(tok, tokenize(unweighted, tok, 1024)) == "One.<|end|>\nTwo.<|end|>\n"


def test_reasoning_is_inline_for_a_template_without_a_reasoning_key_and_can_be_masked(tok):
    row = norm(V1_ROWS["v1_reasoning_tool"])
    ex = tokenize(row, tok, 1024)
    text = tok.decode(ex.input_ids)
    assert inline_reasoning("I need the weather first.", "<tool_call>") in text
    trained = trained_text(tok, ex)
    assert "I need the weather first." in trained and "3 degrees is cold." in trained
    assert trained.endswith("Yes, 3 degrees.<|end|>\n") and "Is it cold" not in trained
    masked = trained_text(tok, tokenize(row, tok, 1024, reasoning=False))
    assert "weather first" not in masked and "is cold" not in masked
    assert masked.replace(" ", "") == trained.replace(" ", "").replace("Ineedtheweatherfirst.", "").replace(
        "3degreesiscold.", ""
    )


QWEN3_STYLE = (  # as Qwen3's: reads reasoning_content, and drops it on turns before the last user query
    "{%- set ns = namespace(last=-1) %}"
    "{%- for m in messages %}{%- if m['role'] == 'user' %}{%- set ns.last = loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for m in messages %}"
    "{%- if m['role'] == 'assistant' %}<|assistant|>\n"
    "{%- if loop.index0 > ns.last and (loop.last or m.get('reasoning_content')) %}"
    "<think>\n{{ m.get('reasoning_content', '') }}\n</think>\n\n{%- endif %}"
    "{{ m['content'] }}<|end|>\n"
    "{%- else %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>\n{%- endif %}"
)


def test_a_template_that_drops_earlier_reasoning_keeps_the_turn_by_turn_check(tok):
    qwen = type(tok).from_pretrained(tok.name_or_path)
    qwen.chat_template = QWEN3_STYLE
    row = norm(
        {
            "messages": [
                {"role": "user", "content": "A?"},
                {"role": "assistant", "reasoning_content": "first thought", "content": "a"},
                {"role": "user", "content": "B?"},
                {"role": "assistant", "reasoning_content": "second thought", "content": "b"},
            ]
        }
    )
    ex = tokenize(row, qwen, 1024)
    text = qwen.decode(ex.input_ids)
    assert "first thought" not in text and "<think>\nsecond thought\n</think>" in text, text
    assert trained_text(qwen, ex) == "a<|end|><think>\nsecond thought\n</think>b<|end|>"  # (`{%-` trims newlines)


def test_media_rows_are_quarantined_with_file_and_line_placeholders_alone_stay_text(ray_local, tmp_path):
    m = ingest(
        IngestConfig(
            inputs=[
                PoolInput(path=str(DATA / "media.jsonl"), format="jsonl"),
                PoolInput(path=str(DATA / "llamafactory_v1.jsonl"), format="jsonl"),
            ],
            out_dir=str(tmp_path / "out"),
        )
    )
    assert (m["rows"], m["quarantined"]) == (2 + 6, 4 + 2)
    assert m["quarantine_reasons"] == {"unsupported_modality": 4, "bad_value": 2}
    quarantine = [
        json.loads(line)
        for p in (tmp_path / "out" / "quarantine").glob("*.jsonl")
        for line in p.read_text().splitlines()
    ]
    media = sorted((Path(q["file"]).name, q["line"], q["reason"]) for q in quarantine if "media" in q["file"])
    assert [(f, line) for f, line, _ in media] == [("media.jsonl", i) for i in (1, 2, 3, 4)]
    assert "field 'images' holds 1 media item(s)" in media[0][2] and "image_url part" in media[3][2]
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "pool").to_pylist()}
    assert {"placeholder_only", "empty_images"} <= rows.keys()
    assert rows["v1_reasoning"]["messages"][1]["reasoning"] == "12 * 3 = 36."


def test_a_pipeline_with_inputs_gets_no_demo_rows_and_builds_no_tiny_models(ray_local, tiny_models, tmp_path):
    from instructscale.config import parse_config
    from instructscale.pipeline import PipelineConfig, run_pipeline

    cfg = {
        "run_dir": str(tmp_path / "run"),
        "models": {"student": tiny_models["student"], "teacher": tiny_models["teacher"]},
        "inputs": [{"path": str(DATA / "llamafactory_v1.jsonl"), "format": "jsonl"}],
        **dict.fromkeys(("generate", "select", "evaluate", "train")),
    }
    summary = run_pipeline(parse_config(PipelineConfig, cfg))
    assert list(summary["stages"]) == ["models", "ingest"] and summary["stages"]["ingest"]["rows"] == 6
    assert not (tmp_path / "run" / "models").exists() and not (tmp_path / "run" / "demo").exists()
    assert summary["models"] == {"student": tiny_models["student"], "teacher": tiny_models["teacher"]}


def _ingest(tmp_path, name: str, inputs: list, quarantined: int = 0) -> dict[str, dict]:
    m = ingest(IngestConfig(inputs=inputs, out_dir=str(tmp_path / name)))
    assert m["quarantined"] == quarantined, m["quarantine_reasons"]
    return {r["id"]: r for r in pq.read_table(tmp_path / name / "pool").to_pylist()}


def _turns(row: dict, inline: bool = False) -> list[tuple]:
    """What a round trip keeps of each turn (inline: as LLaMA-Factory has it, reasoning in the text and
    a tool-calling turn holding its calls only)."""
    out = []
    for m in row["messages"]:
        content = m["content"] or ""
        calls = [(c["name"], json.loads(c["arguments"])) for c in m["tool_calls"] or []]
        if inline and m["reasoning"]:
            content = inline_reasoning(m["reasoning"], content)
        if inline and calls:
            content = ""
        out.append((m["role"], content, calls, None if inline else m["reasoning"]))
    return out


def test_export_round_trips_through_ingest_in_all_three_formats_with_ids(ray_local, tmp_path):
    from instructscale.export import ExportConfig, export

    pool = _ingest(tmp_path, "pool", [PoolInput(path=str(DATA / "llamafactory_v1.jsonl"), format="jsonl")], 2)
    m = export(ExportConfig(input=str(tmp_path / "pool" / "pool"), out_dir=str(tmp_path / "export"), name="mine"))
    assert (m["rows"], m["exported"], m["without_response"]) == (6, 6, 0)
    out = tmp_path / "export"
    info = json.loads((out / "llamafactory" / "dataset_info.json").read_text())
    assert info["mine"]["file_name"] == "mine.jsonl" and info["mine"]["formatting"] == "sharegpt"

    openai = _ingest(tmp_path, "oa", [PoolInput(path=str(out / "openai" / "mine.jsonl"), format="jsonl")])
    hf = _ingest(tmp_path, "hf", [PoolInput(path=str(out / "hf"), format="hf")])
    lf = _ingest(tmp_path, "lf", [{"dataset_info": str(out / "llamafactory" / "dataset_info.json"), "names": ["mine"]}])
    assert openai.keys() == hf.keys() == lf.keys() == pool.keys()
    for row_id, row in pool.items():
        assert hf[row_id] == row, "the Hugging Face folder holds the canonical rows"
        back = openai[row_id]
        assert _turns(back) == _turns(row) and back["tools"] == row["tools"] and back["source"] == row["source"]
        assert [m["loss_weight"] for m in back["messages"] if m["role"] == "assistant"] == [
            m["loss_weight"] for m in row["messages"] if m["role"] == "assistant"
        ]
        assert _turns(lf[row_id], inline=True) == _turns(row, inline=True) and lf[row_id]["tools"] == row["tools"]
