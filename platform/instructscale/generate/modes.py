"""The built-in generation modes (plug-ins): what each asks the teacher and how completions become
output rows.

distill       one teacher response per row (replacing or filling `output`)
sample        k responses per row, each its own row with `sample_idx` and `gen_logprob`
self_instruct new instructions written from a few seed tasks (output left empty for a later distill)
evolve        Evol-Instruct rewrites of each instruction (deeper, more constrained, ...)
"""

from __future__ import annotations

import random
import re
from importlib import resources

from pydantic import Field

from instructscale.backends.base import Completion, Conversation
from instructscale.chat import engine_turns, prompt_turns, user_turn
from instructscale.plugins import GenerationMode, PluginConfig, register
from instructscale.schema import decode_metadata, encode_metadata

DEFAULT_EVOLVE_OPS = {
    "deepen": "ask for a deeper version of the same problem",
    "constrain": "add one more constraint or requirement",
    "concretize": "replace general concepts with more specific ones",
    "reasoning": "require more reasoning steps to reach the answer",
    "breadth": "create a new, rarer task in the same domain",
}


def packaged_template(name: str) -> str:
    return resources.files("instructscale.templates").joinpath(f"{name}.txt").read_text()


def _clean_instruction(text: str) -> str:
    """First non-empty line of a synthesised task, without a 'Task:'/'Instruction:' label."""
    for line in text.strip().splitlines():
        line = re.sub(r"^\s*(new\s+)?(task|instruction)\s*:\s*", "", line, flags=re.I).strip()
        if line:
            return line
    return ""


class Mode(GenerationMode):
    """Shared helpers of the built-in modes."""

    @property
    def system(self) -> Conversation:
        prompt = self.options.system_prompt
        return [{"role": "system", "content": prompt}] if prompt else []

    def rng(self, row_id: str) -> random.Random:
        return random.Random(f"{self.options.sampling.seed}:{self.name}:{row_id}")

    def model_name(self) -> str:
        return str(getattr(self.options, "model", "teacher")).rstrip("/").rsplit("/", 1)[-1]


@register("distill")
class Distill(Mode):
    """One teacher answer per row; the row's old output is kept in ``metadata.original_output``."""

    class Config(PluginConfig):
        kind: str = "distill"
        only_missing: bool = Field(False, description="keep rows that already have an output")

    def check(self) -> None:
        if self.options.sampling.n != 1:
            raise ValueError(f"mode '{self.name}' takes one response per row: set sampling.n to 1 or use mode 'sample'")

    def needs_teacher(self, row: dict) -> bool:
        return not (getattr(self.config, "only_missing", False) and (row.get("output") or "").strip())

    def prompts(self, rows: list[dict]) -> list[Conversation]:
        return [engine_turns(prompt_turns(row, self.system), row.get("tools")) for row in rows]

    def outputs(self, row: dict, completions: list[Completion]) -> list[dict]:
        rows = []
        meta = decode_metadata(row["metadata"])
        if row.get("output"):
            meta["original_output"] = row["output"]
        prompt = prompt_turns(row, self.system) if row.get("messages") else None
        for i, c in enumerate(completions):
            messages = [*prompt, {"role": "assistant", "content": c.text}] if prompt else None
            out = self.output_row(
                row,
                c,
                i,
                output=c.text,
                messages=messages,
                metadata=encode_metadata(meta),
                id=row["id"] if len(completions) == 1 else f"{row['id']}#s{i}",
            )
            if not c.text.strip():
                out["reject_reason"] = "empty_generation"
            rows.append(out)
        return rows


@register("sample")
class Sample(Distill):
    """``sampling.n`` answers per row (best-of-n / rejection sampling), each its own row."""

    class Config(PluginConfig):
        kind: str = "sample"

    def check(self) -> None:
        sampling = self.options.sampling
        if sampling.n < 2:
            raise ValueError("mode 'sample' needs sampling.n >= 2 (k samples per instruction)")
        if sampling.temperature == 0:
            raise ValueError("mode 'sample' needs sampling.temperature > 0, or all k samples are identical")


@register("self_instruct")
class SelfInstruct(Mode):
    """New tasks written from seed tasks shown in the prompt (output left for a later distill)."""

    class Config(PluginConfig):
        kind: str = "self_instruct"
        examples_per_prompt: int = Field(3, ge=1, description="seed tasks shown per prompt")
        template: str | None = Field(None, description="prompt text with {examples}; default: the packaged one")

    def prompts(self, rows: list[dict]) -> list[Conversation]:
        template = self.config.template or packaged_template("self_instruct")
        out = []
        for row in rows:
            others = [r for r in rows if r["id"] != row["id"]]
            seeds = [row, *self.rng(row["id"]).sample(others, min(len(others), self.config.examples_per_prompt - 1))]
            examples = "\n".join(f"{i + 1}. {user_turn(r)}" for i, r in enumerate(seeds))
            out.append([*self.system, {"role": "user", "content": template.format(examples=examples)}])
        return out

    def outputs(self, row: dict, completions: list[Completion]) -> list[dict]:
        rows = []
        for i, c in enumerate(completions):
            instruction = _clean_instruction(c.text)
            meta = {"synthesized_from": row["id"], "method": "self_instruct"}
            out = self.output_row(
                row,
                c,
                i,
                id=f"{row['id']}#si{i}",
                instruction=instruction,
                input="",
                output=None,
                messages=None,
                source=f"self_instruct/{self.model_name()}",
                metadata=encode_metadata(meta),
            )
            if not instruction:
                out["reject_reason"] = "empty_generation"
            rows.append(out)
        return rows


@register("evolve")
class Evolve(Mode):
    """Evol-Instruct rewrites of each instruction by one operation chosen per row."""

    class Config(PluginConfig):
        kind: str = "evolve"
        ops: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_EVOLVE_OPS), min_length=1)
        template: str | None = Field(None, description="prompt text with {operation}, {instruction}, {input_line}")

    def _op(self, row: dict) -> str:
        return self.rng(row["id"]).choice(sorted(self.config.ops))

    def prompts(self, rows: list[dict]) -> list[Conversation]:
        template = self.config.template or packaged_template("evolve")
        return [
            [
                *self.system,
                {
                    "role": "user",
                    "content": template.format(
                        operation=self.config.ops[self._op(row)],
                        instruction=row["instruction"],
                        input_line=f"Input: {row['input']}" if row.get("input") else "",
                    ),
                },
            ]
            for row in rows
        ]

    def outputs(self, row: dict, completions: list[Completion]) -> list[dict]:
        rows = []
        for i, c in enumerate(completions):
            instruction = _clean_instruction(c.text)
            meta = {**decode_metadata(row["metadata"]), "evolved_from": row["id"], "evolution": self._op(row)}
            meta.pop("answer", None)  # the rewritten task no longer has the parent's answer
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
            if not instruction:
                out["reject_reason"] = "empty_generation"
            elif instruction.strip().lower() == row["instruction"].strip().lower():
                out["reject_reason"] = "unchanged_instruction"
            rows.append(out)
        return rows
