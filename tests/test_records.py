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


def test_self_instruct_seed_task_keeps_every_instance_in_metadata():
    instances = [{"input": "I loved it.", "output": "positive"}, {"input": "Awful.", "output": "negative"}]
    rec = {"id": "seed_task_3", "name": "sentiment", "instruction": "Classify the sentiment.", "instances": instances}
    row = norm({**rec, "is_classification": True}, "seed_task")
    assert (row["id"], row["instruction"], row["input"], row["output"]) == (
        "seed_task_3",
        "Classify the sentiment.",
        "I loved it.",
        "positive",
    )
    meta = decode_metadata(row["metadata"])
    assert meta == {"name": "sentiment", "instances": instances, "is_classification": True}
    assert decode_metadata(norm(rec, "seed_task")["metadata"])["is_classification"] is False


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
        ({"instruction": "a"}, "seed_task", "missing_field", "'instances'"),
        ({"instruction": "a", "instances": []}, "seed_task", "wrong_type", "non-empty list"),
        ({"instances": [{"input": "", "output": "b"}]}, "seed_task", "missing_field", "'instruction'"),
    ],
)
def test_malformed_rows_name_the_problem(rec, style, code, text):
    with pytest.raises(RowError) as info:
        norm(rec, style)
    assert info.value.code == code
    assert text in str(info.value)
