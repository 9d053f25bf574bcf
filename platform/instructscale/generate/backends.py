"""Generation backends behind one interface: vLLM, Hugging Face transformers, OpenAI-compatible HTTP.

Each takes chat conversations and returns, per conversation, ``sampling.n`` completions with their
token count and, when ``sampling.want_logprobs``, mean token log-probability (best-of-n's score).
"""
from __future__ import annotations

import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from instructscale.generate.config import GenerateConfig, HFBackend, OpenAIBackend, SamplingConfig, VllmBackend

log = logging.getLogger(__name__)
Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int
    mean_logprob: float | None
    finish_reason: str | None


class GenerationError(RuntimeError):
    """A backend could not produce completions (unreachable endpoint, bad model, ...)."""


class Backend(Protocol):
    def generate(self, conversations: list[Conversation], sampling: SamplingConfig) -> list[list[Completion]]: ...


def _cut_at_stop(text: str, stop: list[str]) -> str:
    cut = min((text.find(s) for s in stop if s in text), default=-1)
    return text[:cut] if cut >= 0 else text


class VllmGenerator:
    """`vllm.LLM` in-process (inside a Ray actor); chat template applied by vLLM."""

    def __init__(self, model: str, cfg: VllmBackend):
        from instructscale.engines import make_llm

        self.llm = make_llm(model, cfg.engine)

    def generate(self, conversations: list[Conversation], sampling: SamplingConfig) -> list[list[Completion]]:
        from vllm import SamplingParams

        params = SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=sampling.max_tokens, seed=sampling.seed, stop=sampling.stop or None,
                                logprobs=0 if sampling.want_logprobs else None)
        results = self.llm.chat(conversations, params, use_tqdm=False)
        return [[Completion(o.text, len(o.token_ids),
                            o.cumulative_logprob / len(o.token_ids) if o.token_ids and o.cumulative_logprob is not None else None,
                            o.finish_reason) for o in r.outputs] for r in results]


class HFGenerator:
    """Batched `model.generate` with left padding; the fallback when vLLM is not available."""

    def __init__(self, model: str, cfg: HFBackend):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.tok = AutoTokenizer.from_pretrained(model, padding_side="left")
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, cfg.dtype)).to(device).eval()
        self.device = device

    def generate(self, conversations: list[Conversation], sampling: SamplingConfig) -> list[list[Completion]]:
        torch = self.torch
        enc = self.tok.apply_chat_template(conversations, add_generation_prompt=True, padding=True,
                                           return_tensors="pt", return_dict=True).to(self.device)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        sample = sampling.temperature > 0
        with torch.no_grad():
            out = self.model.generate(
                **enc, max_new_tokens=sampling.max_tokens, do_sample=sample,
                temperature=sampling.temperature if sample else None, top_p=sampling.top_p if sample else None,
                num_return_sequences=sampling.n, pad_token_id=self.tok.pad_token_id,
                eos_token_id=self.tok.eos_token_id, output_scores=sampling.want_logprobs, return_dict_in_generate=True,
                stop_strings=sampling.stop or None, tokenizer=self.tok if sampling.stop else None)
        new = out.sequences[:, enc["input_ids"].shape[1]:]
        logp = (self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
                if sampling.want_logprobs else None)
        results: list[list[Completion]] = []
        for i in range(new.shape[0]):
            valid = new[i] != self.tok.pad_token_id
            n_tok = int(valid.sum())
            full = self.tok.decode(new[i], skip_special_tokens=True)
            text = _cut_at_stop(full, sampling.stop)
            stopped = bool((new[i] == self.tok.eos_token_id).any()) or text != full
            mean = float(logp[i][valid].mean()) if n_tok and logp is not None else None
            if i % sampling.n == 0:
                results.append([])
            results[-1].append(Completion(text, n_tok, mean, "stop" if stopped else "length"))
        return results


class OpenAIGenerator:
    """Any OpenAI-compatible `/chat/completions` endpoint, with a concurrency limit and retries.

    The API key is read from the environment variable named in the config and never logged.
    """

    RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}

    def __init__(self, model: str, cfg: OpenAIBackend, api_key: str | None = None):
        import httpx

        self.model, self.cfg = model, cfg
        key = api_key or resolve_api_key(cfg)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=cfg.base_url.rstrip("/"), headers=headers, timeout=cfg.timeout_s)
        self.pool = ThreadPoolExecutor(cfg.max_concurrency)

    def check_reachable(self) -> None:
        """Fail fast, with the URL, when nothing answers at ``base_url``."""
        import httpx

        try:
            self.client.get("/models")
        except httpx.TransportError as err:
            raise GenerationError(f"openai backend: cannot reach {self.cfg.base_url} ({type(err).__name__}: {err})") from None

    def _post(self, payload: dict) -> dict:
        import httpx

        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            try:
                resp = self.client.post("/chat/completions", json=payload)
                if resp.status_code == 200:
                    return resp.json()
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                if resp.status_code not in self.RETRY_STATUS:
                    break
            except httpx.TransportError as err:
                last = f"{type(err).__name__}: {err}"
            if attempt < self.cfg.max_retries:
                delay = self.cfg.backoff_s * 2**attempt * (1 + random.random() / 4)
                log.warning("openai backend: attempt %d failed (%s); retrying in %.2fs", attempt + 1, last, delay)
                time.sleep(delay)
        raise GenerationError(f"openai backend: POST {self.cfg.base_url}/chat/completions failed "
                              f"after {attempt + 1} attempt(s): {last}")

    def _one(self, conversation: Conversation, sampling: SamplingConfig) -> list[Completion]:
        payload = {"model": self.model, "messages": conversation, "max_tokens": sampling.max_tokens,
                   "temperature": sampling.temperature, "top_p": sampling.top_p, "n": sampling.n,
                   "logprobs": sampling.want_logprobs}
        if sampling.seed is not None:
            payload["seed"] = sampling.seed
        if sampling.stop:
            payload["stop"] = sampling.stop
        body = self._post(payload)
        out = []
        for choice in sorted(body["choices"], key=lambda c: c.get("index", 0)):
            tokens = ((choice.get("logprobs") or {}).get("content")) or []
            usage_tokens = len(tokens) or body.get("usage", {}).get("completion_tokens", 0) // max(1, sampling.n)
            mean = sum(t["logprob"] for t in tokens) / len(tokens) if tokens else None
            out.append(Completion(choice["message"]["content"] or "", usage_tokens, mean, choice.get("finish_reason")))
        return out

    def generate(self, conversations: list[Conversation], sampling: SamplingConfig) -> list[list[Completion]]:
        return list(self.pool.map(lambda c: self._one(c, sampling), conversations))


def resolve_api_key(cfg: OpenAIBackend) -> str | None:
    """The API key from the environment variable the config names (None when unset)."""
    return os.environ.get(cfg.api_key_env) if cfg.api_key_env else None


def make_backend(cfg: GenerateConfig, api_key: str | None = None) -> Backend:
    """The backend named by ``cfg.backend.kind``, loaded with ``cfg.model``.

    ``api_key`` lets a driver hand its key to actors whose environment lacks the variable.
    """
    b = cfg.backend
    if isinstance(b, VllmBackend):
        return VllmGenerator(cfg.model, b)
    if isinstance(b, HFBackend):
        return HFGenerator(cfg.model, b)
    gen = OpenAIGenerator(cfg.model, b, api_key)
    gen.check_reachable()
    return gen
