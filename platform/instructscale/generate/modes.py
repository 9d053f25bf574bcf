"""What each generation mode asks the teacher and how completions become output rows.

distill       one teacher response per row (replacing or filling `output`)
sample        k responses per row, each its own row with `sample_idx` and `gen_logprob`
self_instruct new instructions written from a few seed tasks (output left empty for a later distill)
evolve        Evol-Instruct rewrites of each instruction (deeper, more constrained, ...)
"""
from __future__ import annotations

import random
import re
from importlib import resources

from instructscale.generate.backends import Completion, Conversation
from instructscale.generate.config import GenerateConfig
from instructscale.schema import decode_metadata, encode_metadata


def load_template(cfg: GenerateConfig, name: str) -> str:
    """The config's override for template ``name``, else the packaged one."""
    if name in cfg.templates:
        return cfg.templates[name]
    return resources.files("instructscale.templates").joinpath(f"{name}.txt").read_text()


def user_turn(row: dict) -> str:
    return f"{row['instruction']}\n\n{row['input']}" if row.get("input") else row["instruction"]


def _row_rng(cfg: GenerateConfig, row_id: str) -> random.Random:
    return random.Random(f"{cfg.sampling.seed}:{cfg.mode}:{row_id}")


def _clean_instruction(text: str) -> str:
    """First non-empty line of a synthesised task, without a 'Task:'/'Instruction:' label."""
    for line in text.strip().splitlines():
        line = re.sub(r"^\s*(new\s+)?(task|instruction)\s*:\s*", "", line, flags=re.I).strip()
        if line:
            return line
    return ""


class Mode:
    """Builds prompts for a batch of rows and turns completions into output rows.

    Output rows carry the canonical columns plus `parent_id`, `sample_idx`, `gen_model`,
    `gen_tokens`, `gen_logprob`, `finish_reason`; a row that cannot be used gets a `reject_reason`.
    """

    def __init__(self, cfg: GenerateConfig):
        self.cfg = cfg
        self.system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []

    def prompts(self, rows: list[dict]) -> list[Conversation]:
        raise NotImplementedError

    def outputs(self, row: dict, completions: list[Completion]) -> list[dict]:
        raise NotImplementedError

    def _out(self, row: dict, c: Completion | None, idx: int, **changes) -> dict:
        out = {**row, **changes, "parent_id": row["id"], "sample_idx": idx, "reject_reason": None,
               "gen_model": None, "gen_tokens": None, "gen_logprob": None, "finish_reason": None}
        if c is not None:
            out.update(gen_model=self.cfg.model, gen_tokens=c.num_tokens, gen_logprob=c.mean_logprob,
                       finish_reason=c.finish_reason)
        return out


class Distill(Mode):
    def needs_teacher(self, row: dict) -> bool:
        return not (self.cfg.only_missing and (row.get("output") or "").strip())

    def prompts(self, rows: list[dict]) -> list[Conversation]:
        out = []
        for row in rows:
            if row.get("messages"):
                turns = list(row["messages"])
                while turns and turns[-1]["role"] == "assistant":
                    turns.pop()
                out.append(turns if turns[0]["role"] == "system" else self.system + turns)
            else:
                out.append(self.system + [{"role": "user", "content": user_turn(row)}])
        return out

    def outputs(self, row: dict, completions: list[Completion]) -> list[dict]:
        rows = []
        meta = decode_metadata(row["metadata"])
        if row.get("output"):
            meta["original_output"] = row["output"]
        prompt = self.prompts([row])[0] if row.get("messages") else None
        for i, c in enumerate(completions):
            messages = prompt + [{"role": "assistant", "content": c.text}] if prompt else None
            out = self._out(row, c, i, output=c.text, messages=messages, metadata=encode_metadata(meta),
                            id=row["id"] if len(completions) == 1 else f"{row['id']}#s{i}")
            if not c.text.strip():
                out["reject_reason"] = "empty_generation"
            rows.append(out)
        return rows


class SelfInstruct(Mode):
    def prompts(self, rows: list[dict]) -> list[Conversation]:
        template = load_template(self.cfg, "self_instruct")
        out = []
        for row in rows:
            rng = _row_rng(self.cfg, row["id"])
            others = [r for r in rows if r["id"] != row["id"]]
            seeds = [row] + rng.sample(others, min(len(others), self.cfg.examples_per_prompt - 1))
            examples = "\n".join(f"{i + 1}. {user_turn(r)}" for i, r in enumerate(seeds))
            out.append(self.system + [{"role": "user", "content": template.format(examples=examples)}])
        return out

    def outputs(self, row: dict, completions: list[Completion]) -> list[dict]:
        rows = []
        for i, c in enumerate(completions):
            instruction = _clean_instruction(c.text)
            meta = {"synthesized_from": row["id"], "method": "self_instruct"}
            out = self._out(row, c, i, id=f"{row['id']}#si{i}", instruction=instruction, input="", output=None,
                            messages=None, source=f"self_instruct/{self.cfg.model.rstrip('/').rsplit('/', 1)[-1]}",
                            metadata=encode_metadata(meta))
            if not instruction:
                out["reject_reason"] = "empty_generation"
            rows.append(out)
        return rows


class Evolve(Mode):
    def _op(self, row: dict) -> str:
        return _row_rng(self.cfg, row["id"]).choice(sorted(self.cfg.evolve_ops))

    def prompts(self, rows: list[dict]) -> list[Conversation]:
        template = load_template(self.cfg, "evolve")
        return [self.system + [{"role": "user", "content": template.format(
            operation=self.cfg.evolve_ops[self._op(row)], instruction=row["instruction"],
            input_line=f"Input: {row['input']}" if row.get("input") else "")}] for row in rows]

    def outputs(self, row: dict, completions: list[Completion]) -> list[dict]:
        rows = []
        for i, c in enumerate(completions):
            instruction = _clean_instruction(c.text)
            meta = {**decode_metadata(row["metadata"]), "evolved_from": row["id"], "evolution": self._op(row)}
            meta.pop("answer", None)  # the rewritten task no longer has the parent's answer
            out = self._out(row, c, i, id=f"{row['id']}#ev{i}", instruction=instruction, output=None,
                            messages=None, metadata=encode_metadata(meta))
            if not instruction:
                out["reject_reason"] = "empty_generation"
            elif instruction.strip().lower() == row["instruction"].strip().lower():
                out["reject_reason"] = "unchanged_instruction"
            rows.append(out)
        return rows


def make_mode(cfg: GenerateConfig) -> Mode:
    return {"distill": Distill, "sample": Distill, "self_instruct": SelfInstruct, "evolve": Evolve}[cfg.mode](cfg)
