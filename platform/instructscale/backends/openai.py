"""Any OpenAI-compatible ``/chat/completions`` endpoint, with a concurrency limit and bounded retries.

A 4xx answer for one row (400, 413, 422, ...) rejects that row with the server's message; 408, 409,
425, 429 and 5xx answers and connection errors are retried with exponential backoff and jitter,
honouring ``Retry-After``, for at most ``max_retries`` attempts and ``max_retry_s`` seconds; then
the job fails with a clear error (committed parts stay for the rerun). 401, 403 and 404 concern the
whole job (key, permissions, model name) and fail it at once. The API key is read from the
environment variable named in the config (on workers, the value the driver handed over: see
:mod:`instructscale.process`) and never logged.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

from pydantic import Field

from instructscale.backends.base import Completion, Conversation, GenerationError, RowFault, SamplingConfig
from instructscale.plugins import SECRET_ENV, Backend, PluginConfig, register

log = logging.getLogger(__name__)
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
JOB_STATUS = {401, 403, 404}  # wrong key, no permission, unknown model: no row would succeed


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), None when absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def server_message(resp) -> str:
    try:
        body = resp.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        message = err.get("message", err) if isinstance(err, dict) else err
    except ValueError:
        message = resp.text
    return str(message)[:300]


@register("openai")
class OpenAIBackend(Backend):
    remote = True

    class Config(PluginConfig):
        OPERATIONAL: ClassVar[frozenset[str]] = frozenset(
            {"base_url", "api_key_env", "max_concurrency", "max_retries", "max_retry_s", "backoff_s", "timeout_s"}
        )
        kind: str = "openai"
        base_url: str = Field(description="e.g. http://127.0.0.1:8000/v1")
        api_key_env: str | None = Field(
            "OPENAI_API_KEY", description="name of the env var holding the key", json_schema_extra=SECRET_ENV
        )
        max_concurrency: int = Field(8, ge=1)
        max_retries: int = Field(8, ge=0, description="retries of one request (429, 5xx, connection errors)")
        max_retry_s: float = Field(300.0, gt=0, description="give up on a request after retrying this long")
        backoff_s: float = Field(0.5, ge=0, description="first backoff; doubles per attempt, with jitter")
        timeout_s: float = Field(60.0, gt=0)

    def __init__(self, config: Config, model: str):
        import httpx

        super().__init__(config, model)
        key = resolve_api_key(config)
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

    def _backoff(self, attempt: int) -> float:
        return self.config.backoff_s * 2**attempt * (1 + random.random() / 4)

    def _post(self, payload: dict) -> dict | RowFault:
        import httpx

        cfg, started, attempt = self.config, time.time(), 0
        while True:
            try:
                resp = self.client.post("/chat/completions", json=payload)
                if resp.status_code == 200:
                    return resp.json()
                last = f"HTTP {resp.status_code}: {server_message(resp)}"
                if resp.status_code in JOB_STATUS:
                    raise GenerationError(f"openai backend: {cfg.base_url}/chat/completions answered {last}")
                if resp.status_code not in RETRY_STATUS:
                    return RowFault(f"http_{resp.status_code}: {server_message(resp)}")
                delay = retry_after_s(resp.headers.get("Retry-After"))
                delay = self._backoff(attempt) if delay is None else delay + random.random() * cfg.backoff_s
            except httpx.TransportError as err:
                last, delay = f"{type(err).__name__}: {err}", self._backoff(attempt)
            attempt += 1
            if attempt > cfg.max_retries or time.time() - started + delay > cfg.max_retry_s:
                raise GenerationError(
                    f"openai backend: POST {cfg.base_url}/chat/completions failed after "
                    f"{attempt} attempt(s) in {time.time() - started:.0f} s: {last}"
                )
            log.warning("openai backend: attempt %d failed (%s); retrying in %.2fs", attempt, last, delay)
            time.sleep(delay)

    def _one(self, conversation: Conversation, sampling: SamplingConfig) -> list[Completion] | RowFault:
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
        if isinstance(body, RowFault):
            return body
        out = []
        for choice in sorted(body["choices"], key=lambda c: c.get("index", 0)):
            tokens = ((choice.get("logprobs") or {}).get("content")) or []
            usage_tokens = len(tokens) or body.get("usage", {}).get("completion_tokens", 0) // max(1, sampling.n)
            mean = sum(t["logprob"] for t in tokens) / len(tokens) if tokens else None
            out.append(Completion(choice["message"]["content"] or "", usage_tokens, mean, choice.get("finish_reason")))
        return out

    def generate(
        self, conversations: list[Conversation], sampling: SamplingConfig
    ) -> list[list[Completion] | RowFault]:
        return list(self.pool.map(lambda c: self._one(c, sampling), conversations))


def resolve_api_key(config) -> str | None:
    """The API key from the environment variable a backend config names (None when unset or not HTTP)."""
    name = getattr(config, "api_key_env", None)
    return os.environ.get(name) if name else None
