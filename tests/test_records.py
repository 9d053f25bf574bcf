"""normalize_record: every row style, and every malformed case names its field."""

import pytest

from instructscale.pools.records import RecordLimits, RowError, default_id, normalize_record
from instructscale.schema import decode_metadata

LIMITS = RecordLimits(max_field_chars=50, max_messages=4)


def norm(rec, style="auto"):
    return normalize_record(rec, style=style, file="f.jsonl", line=7, source="src", limits=LIMITS)


def test_instruction_row_defaults_and_extra_keys_to_metadata():
    row = norm({"instruction": "Do it.", "output": "done", "category": "x"})
    assert row["id"] == default_id("f.jsonl", 7)
    assert row["input"] == "" and row["output"] == "done" and row["messages"] is None
    assert row["source"] == "src"
    assert decode_metadata(row["metadata"]) == {"category": "x"}


def test_output_may_be_absent_but_not_wrong_type():
    assert norm({"instruction": "Do it."})["output"] is None
    with pytest.raises(RowError, match="field 'output' must be a string, got int"):
        norm({"instruction": "Do it.", "output": 3})


def test_sharegpt_conversation_maps_roles():
    row = norm(
        {
            "id": 5,
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "Hi?"},
                {"from": "gpt", "value": "Hello."},
            ],
        }
    )
    assert row["id"] == "5"
    assert row["instruction"] == "Hi?" and row["output"] == "Hello."
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]


def test_openai_messages_without_final_assistant_has_null_output():
    row = norm({"messages": [{"role": "user", "content": "Q"}]}, style="chat")
    assert row["output"] is None and row["instruction"] == "Q"


@pytest.mark.parametrize(
    "rec,style,code,text",
    [
        ([1, 2], "auto", "wrong_type", "row must be a JSON object, got list"),
        ({"input": "x"}, "auto", "missing_field", "missing field 'instruction'"),
        ({"instruction": "  "}, "auto", "empty_field", "field 'instruction' is empty"),
        ({"instruction": "x" * 51}, "auto", "oversize", "field 'instruction' has 51 chars"),
        ({"instruction": "a", "metadata": [1]}, "auto", "wrong_type", "field 'metadata' must be an object"),
        ({"instruction": "a", "id": 1.5}, "auto", "wrong_type", "field 'id'"),
        ({"conversations": [{"from": "robot", "value": "x"}]}, "auto", "bad_value", "unknown role 'robot'"),
        ({"conversations": [{"from": "human"}]}, "auto", "missing_field", "conversations[0].value"),
        ({"conversations": [{"from": "gpt", "value": "x"}]}, "auto", "empty_field", "no non-empty user turn"),
        ({"conversations": [{"from": "human", "value": "x"}] * 5}, "auto", "oversize", "5 turns"),
        ({"conversations": []}, "auto", "empty_field", "'conversations' is empty"),
        ({"instruction": "a"}, "chat", "missing_field", "'conversations'"),
        ({"conversations": [{"from": "human", "value": "x"}]}, "instruction", "wrong_format", "chat"),
    ],
)
def test_malformed_rows_name_the_problem(rec, style, code, text):
    with pytest.raises(RowError) as info:
        norm(rec, style)
    assert info.value.code == code
    assert text in str(info.value)
