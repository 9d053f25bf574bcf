"""Tiny local models: a byte-level BPE tokenizer with a chat template and small Llama models.

Everything is built from text the project ships, deterministically by seed, and saved as normal
Hugging Face directories that transformers, vLLM and PEFT load. head_dim is 64 because vLLM's CPU
attention kernels reject smaller heads.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from instructscale import storage
from instructscale.demo.tasks import MAX_DIFFICULTY, TASKS

PAD, EOS = "<|pad|>", "<|end|>"
SPECIAL_TOKENS = [PAD, EOS, "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    """Shape of one tiny Llama model."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int = 1024


STUDENT = TinySpec(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=384)
TEACHER = TinySpec(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=768)


def tokenizer_corpus(seed: int, task_lines: int = 4000) -> list[str]:
    """The shipped corpus plus task text from the demo generators (so digits and units merge well)."""
    text = resources.files("instructscale.assets").joinpath("corpus.txt").read_text().splitlines()
    rng = random.Random(f"tokenizer:{seed}")
    for _ in range(task_lines):
        task = rng.choice(sorted(TASKS))
        instruction, inp, answer = TASKS[task](rng, rng.randint(1, MAX_DIFFICULTY))
        text.append(f"{instruction} {inp} {answer}")
    return text


def build_tokenizer(seed: int = 0, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with the chat template; deterministic in ``seed``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=STUDENT.max_positions,
    )


def build_model(spec: TinySpec, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised Llama of shape ``spec``; deterministic in ``seed``."""
    if spec.hidden_size // spec.num_heads != 64:
        raise ValueError(f"head_dim must be 64 for vLLM's CPU kernels, got {spec.hidden_size // spec.num_heads}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def build_tiny_models(out_dir: str | Path, seed: int = 0) -> dict[str, str]:
    """Write ``student/`` and ``teacher/`` HF directories (sharing one tokenizer) under ``out_dir``."""
    out = Path(out_dir)
    tokenizer = build_tokenizer(seed)
    paths = {}
    for name, spec, model_seed in (("student", STUDENT, seed), ("teacher", TEACHER, seed + 1)):
        path = out / name
        model = build_model(spec, tokenizer, model_seed)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        (path / "tiny_spec.json").write_text(json.dumps({**asdict(spec), "seed": model_seed}))
        paths[name] = str(path)
    return paths


def ensure_tiny_models(out_dir: str, seed: int = 0) -> dict[str, str]:
    """Build the tiny models unless ``out_dir`` (a path or URI) already holds them for this seed."""
    out = storage.normalize(out_dir)
    specs = {"student": (STUDENT, seed), "teacher": (TEACHER, seed + 1)}
    paths = {name: storage.join(out, name) for name in specs}
    if all(
        storage.read_json_if_exists(storage.join(paths[name], "tiny_spec.json")) == {**asdict(spec), "seed": s}
        for name, (spec, s) in specs.items()
    ):
        return paths
    scratch = storage.local_scratch("models")
    try:
        built = build_tiny_models(scratch, seed)
        for name in specs:
            storage.publish_tree(built[name], paths[name])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return paths
