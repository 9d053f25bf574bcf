"""`instructscale check-model`: prove a model directory loads and generates in an engine."""

from __future__ import annotations

import time

CHECK_PROMPT = [{"role": "user", "content": "Compute 2 + 3."}]


def check_transformers(path: str, max_new_tokens: int = 8) -> dict:
    """Load with transformers, apply the chat template and generate greedily."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from instructscale import storage

    t0 = time.time()
    path = storage.local_dir(path) if storage.exists(path) else path
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tok.apply_chat_template(CHECK_PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, ids["input_ids"].shape[1] :]
    return {
        "engine": "transformers",
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens": int(new.numel()),
        "text": tok.decode(new, skip_special_tokens=True),
        "seconds": round(time.time() - t0, 2),
    }


def check_vllm(path: str, max_new_tokens: int = 8) -> dict:
    """Load with vLLM (CPU or GPU build) and generate greedily through the chat template."""
    from vllm import SamplingParams

    from instructscale import storage
    from instructscale.backends.vllm import make_llm

    t0 = time.time()
    llm = make_llm(storage.local_dir(path) if storage.exists(path) else path)
    out = llm.chat([CHECK_PROMPT], SamplingParams(max_tokens=max_new_tokens, temperature=0.0), use_tqdm=False)[0]
    return {
        "engine": "vllm",
        "tokens": len(out.outputs[0].token_ids),
        "text": out.outputs[0].text,
        "seconds": round(time.time() - t0, 2),
    }
