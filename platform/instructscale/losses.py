"""Response-token losses without the other positions' logits, for training, scoring and evaluation:
the output head and the softmax over the vocabulary run only at positions that predict a response
token (for SmolLM2-135M, with a 49k vocabulary, the head on every position is a fifth of the
forward FLOPs and most of its memory traffic)."""

from __future__ import annotations

import torch

from instructscale.tokens import IGNORE


def row_losses(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed NLL, response tokens, mean-pooled last hidden state) per row of a right-padded batch,
    for a plain transformers model: each row's own response positions go through the output head
    (in a padded batch, the union of every row's positions would be up to twice as many)."""
    targets = batch["labels"][:, 1:]
    where = targets != IGNORE
    none = torch.zeros(0, dtype=torch.long, device=targets.device)
    hidden = model(input_ids=batch["input_ids"], logits_to_keep=none, output_hidden_states=True).hidden_states[-1]
    logits = model.get_output_embeddings()(hidden[:, :-1][where]).float()
    nll = torch.nn.functional.cross_entropy(logits, targets[where], reduction="none")
    sums = torch.zeros(len(targets), device=nll.device).index_add_(0, where.nonzero()[:, 0], nll)
    attn = batch["attention_mask"].unsqueeze(-1)
    return sums, where.sum(1), (hidden.float() * attn).sum(1) / attn.sum(1)


def mean_response_loss(model, batch: dict[str, torch.Tensor], **kwargs) -> torch.Tensor:
    """Mean NLL over every response token of the batch (as transformers' loss with ``labels``),
    through any wrapper (PEFT, DeepSpeed): logits only at the positions where some row predicts a
    response token, chosen with transformers' ``logits_to_keep``."""
    targets = batch["labels"][:, 1:]
    keep = (targets != IGNORE).any(0).nonzero()[:, 0]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=keep, **kwargs).logits.float()
    picked = targets[:, keep]
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), picked, ignore_index=IGNORE)
