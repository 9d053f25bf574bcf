"""The built-in generation modes (plug-ins): what each asks the teacher and how completions become
output rows.

distill       one teacher response per row (replacing or filling `output`)
sample        k responses per row, each its own row with `sample_idx` and `gen_logprob`
self_instruct iterative Self-Instruct: rounds of new tasks with instances (generate/self_instruct.py)
evolve        multi-round Evol-Instruct with WizardLM's eliminations (generate/evolve.py)
"""

from __future__ import annotations

import random
from importlib import resources

from pydantic import Field

from instructscale.backends.base import Completion, Conversation
from instructscale.chat import engine_turns, prompt_turns
from instructscale.plugins import GenerationMode, PluginConfig, register
from instructscale.schema import decode_metadata, encode_metadata


def packaged_template(name: str) -> str:
    return resources.files("instructscale.templates").joinpath(f"{name}.txt").read_text()


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
