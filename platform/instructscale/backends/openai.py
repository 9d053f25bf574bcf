"""Any OpenAI-compatible ``/chat/completions`` endpoint, with a concurrency limit and retries.

The API key is read from the environment variable named in the config and never logged.
"""

from __future__ import annotations

import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

from pydantic import Field

from instructscale.backends.base import Completion, Conversation, GenerationError, SamplingConfig
from instructscale.plugins import Backend, PluginConfig, register

log = logging.getLogger(__name__)


@register("openai")
class OpenAIBackend(Backend):
    remote = True
    RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}

    class Config(PluginConfig):
        kind: str = "openai"
        base_url: str = Field(description="e.g. http://127.0.0.1:8000/v1")
        api_key_env: str | None = Field("OPENAI_API_KEY", description="name of the env var holding the key")
        max_concurrency: int = Field(8, ge=1)
        max_retries: int = Field(5, ge=0)
        backoff_s: float = Field(0.5, ge=0)
        timeout_s: float = Field(60.0, gt=0)

    def __init__(self, config: Config, model: str, api_key: str | None = None):
        import httpx

        super().__init__(config, model)
        key = api_key or resolve_api_key(config)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=config.base_url.rstrip("/"), headers=headers, timeout=config.timeout_s)
        self.pool = ThreadPoolExecutor(config.max_concurrency)
        self.check_reachable()

    def check_reachable(self) -> None:
        """Fail fast, with the URL, when nothing answers at ``base_url``."""
        import httpx

        try:
            self.client.get("/models")
        except httpx.TransportError as err:
            raise GenerationError(
                f"openai backend: cannot reach {self.config.base_url} ({type(err).__name__}: {err})"
            ) from None

    def _post(self, payload: dict) -> dict:
        import httpx

        cfg, last = self.config, ""
        for attempt in range(cfg.max_retries + 1):
            try:
                resp = self.client.post("/chat/completions", json=payload)
                if resp.status_code == 200:
                    return resp.json()
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                if resp.status_code not in self.RETRY_STATUS:
                    break
            except httpx.TransportError as err:
                last = f"{type(err).__name__}: {err}"
            if attempt < cfg.max_retries:
                delay = cfg.backoff_s * 2**attempt * (1 + random.random() / 4)
                log.warning("openai backend: attempt %d failed (%s); retrying in %.2fs", attempt + 1, last, delay)
                time.sleep(delay)
        raise GenerationError(
            f"openai backend: POST {cfg.base_url}/chat/completions failed after {attempt + 1} attempt(s): {last}"
        )

    def _one(self, conversation: Conversation, sampling: SamplingConfig) -> list[Completion]:
        payload = {
            "model": self.model,
            "messages": conversation,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "n": sampling.n,
            "logprobs": sampling.want_logprobs,
        }
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


def resolve_api_key(config) -> str | None:
    """The API key from the environment variable a backend config names (None when unset or not HTTP)."""
    name = getattr(config, "api_key_env", None)
    return os.environ.get(name) if name else None
