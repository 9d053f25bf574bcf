"""Model-based scores from one small causal LM, batched: response loss given the instruction,
response loss alone, perplexity, IFD, and a mean-pooled embedding.

IFD (instruction-following difficulty, Li et al. 2024) = loss(response | instruction) /
loss(response alone). "Alone" is the same chat template with an empty user turn, so a row with
an empty instruction has IFD exactly 1; IFD > 1 means the instruction does not help.
"""
from __future__ import annotations

import math

import pyarrow as pa
import torch

from instructscale.train.data import IGNORE, Example, collate, conversation, tokenize_turns

MICRO_BATCH = 16  # rows per forward pass, grouped by length
MODEL_SCHEMA = {"loss": pa.float32(), "loss_uncond": pa.float32(), "ppl": pa.float32(), "ifd": pa.float32(),
                "embedding": pa.list_(pa.float32())}


def response_losses(model, examples: list[Example], pad_id: int) -> tuple[list[float], torch.Tensor]:
    """Mean NLL over each example's response tokens, and mean-pooled last hidden states."""
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


class ModelScorer:
    """Ray Data actor: loads the scorer model once, then adds the model columns to each batch."""

    def __init__(self, model: str, max_length: int, device: str = "cpu"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model).to(device).eval()
        self.max_length, self.device = max_length, device

    def score_rows(self, rows: list[dict]) -> dict[str, list]:
        cols: dict[str, list] = {k: [] for k in MODEL_SCHEMA}
        todo = [i for i, r in enumerate(rows) if (r.get("output") or "").strip() or r.get("messages")]
        cond, uncond = [], []
        for i in todo:
            turns = conversation(rows[i])
            cond.append(tokenize_turns(turns, self.tokenizer, self.max_length, rows[i]["id"]))
            uncond.append(tokenize_turns([{"role": "user", "content": ""}, turns[-1]], self.tokenizer,
                                         self.max_length, rows[i]["id"]))
        scores: dict[int, tuple] = {}
        pad = self.tokenizer.pad_token_id
        by_length = sorted(range(len(todo)), key=lambda k: len(cond[k].input_ids))
        for start in range(0, len(by_length), MICRO_BATCH):  # similar lengths together: little padding
            part = by_length[start:start + MICRO_BATCH]
            with torch.no_grad():
                loss_c, emb = response_losses(self.model, [cond[k] for k in part], pad)
                loss_u, _ = response_losses(self.model, [uncond[k] for k in part], pad)
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

    def __call__(self, batch: pa.Table) -> pa.Table:
        cols = self.score_rows(batch.to_pylist())
        for name, values in cols.items():
            batch = batch.append_column(name, pa.array(values, MODEL_SCHEMA[name]))
        return batch
