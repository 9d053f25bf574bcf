"""Evol-Instruct over several rounds, with WizardLM's elimination (Xu et al. 2023).

Each round rewrites every surviving instruction by one operation chosen at random per row and
round: in-depth (add constraints, deepen, concretize, more reasoning steps, complicate the input)
or in-breadth (a new, rarer task in the same domain). An evolved instruction is eliminated when
- it copies the rewriting prompt's own words ("#Rewritten Prompt#", "given prompt", ...);
- the teacher's answer to it says "sorry" and is short, or holds only punctuation and stop words;
- the teacher judges it equal to the instruction it came from (no information gain).
Survivors of round r are the input of round r + 1; every round's rows, survivors and eliminated
ones with their reason, are the stage's output, with ``metadata.evolution`` (the chain of
operations) and ``metadata.round``; a survivor's ``output`` is the teacher's answer to it.

Three passes of the teacher a round: rewrite, answer, judge (the last two can be turned off with
``eliminate: false``). Resume is per pass part, and a finished round is never redone.
"""

from __future__ import annotations

import re

from pydantic import Field

from instructscale import storage
from instructscale.backends.base import Completion, Conversation, SamplingConfig
from instructscale.generate.modes import Mode, packaged_template
from instructscale.generate.tasks import is_only_stop_words, parse_tasks
from instructscale.lifecycle import part_files
from instructscale.plugins import Passes, PluginConfig, register
from instructscale.schema import decode_metadata, encode_metadata

DEFAULT_OPS = {  # in-depth evolving, then in-breadth
    "constraints": "add one more constraint or requirement",
    "deepen": "ask about the same problem in more depth",
    "concretize": "replace general concepts with more specific ones",
    "reasoning": "require more reasoning steps to reach the answer",
    "complicate_input": "add a more complex input (data, a table or code) that the task must work on",
    "breadth": "create a new, rarer task in the same domain",
}
TEMPLATE_WORDS = ("#rewritten prompt#", "#given prompt#", "#created prompt#", "given prompt", "rewritten prompt")
REWRITE, ANSWER, JUDGE = "rewrite", "answer", "judge"


@register("evolve")
class Evolve(Mode):
    """Multi-round Evol-Instruct with elimination."""

    multi_pass = True

    class Config(PluginConfig):
        kind: str = "evolve"
        rounds: int = Field(1, ge=1, description="evolution rounds (M)")
        ops: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_OPS), min_length=1)
        template: str | None = Field(None, description="prompt text with {operation}, {instruction}, {input_line}")
        eliminate: bool = Field(True, description="answer and judge each evolved instruction (two more passes)")
        refusal_max_words: int = Field(
            80, ge=1, description="an answer with 'sorry' under this many words is a refusal"
        )

    def _op(self, row: dict) -> str:
        return self.rng(row["id"]).choice(sorted(self.config.ops))

    # -- in the teacher actors
    def prompts(self, rows: list[dict]) -> list[Conversation]:
        return [[*self.system, {"role": "user", "content": self._prompt(row)}] for row in rows]

    def _prompt(self, row: dict) -> str:
        if self.step == ANSWER:
            return row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        if self.step == JUDGE:
            before = decode_metadata(row["metadata"])["evolved_from_instruction"]
            return packaged_template("evolve_judge").format(before=before, after=row["instruction"])
        return (self.config.template or packaged_template("evolve")).format(
            operation=self.config.ops[self._op(row)],
            instruction=row["instruction"],
            input_line=f"Input: {row['input']}" if row.get("input") else "",
        )

    def outputs(self, row: dict, completions: list[Completion]) -> list[dict]:
        if self.step == REWRITE:
            return [self._evolved(row, c, i) for i, c in enumerate(completions)]
        meta, text = decode_metadata(row["metadata"]), completions[0].text
        before = meta.pop("evolved_from_instruction")
        if self.step == ANSWER:
            reason = None
            if "sorry" in text.lower() and len(text.split()) < self.config.refusal_max_words:
                reason = "teacher_refused"
            elif is_only_stop_words(text):
                reason = "empty_answer"
            if reason is None:  # on to the judge
                meta.update(evolved_from_instruction=before)
            out = self.output_row(row, completions[0], 0, output=text, metadata=encode_metadata(meta))
            out["reject_reason"] = reason
            return [out]
        out = self.output_row(row, None, 0, output=row["output"], metadata=encode_metadata(meta))
        if re.match(r"\W*equal\b", text.strip(), re.I):
            out["reject_reason"] = "no_information_gain"
        return [out]

    def _evolved(self, row: dict, c: Completion, i: int) -> dict:
        tasks = parse_tasks(c.text)
        instruction = tasks[0] if tasks else ""
        parent = decode_metadata(row["metadata"])
        meta = {
            **parent,
            "evolved_from": row["id"],
            "evolution": [*parent.get("evolution", []), self._op(row)],
            "round": parent.get("round", 0) + 1,
        }
        meta.pop("answer", None)  # the rewritten task no longer has the parent's answer
        reason = _rewrite_problem(instruction, row["instruction"])
        if self.config.eliminate and reason is None:  # on to the answer and judge passes
            meta.update(evolved_from_instruction=row["instruction"])
        out = self.output_row(
            row,
            c,
            i,
            id=f"{row['id']}#ev{i}",
            instruction=instruction,
            output=None,
            messages=None,
            metadata=encode_metadata(meta),
        )
        out["reject_reason"] = reason
        return out

    # -- on the driver
    def drive(self, passes: Passes) -> None:
        source = passes.input
        sampling = self.options.sampling
        answer = SamplingConfig(n=1, temperature=0.0, max_tokens=sampling.max_tokens, seed=sampling.seed)
        judge = answer.model_copy(update={"max_tokens": 4})
        for r in range(1, self.config.rounds + 1):
            marker = passes.work("rounds", f"round-{r}.json")
            if storage.exists(marker):
                source = storage.read_json(marker)["survivors"]
                continue
            if not part_files(source):
                break  # nothing survived the round before
            rewritten = passes.generate(source, passes.work(f"round-{r}", REWRITE), f"round {r} rewrite", REWRITE)
            if self.config.eliminate:
                answered = passes.generate(
                    rewritten, passes.work(f"round-{r}", ANSWER), f"round {r} answer", ANSWER, answer
                )
                judged = passes.generate(answered, passes.work(f"round-{r}", JUDGE), f"round {r} judge", JUDGE, judge)
                passes.copy_parts(rewritten, f"r{r}-{REWRITE}", rejected_only=True, parent_key="evolved_from")
                passes.copy_parts(answered, f"r{r}-{ANSWER}", rejected_only=True, parent_key="evolved_from")
                source = judged
            else:
                source = rewritten
            passes.copy_parts(source, f"r{r}", parent_key="evolved_from")
            storage.write_json(marker, {"survivors": source})


def _rewrite_problem(instruction: str, before: str) -> str | None:
    """Why an evolved instruction is eliminated before it reaches the teacher again, or None."""
    if not instruction:
        return "empty_generation"
    if instruction.strip().lower() == before.strip().lower():
        return "unchanged_instruction"
    if any(w in instruction.lower() for w in TEMPLATE_WORDS):
        return "copied_template"
    return None
