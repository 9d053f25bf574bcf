"""Packing: a packed batch trains exactly what the rows would train one by one."""

import random

import pytest
import torch

from instructscale.tokens import IGNORE, collate, group_by_length, pack, packed_batch, tokenize


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


@pytest.mark.parametrize("attn,pack_length", [("sdpa", 64), ("eager", 64), ("sdpa", None)])
def test_a_packed_batch_gives_each_row_its_unpacked_loss(tiny_models, attn, pack_length):
    """Sequences of up to 64 tokens, or (None, the default) the whole micro-batch in one sequence."""
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

    packed = pack(examples, pack_length or sum(len(e.input_ids) for e in examples))
    assert len(packed) == (1 if pack_length is None else len(pack(examples, 64))) < len(examples)
    assert sum(len(p.input_ids) for p in packed) == sum(len(e.input_ids) for e in examples)
    batch = collate(packed, tok.pad_token_id)
    if pack_length is None:  # the stage's default
        assert all(torch.equal(v, packed_batch(examples, tok.pad_token_id)[k]) for k, v in batch.items())
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


def test_group_by_length_keeps_rows_in_their_window_and_cuts_padding():
    rng = random.Random(0)
    lengths = {f"r{i}": rng.randint(5, 200) for i in range(64)}
    steps = [[f"r{i}" for i in range(k, k + 4)] for k in range(0, 64, 4)]
    grouped = group_by_length(steps, lengths.get, window=8, seed=3)
    assert [len(s) for s in grouped] == [4] * 16
    for w in (0, 8):  # the same rows per window of 8 steps, nothing crosses windows
        assert sorted(r for s in grouped[w : w + 8] for r in s) == sorted(r for s in steps[w : w + 8] for r in s)

    def padding(batches):
        return sum(len(s) * max(lengths[r] for r in s) - sum(lengths[r] for r in s) for s in batches)

    assert padding(grouped) < padding(steps) / 3
    assert grouped == group_by_length(steps, lengths.get, window=8, seed=3)  # a resumed worker gets the same
    assert group_by_length(steps, lengths.get, window=1, seed=3) == steps
