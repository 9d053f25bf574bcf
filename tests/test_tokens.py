"""Packing: a packed batch trains exactly what the rows would train one by one."""

import pytest
import torch

from instructscale.tokens import IGNORE, collate, pack, tokenize


def _row_losses(model, batch: dict, spans: list[list[tuple[int, int]]]) -> list[float]:
    """Mean next-token loss over each row's target tokens; ``spans[b]`` are sequence b's rows."""
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits.float()
    losses = []
    for b, rows in enumerate(spans):
        for start, end in rows:
            labels = batch["labels"][b, start + 1 : end]
            nll = torch.nn.functional.cross_entropy(logits[b, start : end - 1], labels.clamp(min=0), reduction="none")
            keep = labels != IGNORE
            losses.append(float(nll[keep].mean()))
    return losses


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_packed_batch_gives_each_row_its_unpacked_loss(tiny_models, attn):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["student"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["student"], attn_implementation=attn).eval()
    rows = [
        {
            "id": str(i),
            "instruction": f"Compute {i} + {i * 7}." + " Show it." * (i % 3),
            "output": str(i * 8) * (i % 4 + 1),
        }
        for i in range(1, 9)
    ]
    examples = [tokenize(r, tok, 64) for r in rows]
    alone = [_row_losses(model, collate([e], tok.pad_token_id), [[(0, len(e.input_ids))]])[0] for e in examples]

    packed = pack(examples, 64)
    assert len(packed) < len(examples), "several rows share a sequence"
    assert sum(len(p.input_ids) for p in packed) == sum(len(e.input_ids) for e in examples)
    batch = collate(packed, tok.pad_token_id)
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["input_ids"].shape
    spans, k = [], 0
    for p in packed:
        starts = [i for i, pos in enumerate(p.position_ids) if pos == 0]
        spans.append(list(zip(starts, [*starts[1:], len(p.input_ids)])))
        for start, end in spans[-1]:
            assert p.labels[start] == IGNORE
            assert p.labels[start + 1 : end] == examples[k].labels[1:], "labels masked per row as unpacked"
            k += 1
    together = _row_losses(model, batch, spans)
    assert together == pytest.approx(alone, rel=1e-4, abs=1e-5)

    # without the position ids, rows would attend to the rows before them: the losses differ
    leaky = _row_losses(model, {**batch, "position_ids": None, "attention_mask": None}, spans)
    assert leaky != pytest.approx(alone, rel=1e-4, abs=1e-5)


def test_pack_keeps_order_and_never_exceeds_max_length(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["student"])
    examples = [tokenize({"id": str(i), "instruction": "x " * i, "output": "y " * i}, tok, 40) for i in range(1, 30)]
    packed = pack(examples, 40)
    assert all(len(p.input_ids) <= 40 for p in packed)
    flat = [t for p in packed for t in p.input_ids]
    assert flat == [t for e in examples for t in e.input_ids], "rows stay in curriculum order"
