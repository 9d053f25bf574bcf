"""Synthesis through the generation stage with a scripted teacher (a backend plug-in of this file
whose answers follow from the prompt): iterative Self-Instruct (rounds, every filter's count,
instances for classification tasks, resume after a killed round) and multi-round Evol-Instruct
(chains of operations, every elimination counted)."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from rouge_score import rouge_scorer

from helpers import kill_generate_when
from instructscale.backends.base import Completion
from instructscale.config import parse_config
from instructscale.generate.config import GenerateConfig, GenerateOptions
from instructscale.generate.novelty import NoveltyIndex
from instructscale.generate.stage import GEN_SCHEMA, generate, read_generated
from instructscale.generate.tasks import parse_instance, parse_tasks, task_problem
from instructscale.plugins import Backend, GenerationMode, PluginConfig, register
from instructscale.pools.ingest import IngestConfig, PoolInput, ingest
from instructscale.schema import decode_metadata, encode_metadata

SEEDS = [
    ("Give three tips for staying healthy.", False),
    ("Translate the sentence into French.", False),
    ("Classify the sentiment of the review as positive or negative.", True),
    ("Sort the numbers in ascending order.", False),
    ("Is the statement true or false?", True),
    ("Suggest a name for a pet turtle.", False),
]
SHARED = "Write a haiku about the ocean at night."  # every proposal repeats it: accepted once


EVOLVED = [  # by fate: copied_template, teacher_refused, empty_answer, no_information_gain, survives
    "#Rewritten Prompt#: {task} harder",
    "{task} (refuse)",
    "{task} (stopwords)",
    "{task} (same)",
    "{task} (deeper)",
]
REASONS = ["copied_template", "teacher_refused", "empty_answer", "no_information_gain", None]


def fate(task: str) -> int:
    """An index into EVOLVED: each elimination 1 time in 8, survival 4 in 8."""
    return min(int(hashlib.sha256(task.encode()).hexdigest(), 16) % 8, 4)


def _words(text: str, k: int) -> list[str]:
    digest = hashlib.sha256(text.encode()).hexdigest()
    return [f"w{digest[4 * i : 4 * i + 4]}" for i in range(k)]


def scripted_answer(prompt: str) -> str:
    """What the scripted teacher says to each kind of prompt."""
    if "Come up with" in prompt:  # a proposal: one task of each fate
        seed = next(s for s, _ in SEEDS if s in prompt)
        a, b, c, d = _words(prompt, 4)
        new = (
            f"Classify {a} {b} {c} {d} as positive or negative"
            if int(a[1:], 16) % 2
            else f"Explain {a} {b} {c} {d} simply"
        )
        return (
            "Sure, here are five new tasks:\n"
            f"1. {seed}\n"  # too_similar: a copy of a seed task
            f"2. Draw a picture of {a} and {b} please.\n"  # blacklisted_keyword
            f"3. Hi {c}.\n"  # too_short
            f"4. {new}\n"  # accepted
            f"5. {SHARED}"
        )
    if "Rewrite the task below" in prompt:  # evolve: each instruction's fate follows from its hash
        task = next(line[len("Task: ") :] for line in prompt.splitlines() if line.startswith("Task: "))
        return EVOLVED[fate(task)].format(task=task)
    if "The First Prompt:" in prompt:
        return "Equal" if "(same)" in prompt.split("The Second Prompt:")[1] else "Not Equal"
    if "(refuse)" in prompt:
        return "Sorry, I cannot help with that."
    if "(stopwords)" in prompt:
        return "The, of and a."
    if "(deeper)" in prompt:
        return "Here is a detailed answer."
    if "classification task, one whose answer" in prompt:
        return "Yes" if "Task: Classify" in prompt else "No"
    if "Class label:" in prompt:
        return "Class label: positive\nInput: What a lovely day."
    return "Input: None\nOutput: An answer."


@register("scripted_teacher")
class ScriptedTeacher(Backend):
    """Answers from :func:`scripted_answer`; logs every prompt; optionally slow on proposals."""

    remote = True

    class Config(PluginConfig):
        kind: str = "scripted_teacher"
        log: str
        delay_s: float = 0.0

    def __init__(self, config, model, api_key=None):
        super().__init__(config, model)

    def generate(self, conversations, sampling):
        if any("Come up with" in c[-1]["content"] for c in conversations):
            time.sleep(self.config.delay_s)
        with open(self.config.log, "a") as f:
            for c in conversations:
                f.write(json.dumps(c[-1]["content"]) + "\n")
        return [[Completion(scripted_answer(c[-1]["content"]), 5, None, "stop")] * sampling.n for c in conversations]


def seed_pool(tmp_path: Path) -> str:
    path = tmp_path / "seed_tasks.jsonl"
    lines = [
        {
            "id": f"seed_task_{i}",
            "name": f"t{i}",
            "instruction": text,
            "is_classification": cls,
            "instances": [{"input": "", "output": "x"}],
        }
        for i, (text, cls) in enumerate(SEEDS)
    ]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    ingest(IngestConfig(inputs=[PoolInput(path=str(path), format="seed_tasks")], out_dir=str(tmp_path / "seeds")))
    return str(tmp_path / "seeds" / "pool")


def si_config(tmp_path: Path, out: str, **backend) -> GenerateConfig:
    """Self-Instruct over the 6 seeds with the scripted teacher: rounds of 4 prompts until 7 new
    tasks are accepted (round 2 reaches the target, so round 3 never runs)."""
    return parse_config(
        GenerateConfig,
        {
            "plugins": [__file__],
            "input": seed_pool(tmp_path) if not (tmp_path / "seeds").exists() else str(tmp_path / "seeds" / "pool"),
            "out_dir": str(tmp_path / out),
            "model": "scripted",
            "mode": "self_instruct",
            "self_instruct": {"rounds": 3, "target_tasks": 7, "prompts_per_round": 4},
            "backend": {"kind": "scripted_teacher", "log": str(tmp_path / f"{out}.log"), **backend},
            "replicas": {"batch_size": 1, "min_replicas": 1, "max_replicas": 1},
            "sampling": {"n": 1, "max_tokens": 64},
        },
    )


@pytest.fixture(scope="module")
def self_instruct_run(ray_local, tmp_path_factory) -> tuple[GenerateConfig, dict]:
    cfg = si_config(tmp_path_factory.mktemp("self_instruct"), "clean")
    return cfg, generate(cfg)


def options(mode: str, **section) -> GenerateOptions:
    return parse_config(GenerateOptions, {"mode": mode, mode: section, "sampling": {"n": 1}})


def completion(text: str) -> list[Completion]:
    return [Completion(text, 5, None, "stop")]


@pytest.mark.parametrize(
    "answer,tasks",
    [
        ("1. Write the plural of mouse.", ["Write the plural of mouse."]),
        ("Here is a new task:", []),
        ("Sure!", []),
        (
            "Sure, here are three different tasks:\n1. Name a prime above 10.\n2) **Task:** Translate 'cat' into "
            "French.\n- Sort these: 3, 1, 2\nInput: 3, 1, 2\nOutput: 1, 2, 3\n1. Name a prime above 10.",
            ["Name a prime above 10.", "Translate 'cat' into French.", "Sort these: 3, 1, 2"],
        ),
        ('Task 4: "Explain why the sky is blue."', ["Explain why the sky is blue."]),
        ("- 1. Suggest a title for the story.", ["Suggest a title for the story."]),
        (
            "Write a subject line, 2. Find the odd word, 3. Sort the numbers.",
            ["Write a subject line", "Find the odd word", "Sort the numbers."],
        ),
        ("Compute 3 + 4. Then add 2.", ["Compute 3 + 4. Then add 2."]),  # not a list
    ],
)
def test_teacher_answers_are_parsed_into_tasks(answer, tasks):
    assert parse_tasks(answer) == tasks


def test_self_instruct_task_checks():
    assert [
        task_problem(t)
        for t in [
            "Draw a cat for me now",
            "Plot the sales of last year",
            "Go to the shop and buy milk",
            "ok go",
            '"Quote a poem about rain',
            "\u00c9crire un po\u00e8me sur la pluie",
            "Explain how a mapping between sets works",
            " ".join(["word"] * 151),
        ]
    ] == [
        "blacklisted_keyword",
        "blacklisted_keyword",
        "blacklisted_keyword",
        "too_short",
        "starts_with_punctuation",
        "non_ascii_start",
        None,  # "mapping" is not "map"
        "too_long",
    ]
    assert parse_instance("Input: None\nOutput: Paris.\nIt is big.", output_first=False) == ("", "Paris.\nIt is big.")
    assert parse_instance("**Class label:** negative\n**Input:** Awful food.", output_first=True) == (
        "Awful food.",
        "negative",
    )
    assert parse_instance("The answer is 4", output_first=False) is None
    assert parse_instance("Output: 42", output_first=False) == ("", "42")  # a task without input
    assert parse_instance("Output: 42", output_first=True) is None  # a class label is needed


def test_the_mode_section_holds_the_mode_options():
    opts = options("self_instruct", rounds=2, target_tasks=60)
    assert (opts.mode.kind, opts.mode.rounds, opts.mode.target_tasks, opts.mode.rouge_l_max) == (
        "self_instruct",
        2,
        60,
        0.7,
    )


def step(opts, name: str) -> GenerationMode:
    """The mode as the actors of the pass ``name`` build it."""
    return GenerationMode.registry.build(opts.mode, opts, name)


def test_a_proposal_becomes_candidates_and_each_filter_names_its_reason():
    opts = options("self_instruct", prompts_per_round=1)
    mode = step(opts, "propose")
    seeds = [{"id": f"s{i}", "instruction": text} for i, (text, _) in enumerate(SEEDS)]
    (prompt,) = mode._round_prompts(1, seeds, [], remaining=10)
    assert prompt["instruction"].startswith("Here are some example tasks:\n1. ")
    answer = scripted_answer(prompt["instruction"])
    candidates = mode.outputs(
        prompt, completion(answer + "\n6. Explain the water cycle.\n7. \u00c9crire un po\u00e8me sur la mer.")
    )
    index, ids = NoveltyIndex(), []
    for seed in seeds:
        index.add(index.tokenize(seed["instruction"]))
        ids.append(seed["id"])
    table = pa.Table.from_pylist(candidates, schema=GEN_SCHEMA)
    kept, dropped = mode._filter(table, index, ids, remaining=2)
    assert sorted(dropped["reject_reason"].to_pylist()) == [
        "blacklisted_keyword",
        "non_ascii_start",
        "over_target",
        "too_short",
        "too_similar",
    ]
    assert kept.num_rows == 2 and len(ids) == len(seeds) + 2  # accepted tasks join the pool, in order
    similar = next(r for r in dropped.to_pylist() if r["reject_reason"] == "too_similar")
    meta = decode_metadata(similar["metadata"])
    assert meta["rouge_l"] == 1.0 and meta["most_similar"].startswith("s") and "phase" not in meta
    assert "phase" not in decode_metadata(kept["metadata"][0].as_py())  # the pass, not the row, knows its step


def test_classification_tasks_get_output_first_instances():
    opts = options("self_instruct")
    classify, instance = step(opts, "classify"), step(opts, "instance")
    task = {"id": "t", "instruction": "Classify the review as positive or negative.", "input": "", "output": None}
    row = {**task, "messages": None, "source": "x", "tools": None, "metadata": encode_metadata({})}
    (asked,) = classify.prompts([row])
    (classified,) = classify.outputs(row, completion(scripted_answer(asked[-1]["content"])))
    assert decode_metadata(classified["metadata"]) == {"is_classification": True}
    (asked,) = instance.prompts([classified])
    assert "Class label:" in asked[-1]["content"]
    (done,) = instance.outputs(classified, completion(scripted_answer(asked[-1]["content"])))
    assert (done["input"], done["output"], done["reject_reason"]) == ("What a lovely day.", "positive", None)
    (bad,) = instance.outputs(classified, completion("I am not sure."))
    assert bad["reject_reason"] == "no_instance"


def test_evolve_phases_rewrite_answer_judge():
    opts = options("evolve", rounds=2)
    mode, answer, judge = step(opts, "rewrite"), step(opts, "answer"), step(opts, "judge")
    base = {"input": "", "output": None, "messages": None, "source": "x", "tools": None, "metadata": "{}"}
    task = next(f"Add {i} and {i + 1}." for i in range(100) if fate(f"Add {i} and {i + 1}.") == 4)
    row = {**base, "id": "t1", "instruction": task}
    (asked,) = mode.prompts([row])
    (evolved,) = mode.outputs(row, completion(scripted_answer(asked[-1]["content"])))
    meta = decode_metadata(evolved["metadata"])
    assert (
        evolved["instruction"] == f"{task} (deeper)" and evolved["id"] == "t1#ev0" and evolved["reject_reason"] is None
    )
    assert meta["round"] == 1 and meta["evolution"][0] in opts.mode.ops and "phase" not in meta
    (answered,) = answer.outputs(evolved, completion("Here is a detailed answer."))
    assert answered["output"] == "Here is a detailed answer." and answered["reject_reason"] is None
    assert task in judge.prompts([answered])[0][-1]["content"]  # the judge sees the instruction it came from
    (judged,) = judge.outputs(answered, completion("Not Equal"))
    assert judged["reject_reason"] is None and decode_metadata(judged["metadata"]) == {
        "evolved_from": "t1",
        "evolution": meta["evolution"],
        "round": 1,
    }
    assert judge.outputs(answered, completion("Equal."))[0]["reject_reason"] == "no_information_gain"
    for text, reason in [("Sorry, I can't.", "teacher_refused"), ("The, of and a!", "empty_answer")]:
        (out,) = answer.outputs(evolved, completion(text))
        assert out["reject_reason"] == reason and "phase" not in decode_metadata(out["metadata"])
    for text, reason in [
        ("#Rewritten Prompt#: harder", "copied_template"),
        (task, "unchanged_instruction"),
        ("", "empty_generation"),
    ]:
        assert mode.outputs(row, completion(text))[0]["reject_reason"] == reason


@pytest.mark.slow
def test_two_rounds_count_every_filter_and_give_instances(self_instruct_run):
    cfg, m = self_instruct_run
    rows = read_generated(cfg.out_dir, include_rejected=True).to_pylist()
    by_round = Counter((decode_metadata(r["metadata"])["round"], r["reject_reason"]) for r in rows)
    # round 1: 4 prompts x 5 tasks; SHARED is accepted once; round 2 finds it (and the copies) too
    # similar and reaches the target with its second new task; no round 3
    assert by_round == {
        (1, None): 5,
        (1, "too_similar"): 7,
        (1, "blacklisted_keyword"): 4,
        (1, "too_short"): 4,
        (2, None): 2,
        (2, "over_target"): 2,
        (2, "too_similar"): 8,
        (2, "blacklisted_keyword"): 4,
        (2, "too_short"): 4,
    }
    assert m["rows"] == 7
    assert m["rejected"] == {"too_similar": 15, "blacklisted_keyword": 8, "too_short": 8, "over_target": 2}

    accepted = [r for r in rows if r["reject_reason"] is None]
    round1 = {r["id"] for r in accepted if decode_metadata(r["metadata"])["round"] == 1}
    for r in accepted:
        meta = decode_metadata(r["metadata"])
        assert meta["is_classification"] == r["instruction"].startswith("Classify")
        if meta["is_classification"]:  # output-first: the label is the output
            assert (r["input"], r["output"]) == ("What a lovely day.", "positive")
        else:
            assert (r["input"], r["output"]) == ("", "An answer.")
        assert meta["instances"] == [{"input": r["input"], "output": r["output"]}]
        assert len(meta["examples"]) == (6 if meta["round"] == 1 else 8) and "phase" not in meta
        if meta["round"] == 2:  # 6 seeds and 2 machine tasks of round 1 in every round-2 prompt
            assert len(set(meta["examples"]) & round1) == 2
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    texts = [s for s, _ in SEEDS] + [r["instruction"] for r in accepted]
    worst = max(scorer.score(a, b)["rougeL"].fmeasure for i, a in enumerate(texts) for b in texts[i + 1 :])
    assert worst < 0.7
    similar = [r for r in rows if r["reject_reason"] == "too_similar"]
    assert all(decode_metadata(r["metadata"])["rouge_l"] >= 0.7 for r in similar)


@pytest.mark.slow
def test_a_killed_round_resumes_without_redoing_finished_rounds(self_instruct_run, tmp_path):
    clean_cfg, clean = self_instruct_run
    cfg = si_config(tmp_path, "out", delay_s=1.0)
    done = tmp_path / "out"
    kill_generate_when(
        cfg, tmp_path / "si.yaml", lambda: any(done.glob("work/*/accepted/_commits/round-1.parquet.json"))
    )
    log = tmp_path / "out.log"
    proposals = [p for p in map(json.loads, log.read_text().splitlines()) if "Come up with" in p]
    assert len(proposals) >= 4 and not (tmp_path / "out" / "_manifest.json").exists()
    kept = len(list((tmp_path / "out").glob("work/*/round-2/rows/_commits/*.json")))

    resumed = generate(cfg)
    after = [p for p in map(json.loads, log.read_text().splitlines()) if "Come up with" in p]
    round1 = set(proposals[:4])
    assert sum(p in round1 for p in after) == 4, "round 1 was not asked again"
    assert len(after) == 8 + (len(proposals) - 4) - kept, "round 2 parts committed before the kill are kept"
    table = read_generated(cfg.out_dir, include_rejected=True)
    again = read_generated(clean_cfg.out_dir, include_rejected=True)
    assert sorted(zip(table["id"].to_pylist(), table["instruction"].to_pylist())) == sorted(
        zip(again["id"].to_pylist(), again["instruction"].to_pylist())
    )
    assert (resumed["rows"], resumed["rejected"]) == (clean["rows"], clean["rejected"])
    assert not list((tmp_path / "out").glob("work")), "intermediate datasets are removed at publish"


@pytest.mark.slow
def test_evolve_rounds_chain_operations_and_count_eliminations(ray_local, tmp_path):
    tasks = [f"Compute the sum of {i} and {2 * i + 1}." for i in range(40)]
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"t{i}", "instruction": t}) for i, t in enumerate(tasks)) + "\n")
    ingest(IngestConfig(inputs=[PoolInput(path=str(path), format="jsonl")], out_dir=str(tmp_path / "in")))
    cfg = parse_config(
        GenerateConfig,
        {
            "plugins": [__file__],
            "input": str(tmp_path / "in" / "pool"),
            "out_dir": str(tmp_path / "out"),
            "model": "scripted",
            "mode": "evolve",
            "evolve": {"rounds": 2},
            "backend": {"kind": "scripted_teacher", "log": str(tmp_path / "evolve.log")},
            "replicas": {"batch_size": 8, "min_replicas": 1, "max_replicas": 1},
            "sampling": {"n": 1, "max_tokens": 64},
        },
    )
    m = generate(cfg)
    rows = read_generated(cfg.out_dir, include_rejected=True).to_pylist()
    expected, frontier = Counter(), tasks
    for r in (1, 2):  # what the script says should happen, round by round
        expected.update((r, REASONS[fate(t)]) for t in frontier)
        frontier = [f"{t} (deeper)" for t in frontier if REASONS[fate(t)] is None]
    got = Counter((decode_metadata(r["metadata"])["round"], r["reject_reason"]) for r in rows)
    assert got == expected and {r for r, _ in got} == {1, 2}
    assert m["rows"] == sum(v for (_, reason), v in expected.items() if reason is None)
    assert set(m["rejected"]) == set(REASONS[:4])
    by_id = {r["id"]: r for r in rows}
    for row in rows:
        meta = decode_metadata(row["metadata"])
        assert len(meta["evolution"]) == meta["round"] and set(meta["evolution"]) <= set(cfg.mode.ops)
        assert "phase" not in meta and "evolved_from_instruction" not in meta
        assert row["parent_id"] == meta["evolved_from"] and row["id"].count("#ev") == meta["round"]
        if meta["round"] > 1:  # a survivor of the round before is the parent, with the chain so far
            parent = decode_metadata(by_id[meta["evolved_from"]]["metadata"])
            assert meta["evolution"][:-1] == parent["evolution"]
        if row["reject_reason"] is None:
            assert row["output"] == "Here is a detailed answer." and row["instruction"].endswith("(deeper)")
