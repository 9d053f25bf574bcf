"""Real chat formats: ShareGPT with function calls and observations, OpenAI messages with tool calls,
tool turns and content parts, system fields, Alpaca history, column mappings and Hugging Face
`datasets` folders ingest without quarantine; the label mask trains every assistant turn and nothing
else; tool rows are scored by the model scorer and selected (their label mask is the one training
uses, checked token by token above)."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from instructscale.chat import plain_turns, render_tool_calls
from instructscale.pools.ingest import IngestConfig, PoolInput, ingest
from instructscale.tokens import IGNORE, tokenize

WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def sharegpt_row(i: int) -> dict:
    return {
        "id": f"sg{i}",
        "system": "You are a helpful agent.",
        "tools": json.dumps([WEATHER]),
        "conversations": [
            {"from": "human", "value": f"What is the weather in city {i}?"},
            {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": f"c{i}"}})},
            {"from": "observation", "value": json.dumps({"temp": 20 + i})},
            {"from": "gpt", "value": f"It is {20 + i} degrees in city {i}."},
        ],
    }


def openai_row(i: int) -> dict:
    return {
        "id": f"oa{i}",
        "tools": [{"type": "function", "function": WEATHER}],
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": f"Weather in town {i}?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{i}",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": json.dumps({"city": f"t{i}"})},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": f"call_{i}", "content": f"{i} degrees"},
            {"role": "assistant", "content": f"{i} degrees."},
        ],
    }


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ingested(tmp_path: Path, inputs: list[PoolInput]) -> tuple[dict, dict[str, dict]]:
    m = ingest(IngestConfig(inputs=inputs, out_dir=str(tmp_path / "out")))
    rows = pq.read_table(tmp_path / "out" / "pool").to_pylist()
    return m, {r["id"]: r for r in rows}


def test_tool_calling_rows_ingest_without_quarantine(ray_local, tmp_path):
    sharegpt = write_jsonl(tmp_path / "sg.jsonl", [sharegpt_row(i) for i in range(10)])
    openai = write_jsonl(tmp_path / "oa.jsonl", [openai_row(i) for i in range(10)])
    m, rows = ingested(
        tmp_path, [PoolInput(path=str(sharegpt), format="sharegpt"), PoolInput(path=str(openai), format="jsonl")]
    )
    assert (m["rows"], m["quarantined"]) == (20, 0)
    sg = rows["sg3"]["messages"]
    assert [t["role"] for t in sg] == ["system", "user", "assistant", "tool", "assistant"]
    assert sg[2]["content"] is None and sg[2]["tool_calls"][0]["name"] == "get_weather"
    assert json.loads(sg[2]["tool_calls"][0]["arguments"]) == {"city": "c3"}
    assert json.loads(rows["sg3"]["tools"]) == [WEATHER]
    oa = rows["oa4"]["messages"]
    assert oa[0]["content"] == "Be brief." and oa[1]["content"] == "Weather in town 4?"
    assert oa[3]["role"] == "tool" and oa[3]["tool_call_id"] == "call_4"
    assert rows["oa4"]["instruction"] == "Weather in town 4?" and rows["oa4"]["output"] == "4 degrees."


def test_system_history_columns_hf_folders_and_images(ray_local, tmp_path):
    import datasets

    alpaca = write_jsonl(
        tmp_path / "alpaca.jsonl",
        [
            {
                "instruction": "And 3 + 3?",
                "output": "6",
                "system": "Answer with a number.",
                "history": [["What is 1 + 1?", "2"], ["And 2 + 2?", "4"]],
            }
        ],
    )
    mapped = write_jsonl(
        tmp_path / "mapped.jsonl",
        [
            {"q": "Name a colour.", "a": "Blue.", "sys": "Be short."},
            {"chat": [{"speaker": "me", "text": "Hi"}, {"speaker": "bot", "text": "Hello!"}]},
        ],
    )
    datasets.Dataset.from_list([{"instruction": f"Task {i}", "output": str(i)} for i in range(3)]).save_to_disk(
        str(tmp_path / "hf_arrow")
    )
    datasets.Dataset.from_list([{"instruction": "Parquet task", "output": "p"}]).to_parquet(
        str(tmp_path / "hf_parquet" / "train-00000.parquet")
    )
    images = write_jsonl(
        tmp_path / "images.jsonl",
        [
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {"type": "image_url", "image_url": {"url": "http://x/cat.png"}},
                        ],
                    },
                    {"role": "assistant", "content": "A cat."},
                ]
            }
        ],
    )
    m, rows = ingested(
        tmp_path,
        [
            PoolInput(path=str(alpaca), format="alpaca"),
            PoolInput(
                path=str(mapped),
                format="jsonl",
                columns={"prompt": "q", "response": "a", "system": "sys", "messages": "chat"},
                tags={"role_tag": "speaker", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"},
            ),
            PoolInput(path=str(tmp_path / "hf_arrow"), format="hf"),
            PoolInput(path=str(tmp_path / "hf_parquet"), format="hf"),
            PoolInput(path=str(images), format="jsonl"),
        ],
    )
    assert (m["rows"], m["quarantined"]) == (1 + 2 + 3 + 1, 1) and m["quarantine_reasons"] == {
        "unsupported_modality": 1
    }
    history = next(r for r in rows.values() if r["source"] == "alpaca.jsonl")
    assert [t["content"] for t in history["messages"]] == [
        "Answer with a number.",
        "What is 1 + 1?",
        "2",
        "And 2 + 2?",
        "4",
        "And 3 + 3?",
        "6",
    ]
    named = {r["instruction"]: r for r in rows.values() if r["source"] == "mapped.jsonl"}
    assert (
        named["Name a colour."]["output"] == "Blue."
        and named["Name a colour."]["messages"][0]["content"] == "Be short."
    )
    assert [t["role"] for t in named["Hi"]["messages"]] == ["user", "assistant"] and named["Hi"]["output"] == "Hello!"
    assert sorted(r["instruction"] for r in rows.values() if r["source"].endswith((".arrow", ".parquet"))) == [
        "Parquet task",
        "Task 0",
        "Task 1",
        "Task 2",
    ]


def test_label_mask_trains_every_assistant_turn_and_nothing_else(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["student"])
    row = {"id": "t", "messages": openai_row(7)["messages"], "tools": json.dumps([WEATHER])}
    from instructscale.pools.records import RecordLimits, normalize_record

    canonical = normalize_record(openai_row(7), style="auto", file="f", line=1, source="s", limits=RecordLimits())
    row = {**canonical, "messages": canonical["messages"]}
    ex = tokenize(row, tok, 1024)
    trained = tok.decode([t for t, label in zip(ex.input_ids, ex.labels) if label != IGNORE])
    call = render_tool_calls(canonical["messages"][2]["tool_calls"])
    assert trained == f"{call}<|end|>\n7 degrees.<|end|>\n", trained  # both assistant turns, with their ends
    # token by token: a label is its token on assistant turns and -100 on system, user and tool turns
    rendered = tok.apply_chat_template(plain_turns(canonical["messages"], canonical["tools"]), tokenize=False)
    enc = tok(rendered, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"] == ex.input_ids
    tool_turn = rendered.index("<|tool|>")
    for token, label, (start, _) in zip(ex.input_ids, ex.labels, enc["offset_mapping"]):
        in_assistant = any(a <= start < b for a, b in _assistant_spans(rendered))
        assert (label == token) == in_assistant and (label == IGNORE) != in_assistant
        if start >= tool_turn and start < rendered.index("<|assistant|>", tool_turn):
            assert label == IGNORE, "the tool's answer is not trained"
    assert "get_weather" in rendered[: rendered.index("<|user|>")], "tools join the system message"
    last_only = tokenize(row, tok, 1024, train_on="last")
    assert tok.decode([t for t, lb in zip(last_only.input_ids, last_only.labels) if lb != IGNORE]) == (
        "7 degrees.<|end|>\n"
    )


def _assistant_spans(rendered: str) -> list[tuple[int, int]]:
    spans, pos = [], 0
    while (start := rendered.find("<|assistant|>\n", pos)) >= 0:
        body = start + len("<|assistant|>\n")
        end = rendered.index("<|end|>\n", body) + len("<|end|>\n")
        spans.append((body, end))
        pos = end
    return spans


def test_a_tool_aware_template_gets_structured_turns_and_tools(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["student"])
    tok.chat_template = (
        "{% if tools %}<|system|>\n{{ tools | tojson }}<|end|>\n{% endif %}"
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
        "{% for c in m.get('tool_calls') or [] %}CALL {{ c['function']['name'] }}"
        "{{ c['function']['arguments'] | tojson }}{% endfor %}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    from instructscale.pools.records import RecordLimits, normalize_record

    row = normalize_record(openai_row(2), style="auto", file="f", line=1, source="s", limits=RecordLimits())
    ex = tokenize(row, tok, 1024)
    trained = tok.decode([t for t, label in zip(ex.input_ids, ex.labels) if label != IGNORE])
    assert trained == 'CALL get_weather{"city": "t2"}<|end|>\n2 degrees.<|end|>\n'
    text = tok.decode(ex.input_ids)
    assert '"name": "get_weather"' in text[: text.index("<|user|>")], "tools rendered by the template itself"


@pytest.mark.slow
def test_tool_rows_are_scored_and_selected(ray_local, tiny_models, tmp_path):
    from instructscale.config import parse_config
    from instructscale.select.config import SelectConfig
    from instructscale.select.stage import select

    path = write_jsonl(
        tmp_path / "tools.jsonl", [sharegpt_row(i) for i in range(12)] + [openai_row(i) for i in range(12)]
    )
    ingest(IngestConfig(inputs=[PoolInput(path=str(path), format="jsonl")], out_dir=str(tmp_path / "ingest")))
    m = select(
        parse_config(
            SelectConfig,
            {
                "input": str(tmp_path / "ingest" / "pool"),
                "out_dir": str(tmp_path / "sel"),
                "scorers": [{"kind": "model", "model": tiny_models["student"], "max_replicas": 1, "max_length": 1024}],
                "filters": ["length", "repetition", "control_characters", "refusal", "truncated"],
                "budget": {"fraction": 1.0},
                "dedup": {"near": False},
            },
        )
    )
    scores = pq.read_table(tmp_path / "sel" / "scores").to_pylist()
    assert all(r["loss"] is not None and r["model_error"] is None for r in scores), scores[:2]
    assert m["selected"] == 24 and m["removed"] == {}
