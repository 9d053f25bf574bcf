"""What MFU is measured against: FLOPs per trained token and the matmul peak."""

from __future__ import annotations

import json

import pytest
import torch

from instructscale.train.flops import flops_per_token
from instructscale.train.metrics import efficiency


def test_flops_per_token_counts_each_weight_once_and_lora_skips_weight_gradients(tiny_models):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models["student"])
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    unique = {id(p): p.numel() for p in model.parameters()}
    n = sum(unique.values()) - (0 if head is embed else embed.numel())  # an untied lookup is no matmul
    assert flops_per_token(model, full_finetune=True) == 6 * n
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    assert flops_per_token(lora, full_finetune=False) == 4 * n  # adapters left out, base counted as before


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_peak_is_the_best_timed_burst_after_a_warm_up(dtype, monkeypatch):
    """On a clock that each matmul advances by a known time (no wall-clock assertion): the warm-up
    is left out and the fastest burst sets the peak, 2 n^3 FLOPs per matmul."""
    from instructscale.train import flops

    clock, durations = [0.0], iter([5e-3, 2e-3, 1e-3, 3e-3, 1.5e-3, 2e-3])  # warm-up, then 5 bursts
    real_mm = torch.mm

    def timed_mm(a, b):
        clock[0] += next(durations)
        return real_mm(a, b)

    monkeypatch.setattr(flops.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(flops.torch, "mm", timed_mm)
    size = 64
    assert flops.matmul_peak_tflops(dtype, size=size, seconds=0.012) == pytest.approx(2 * size**3 / 1e-3 / 1e12)


def test_efficiency_leaves_out_the_first_logged_step_and_weights_by_time():
    rec = {"padded_tokens": 200, "peak_tflops": 2.0}
    history = [
        {**rec, "step": 1, "tokens": 100, "seconds": 10.0, "model_tflops_per_s": 0.01},
        {**rec, "step": 2, "tokens": 150, "seconds": 1.0, "model_tflops_per_s": 0.3},
        {**rec, "step": 3, "tokens": 150, "seconds": 3.0, "model_tflops_per_s": 0.1},
    ]
    eff = efficiency(history)
    assert eff["real_tokens_per_s"] == 75.0 and eff["padded_tokens_per_s"] == 100.0
    assert eff["padding_pct"] == 25.0 and eff["model_tflops_per_s"] == 0.15 and eff["mfu_pct"] == 7.5
    assert efficiency([]) is None


def test_the_peak_is_measured_once_per_machine_and_precision_then_cached(tmp_path, monkeypatch):
    from instructscale import hardware, storage

    monkeypatch.setenv(storage.ENV_CACHE_DIR, str(tmp_path))
    monkeypatch.setattr(hardware, "SECONDS", 0.1)
    first, source = hardware.peak_tflops(torch.float32)
    assert first > 0 and source.startswith("measured at start-up")
    again, source = hardware.peak_tflops(torch.float32)
    assert again == pytest.approx(first, rel=1e-3) and "cached" in source and "this run at start-up" in source
    _, source = hardware.peak_tflops(torch.bfloat16)  # another precision: another figure
    assert source.startswith("measured at start-up")
    keys = json.loads((tmp_path / "peak_tflops.json").read_text())
    assert {hardware.machine_key(torch.float32), hardware.machine_key(torch.bfloat16)} == set(keys)
    assert f"{torch.get_num_threads()} threads" in hardware.machine_key(torch.float32)
    monkeypatch.setattr(hardware, "matmul_peak_tflops", lambda *a: first / 3)  # a busy moment reads low
    assert hardware.measure(torch.float32) == pytest.approx(first / 3)
    assert hardware.peak_tflops(torch.float32)[0] == pytest.approx(first, rel=1e-3)  # the best figure stays


def test_models_run_in_bf16_by_default_only_where_the_cpu_computes_it_natively(monkeypatch):
    from instructscale import hardware

    for native, dtype in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda n=native: n)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert hardware.fast_dtype("cpu") == dtype
    assert hardware.fast_dtype("cuda") == "bfloat16"
