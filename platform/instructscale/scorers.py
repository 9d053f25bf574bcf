"""The built-in scorers (plug-ins), shared by selection and evaluation.

``model``: from one small causal LM, batched: response loss given the instruction, response loss
alone, perplexity, IFD, and a mean-pooled embedding. IFD (instruction-following difficulty, Li et
al. 2024) = loss(response | instruction) / loss(response alone). "Alone" is the same chat template
with an empty user turn, so a row with an empty instruction has IFD exactly 1; IFD > 1 means the
instruction does not help.

``judge``: an LLM judge's 1-10 quality score through any generation backend (null when unparsable).
"""

from __future__ import annotations

import math
import re
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from instructscale import storage
from instructscale.chat import conversation, prompt_text
from instructscale.config import ConfigError
from instructscale.hardware import fast_dtype
from instructscale.plugins import EMBEDDING, ActorScorerConfig, Backend, BackendSpec, PluginConfig, Scorer, register

MICRO_BATCH = 16  # rows per forward pass, grouped by length
DEFAULT_JUDGE_TEMPLATE = (
    "Rate how helpful, correct and complete the response is for the instruction, from 1 (useless) "
    "to 10 (excellent).\n\nInstruction:\n{instruction}\n\nResponse:\n{response}\n\n"
    "Answer with one line: Score: <1-10>"
)
_SCORE = re.compile(r"score\s*[:=]?\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def response_losses(model, examples: list, pad_id: int):
    """Mean NLL over each example's response tokens, and mean-pooled last hidden states."""
    from instructscale.losses import row_losses
    from instructscale.tokens import collate

    batch = {k: v.to(model.device) for k, v in collate(examples, pad_id).items()}  # cuda when a GPU is given
    sums, counts, pooled = row_losses(model, batch)
    return [float(s / n) if n > 0 else math.nan for s, n in zip(sums, counts)], pooled


@register("model")
class ModelScorer(Scorer):
    """Loss, unconditioned loss, perplexity, IFD and an embedding from one causal LM."""

    columns = {
        "loss": pa.float32(),
        "loss_uncond": pa.float32(),
        "ppl": pa.float32(),
        "ifd": pa.float32(),
        EMBEDDING: pa.list_(pa.float32()),
        "model_error": pa.string(),
    }
    required = ("loss",)
    actor = True
    weights = {"ifd": 1.0, "loss": -0.5}
    difficulty = "ifd"
    filters = ({"kind": "max_ifd"},)
    model_role = "student"
    heavy = (EMBEDDING,)

    class Config(ActorScorerConfig):
        kind: str = "model"
        model: str | None = Field(
            None, description="scorer model (dir, URI or hub id); default: the pipeline's student"
        )
        max_length: int = Field(256, ge=8)
        unconditioned: bool = Field(
            True, description="also the response's loss without its instruction, and IFD (twice the work)"
        )
        batch_size: int = Field(64, ge=1)
        max_replicas: int = Field(2, ge=1)
        num_cpus: float = Field(1, gt=0)
        dtype: Literal["float32", "bfloat16"] | None = Field(
            None,
            description="None: bfloat16 on GPUs and on CPUs that compute it natively (several times "
            "faster), else float32",
        )

    def checked(self) -> PluginConfig:
        if not self.config.model:
            raise ConfigError("scorers: the model scorer needs `model` (a small causal LM, e.g. the student)")
        return self.config.model_copy(update={"model": storage.model_ref(self.config.model, "scorers.model.model")})

    def setup(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not self.config.model:
            raise ValueError("scorers: the model scorer needs `model` (a small causal LM, e.g. the student)")
        path = storage.local_dir(self.config.model)
        device = "cuda" if self.config.num_gpus else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        dtype = getattr(torch, self.config.dtype or fast_dtype(device))
        self.lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        self.torch = torch

    def _examples(self, row: dict) -> tuple:
        """(conditioned, unconditioned) examples of a row, or an error string."""
        from instructscale.tokens import IGNORE, tokenize_turns

        if not ((row.get("output") or "").strip() or row.get("messages")):
            return "empty_response"
        try:
            turns, max_length = conversation(row), self.config.max_length
            cond = tokenize_turns(turns, self.tokenizer, max_length, row["id"], row.get("tools"), "last")
            alone = [{"role": "user", "content": ""}, turns[-1]]
            uncond = tokenize_turns(alone, self.tokenizer, max_length, row["id"], None, "last")
        except Exception as err:
            return f"tokenize_error: {type(err).__name__}: {str(err)[:200]}"
        if all(label == IGNORE for label in cond.labels):
            return f"no_response_tokens: the prompt fills max_length {self.config.max_length}"
        return cond, uncond

    def _losses(self, examples: list[tuple]) -> list[tuple]:
        """(loss, unconditioned loss, embedding) per example; a micro-batch that fails is redone row
        by row, and a row that fails alone gets an error string."""
        pad = self.tokenizer.pad_token_id
        try:
            with self.torch.no_grad():
                loss_c, emb = response_losses(self.lm, [c for c, _ in examples], pad)
                loss_u = [None] * len(examples)
                if self.config.unconditioned:
                    loss_u, _ = response_losses(self.lm, [u for _, u in examples], pad)
            return [(lc, lu, e.tolist()) for lc, lu, e in zip(loss_c, loss_u, emb)]
        except Exception as err:
            if len(examples) == 1:
                return [f"model_error: {type(err).__name__}: {str(err)[:200]}"]
            return [r for ex in examples for r in self._losses([ex])]

    def score(self, rows: list[dict]) -> dict[str, list]:
        """The model columns per row; a row that cannot be scored gets nulls and ``model_error``."""
        prepared = [self._examples(r) for r in rows]
        todo = [i for i, p in enumerate(prepared) if not isinstance(p, str)]
        results: dict[int, tuple | str] = {i: p for i, p in enumerate(prepared) if isinstance(p, str)}
        by_length = sorted(todo, key=lambda i: len(prepared[i][0].input_ids))
        for start in range(0, len(by_length), MICRO_BATCH):  # similar lengths together: little padding
            part = by_length[start : start + MICRO_BATCH]
            results.update(zip(part, self._losses([prepared[i] for i in part])))
        cols: dict[str, list] = {k: [] for k in self.columns}
        for i in range(len(rows)):
            result = results[i]
            if not isinstance(result, str) and (math.isnan(result[0]) or math.isinf(result[0])):
                result = "nan_loss"
            ok = not isinstance(result, str)
            lc, lu, e = result if ok else (None, None, None)
            cols["loss"].append(lc)
            cols["loss_uncond"].append(lu)
            cols["ppl"].append(math.exp(min(lc, 50.0)) if ok else None)
            cols["ifd"].append(lc / lu if ok and lu else None)
            cols[EMBEDDING].append(e)
            cols["model_error"].append(None if ok else result)
        return cols


def parse_score(text: str) -> float | None:
    """The judge's 1-10 score from its reply ("Score: 7"), or None if it gave none in range."""
    match = _SCORE.search(text or "")
    if not match:
        return None
    value = float(match.group(1))
    return value if 1 <= value <= 10 else None


@register("judge")
class JudgeScorer(Scorer):
    """An LLM judge (any generation backend) rates each row 1-10 (column `judge`)."""

    columns = {"judge": pa.float32(), "judge_error": pa.string()}
    actor = True

    class Config(ActorScorerConfig):
        kind: str = "judge"
        model: str = Field(description="judge model: local dir, URI, hub id or the endpoint's model name")
        backend: BackendSpec = "vllm"
        template: str = Field(DEFAULT_JUDGE_TEMPLATE, description="text with {instruction} and {response}")
        max_tokens: int = Field(16, ge=1)

        @model_validator(mode="after")
        def _template(self) -> JudgeScorer.Config:
            missing = [k for k in ("{instruction}", "{response}") if k not in self.template]
            if missing:
                raise ValueError(f"judge template must contain {' and '.join(missing)}")
            return self

    def checked(self) -> PluginConfig:
        return self.config.model_copy(update={"model": Backend.model_ref(self.config.backend, self.config.model)})

    @classmethod
    def summarize(cls, batch: pa.Table) -> dict[str, int]:
        """``judge_unparsable``: judged rows (no filter removed them) without a score in range."""
        judged = pc.and_(pc.is_null(batch["filter_reason"]), pc.is_null(batch["judge"]))
        return {"judge_unparsable": pc.sum(judged).as_py() or 0}

    def setup(self) -> None:
        from instructscale.backends.base import SamplingConfig
        from instructscale.backends.faults import FaultGuard

        self.sampling = SamplingConfig(max_tokens=self.config.max_tokens, temperature=0.0)
        self._build()
        self.guard = FaultGuard(lambda prompts: self.backend.generate(prompts, self.sampling), self._build)

    def _build(self) -> None:
        self.backend = None
        self.backend = Backend.load(self.config.backend, self.config.model)

    def score(self, rows: list[dict]) -> dict[str, list]:
        """A 1-10 score per row; a row the judge cannot serve (engine error, HTTP 4xx) or whose reply
        holds no score gets null and its reason in ``judge_error`` (``judge_unparsable``)."""
        from instructscale.backends.base import RowFault

        template = self.config.template
        prompts = [
            [{"role": "user", "content": template.format(instruction=prompt_text(r), response=r.get("output") or "")}]
            for r in rows
        ]
        scores, errors = [], []
        for result in self.guard.run([r["id"] for r in rows], prompts):
            score = None if isinstance(result, RowFault) else parse_score(result[0].text)
            scores.append(score)
            errors.append(result.reason if isinstance(result, RowFault) else None if score else "judge_unparsable")
        return {"judge": scores, "judge_error": errors}
