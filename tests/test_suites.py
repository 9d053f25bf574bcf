"""Evaluation suites: IFBench scored exactly as if-verifiable scores it, unscorable instructions
counted, the general set and the held-out rows."""

import json
from importlib import resources

from if_verifiable.common import evaluate_instructions

from instructscale.plugins import EvalSuite
from instructscale.suites import check_instructions, checker_registry


def test_ifbench_per_instruction_results_equal_if_verifiables_own_on_the_wheels_sample_outputs():
    data = resources.files("ifbench").joinpath("data")
    prompts = {r["prompt"]: r for r in map(json.loads, data.joinpath("IFBench_test.jsonl").read_text().splitlines())}
    samples = [json.loads(line) for line in data.joinpath("sample_output.jsonl").read_text().splitlines()]
    registry = checker_registry("ifbench")
    compared = unscorable = 0
    for sample in samples:
        row = prompts[sample["prompt"]]
        ours = check_instructions("ifbench", row, sample["response"])
        if any(r["strict"] is None for r in ours):
            unscorable += sum(r["strict"] is None for r in ours)
            continue
        theirs, _ = evaluate_instructions(
            sample["response"], row["instruction_id_list"], row["kwargs"], row["prompt"], registry
        )
        assert [(r["id"], r["strict"], r["loose"]) for r in ours] == [
            (t.instruction_id, t.strict_pass, t.loose_pass) for t in theirs
        ]
        compared += 1
    assert compared >= 250 and len(samples) == 294
    assert unscorable == sum(
        r["strict"] is None for s in samples for r in check_instructions("ifbench", prompts[s["prompt"]], s["response"])
    )


def test_the_ifbench_suite_reports_unscorable_instructions_and_scores_prompts_over_scorable_ones():
    suite = EvalSuite.registry.build(EvalSuite.registry.parse({"kind": "ifbench", "max_prompts": 294}))
    rows = suite.prompts(None)
    assert len(rows) == 294 and sum(len(r["instruction_id_list"]) for r in rows) == 335
    scored = [suite.score(r, "") for r in rows]  # an empty answer follows no instruction
    counts = suite.counts(scored)
    assert counts["instructions"] == 335 and counts["prompts"] == 294
    assert counts["prompts_fully_scorable"] + sum(s["prompt_strict"] is None for s in scored) == 294
    assert all(s["prompt_strict"] in (0.0, None) and s["instruction_loose"] in (0.0, None) for s in scored)
    print("unscorable instructions offline:", counts["unscorable"])


def test_general_and_holdout_score_known_answers():
    general = EvalSuite.registry.build(EvalSuite.registry.parse("general"))
    (first, *_) = rows = general.prompts(None)
    assert len(rows) == 30 and first["conversation"][-1]["content"] == "What is the capital of France?"
    assert general.score(first, first["reference"]) == {"rouge_l": 1.0, "words": 6.0}
    holdout = EvalSuite.registry.build(EvalSuite.registry.parse("holdout"))
    row = {"answer": "42", "reference": "The answer is 42."}
    assert holdout.score(row, "42.") == {"exact_match": 1.0, "token_f1": 0.4, "rouge_l": 0.4}


def test_a_bad_line_of_a_suites_jsonl_is_named(tmp_path):
    import pytest

    from instructscale.config import ConfigError

    path = tmp_path / "mine.jsonl"
    path.write_text('{"key": 1, "prompt": "Say hi.", "instruction_id_list": []}\n{"key": 2, "prompt": "x"\n')
    suite = EvalSuite.registry.build(EvalSuite.registry.parse({"kind": "instructions", "path": str(path)}))
    with pytest.raises(ConfigError, match=r"mine.jsonl:2: not valid JSON"):
        suite.prompts(None)
    path.write_text('{"key": 1, "prompt": "Say hi."}\n')
    with pytest.raises(ConfigError, match=r"mine.jsonl:1: missing \['instruction_id_list'\]"):
        suite.prompts(None)
