"""The Hugging Face transformers backend: batched `model.generate` with left padding (the fallback
where vLLM is not available)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from instructscale.backends.base import (
    Completion,
    Conversation,
    SamplingConfig,
    count_prompt_tokens,
    cut_at_stop,
    prompt_too_long,
)
from instructscale.plugins import Backend, PluginConfig, register


@register("hf")
class HFBackend(Backend):
    class Config(PluginConfig):
        kind: str = "hf"
        dtype: Literal["float32", "float16", "bfloat16"] = "float32"
        device: str = Field("auto", description='"auto" (cuda if present), "cpu", "cuda:0", ...')

    def __init__(self, config: Config, model: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__(config, model)
        self.torch = torch
        self.device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.tok = AutoTokenizer.from_pretrained(model, padding_side="left")
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.lm = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, config.dtype)).to(self.device).eval()

    def check(self, conversations: list[Conversation], sampling: SamplingConfig) -> list[str | None]:
        """Empty prompts, and prompts that leave no room for ``max_tokens`` in the model's positions."""
        reasons = super().check(conversations, sampling)
        limit = getattr(self.lm.config, "max_position_embeddings", None) or 10**9
        return [
            r or prompt_too_long(count_prompt_tokens(self.tok, c), sampling.max_tokens, limit)
            for r, c in zip(reasons, conversations)
        ]

    def generate(self, conversations: list[Conversation], sampling: SamplingConfig) -> list[list[Completion]]:
        torch = self.torch
        enc = self.tok.apply_chat_template(
            conversations, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
        ).to(self.device)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        sample = sampling.temperature > 0
        with torch.no_grad():
            out = self.lm.generate(
                **enc,
                max_new_tokens=sampling.max_tokens,
                do_sample=sample,
                temperature=sampling.temperature if sample else None,
                top_p=sampling.top_p if sample else None,
                num_return_sequences=sampling.n,
                pad_token_id=self.tok.pad_token_id,
                eos_token_id=self.tok.eos_token_id,
                output_scores=sampling.want_logprobs,
                return_dict_in_generate=True,
                stop_strings=sampling.stop or None,
                tokenizer=self.tok if sampling.stop else None,
            )
        new = out.sequences[:, enc["input_ids"].shape[1] :]
        logp = (
            self.lm.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
            if sampling.want_logprobs
            else None
        )
        results: list[list[Completion]] = []
        for i in range(new.shape[0]):
            valid = new[i] != self.tok.pad_token_id
            n_tok = int(valid.sum())
            full = self.tok.decode(new[i], skip_special_tokens=True)
            text = cut_at_stop(full, sampling.stop)
            stopped = bool((new[i] == self.tok.eos_token_id).any()) or text != full
            mean = float(logp[i][valid].mean()) if n_tok and logp is not None else None
            if i % sampling.n == 0:
                results.append([])
            results[-1].append(Completion(text, n_tok, mean, "stop" if stopped else "length"))
        return results
