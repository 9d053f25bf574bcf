"""Tiny local models: deterministic, loadable by transformers and by vLLM (CPU build here)."""

import hashlib
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from helpers import check_in_vllm
from instructscale.models.check import check_transformers
from instructscale.models.tiny import EOS, build_tiny_models


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(load_file(path / "model.safetensors").items()):
        h.update(name.encode())
        h.update(tensor.numpy().tobytes())
    h.update((path / "tokenizer.json").read_bytes())
    return h.hexdigest()


def test_models_are_deterministic_by_seed(tiny_models, tmp_path):
    again = build_tiny_models(tmp_path / "again", seed=0)
    other = build_tiny_models(tmp_path / "other", seed=1)
    for name in ("student", "teacher"):
        assert _digest(Path(tiny_models[name])) == _digest(Path(again[name]))
        assert _digest(Path(tiny_models[name])) != _digest(Path(other[name]))


def test_shapes_and_chat_template(tiny_models):
    from transformers import AutoConfig, AutoTokenizer

    student, teacher = (AutoConfig.from_pretrained(tiny_models[n]) for n in ("student", "teacher"))
    assert student.hidden_size // student.num_attention_heads == 64
    assert teacher.hidden_size // teacher.num_attention_heads == 64
    assert teacher.num_hidden_layers > student.num_hidden_layers
    tok = AutoTokenizer.from_pretrained(tiny_models["student"])
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|user|>\nHi<|end|>\n<|assistant|>\n"
    assert tok.eos_token == EOS and tok.convert_ids_to_tokens(tok(text).input_ids)[0] == "<|user|>"


def test_student_loads_and_generates_in_transformers(tiny_models):
    out = check_transformers(tiny_models["student"])
    assert 300_000 < out["parameters"] < 1_000_000
    assert out["tokens"] >= 1


@pytest.mark.slow
def test_teacher_loads_and_generates_in_vllm(tiny_models):
    result = check_in_vllm(tiny_models["teacher"])
    assert result["engine"] == "vllm" and result["tokens"] >= 1


@pytest.mark.slow
def test_fetch_model_converts_smollm2_checks_it_and_caches(tmp_path, capsys):
    import json

    from instructscale.cli import main

    out = tmp_path / "smollm2"
    assert main(["fetch-model", "smollm2-135m-instruct", "--out", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 134_515_008 and info["cached"] is False and info["license"] == "Apache-2.0"
    assert info["check_transformers"]["tokens"] >= 1 and info["check_vllm"]["tokens"] >= 1
    assert (out / "model.safetensors").is_file() and (out / "chat_template.jinja").is_file()
    t0 = time.time()
    assert main(["fetch-model", "smollm2-135m-instruct", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["cached"] is True and time.time() - t0 < 5
    assert main(["fetch-model", "gpt-99", "--out", str(out)]) == 2
    assert "not in the catalogue; known: smollm2-135m-instruct" in capsys.readouterr().err
