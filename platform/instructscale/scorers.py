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

import pyarrow as pa
from pydantic import Field, model_validator

from instructscale.chat import conversation, prompt_text
from instructscale.plugins import ActorScorerConfig, BackendSpec, Scorer, register

MICRO_BATCH = 16  # rows per forward pass, grouped by length
DEFAULT_JUDGE_TEMPLATE = (
    "Rate how helpful, correct and complete the response is for the instruction, from 1 (useless) "
    "to 10 (excellent).\n\nInstruction:\n{instruction}\n\nResponse:\n{response}\n\n"
    "Answer with one line: Score: <1-10>"
)
_SCORE = re.compile(r"score\s*[:=]?\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def response_losses(model, examples: list, pad_id: int):
    """Mean NLL over each example's response tokens, and mean-pooled last hidden states."""
    import torch

    from instructscale.tokens import IGNORE, collate

    batch = collate(examples, pad_id)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    logits = out.logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    mask = (labels != IGNORE).float()
    losses = (nll * mask).sum(1) / mask.sum(1).clamp(min=1)
    hidden = out.hidden_states[-1].float()
    attn = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * attn).sum(1) / attn.sum(1)
    return [float(v) if m > 0 else math.nan for v, m in zip(losses, mask.sum(1))], pooled


@register("model")
class ModelScorer(Scorer):
    """Loss, unconditioned loss, perplexity, IFD and an embedding from one causal LM."""

    columns = {
        "loss": pa.float32(),
        "loss_uncond": pa.float32(),
        "ppl": pa.float32(),
        "ifd": pa.float32(),
        "embedding": pa.list_(pa.float32()),
    }
    required = ("loss",)
    actor = True

    class Config(ActorScorerConfig):
        kind: str = "model"
        model: str | None = Field(
            None, description="scorer model (dir, URI or hub id); default: the pipeline's student"
        )
        max_length: int = Field(256, ge=8)
        batch_size: int = Field(64, ge=1)
        max_replicas: int = Field(2, ge=1)
        num_cpus: float = Field(1, gt=0)

    def setup(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from instructscale import storage

        if not self.config.model:
            raise ValueError("scorers: the model scorer needs `model` (a small causal LM, e.g. the student)")
        path = storage.local_dir(self.config.model)
        device = "cuda" if self.config.num_gpus else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.lm = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
        self.torch = torch

    def score(self, rows: list[dict]) -> dict[str, list]:
        from instructscale.tokens import tokenize_turns

        cols: dict[str, list] = {k: [] for k in self.columns}
        todo = [i for i, r in enumerate(rows) if (r.get("output") or "").strip() or r.get("messages")]
        cond, uncond = [], []
        for i in todo:
            turns = conversation(rows[i])
            cond.append(tokenize_turns(turns, self.tokenizer, self.config.max_length, rows[i]["id"]))
            uncond.append(
                tokenize_turns(
                    [{"role": "user", "content": ""}, turns[-1]], self.tokenizer, self.config.max_length, rows[i]["id"]
                )
            )
        scores: dict[int, tuple] = {}
        pad = self.tokenizer.pad_token_id
        by_length = sorted(range(len(todo)), key=lambda k: len(cond[k].input_ids))
        for start in range(0, len(by_length), MICRO_BATCH):  # similar lengths together: little padding
            part = by_length[start : start + MICRO_BATCH]
            with self.torch.no_grad():
                loss_c, emb = response_losses(self.lm, [cond[k] for k in part], pad)
                loss_u, _ = response_losses(self.lm, [uncond[k] for k in part], pad)
            for j, k in enumerate(part):
                scores[todo[k]] = (loss_c[j], loss_u[j], emb[j].tolist())
        for i in range(len(rows)):
            lc, lu, e = scores.get(i, (math.nan, math.nan, None))
            ok = not math.isnan(lc)
            cols["loss"].append(lc if ok else None)
            cols["loss_uncond"].append(lu if ok else None)
            cols["ppl"].append(math.exp(min(lc, 50.0)) if ok else None)
            cols["ifd"].append(lc / lu if ok and lu > 0 else None)
            cols["embedding"].append(e)
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

    columns = {"judge": pa.float32()}
    actor = True
    api_key: str | None = None  # handed over by the actor wrapper, never stored in a config

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

    def setup(self) -> None:
        from instructscale.backends.base import SamplingConfig, build_backend

        self.backend = build_backend(self.config.backend, self.config.model, self.api_key)
        self.sampling = SamplingConfig(max_tokens=self.config.max_tokens, temperature=0.0)

    def score(self, rows: list[dict]) -> dict[str, list]:
        prompts = [
            [
                {
                    "role": "user",
                    "content": self.config.template.format(instruction=prompt_text(r), response=r.get("output") or ""),
                }
            ]
            for r in rows
        ]
        return {"judge": [parse_score(c[0].text) for c in self.backend.generate(prompts, self.sampling)]}
