"""Typed config of the generation stage (teacher distillation, k-sampling, instruction synthesis)."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from instructscale.config import ActorPool, StrictModel
from instructscale.engines import VllmConfig

DEFAULT_EVOLVE_OPS = {
    "deepen": "ask for a deeper version of the same problem",
    "constrain": "add one more constraint or requirement",
    "concretize": "replace general concepts with more specific ones",
    "reasoning": "require more reasoning steps to reach the answer",
    "breadth": "create a new, rarer task in the same domain",
}


class SamplingConfig(StrictModel):
    """Decoding settings, honoured by every backend."""

    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = 0
    stop: list[str] = Field(default_factory=list)
    n: int = Field(1, ge=1, description="samples per prompt (mode sample: k >= 2)")
    logprobs: bool | None = Field(
        None, description="score each completion by its mean token log-probability (gen_logprob); "
                          "None: only when n > 1, where best-of-n needs it (it costs ~15% throughput in vLLM)")

    @property
    def want_logprobs(self) -> bool:
        return self.logprobs if self.logprobs is not None else self.n > 1


class VllmBackend(StrictModel):
    kind: Literal["vllm"] = "vllm"
    engine: VllmConfig = Field(default_factory=VllmConfig)


class HFBackend(StrictModel):
    kind: Literal["hf"] = "hf"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = Field("auto", description='"auto" (cuda if present), "cpu", "cuda:0", ...')


class OpenAIBackend(StrictModel):
    kind: Literal["openai"] = "openai"
    base_url: str = Field(description="e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="name of the env var holding the key")
    max_concurrency: int = Field(8, ge=1)
    max_retries: int = Field(5, ge=0)
    backoff_s: float = Field(0.5, ge=0)
    timeout_s: float = Field(60.0, gt=0)


Backend = Annotated[Union[VllmBackend, HFBackend, OpenAIBackend], Field(discriminator="kind")]


class ReplicaConfig(ActorPool):
    """The teacher actor pool: it autoscales between min and max replicas; resources are per replica."""

    batch_size: int = Field(256, ge=1, description="rows per actor call, written as one output file")
    num_cpus: float = Field(1, ge=0, description="per replica; on CPU also the engine's thread count")
    num_gpus: float = Field(0, ge=0, description="per replica; set to tensor_parallel_size on GPUs")


class GenerateOptions(StrictModel):
    """Everything about generation except where it reads, writes and which teacher it uses;
    the `generate` section of a pipeline config."""

    mode: Literal["distill", "sample", "self_instruct", "evolve"] = "distill"
    only_missing: bool = Field(False, description="distill: keep rows that already have an output")
    backend: Backend = Field(default_factory=VllmBackend)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    replicas: ReplicaConfig = Field(default_factory=ReplicaConfig)
    system_prompt: str | None = None
    templates: dict[Literal["self_instruct", "evolve"], str] = Field(
        default_factory=dict, description="override the packaged prompt templates (text with {placeholders})")
    evolve_ops: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_EVOLVE_OPS))
    examples_per_prompt: int = Field(3, ge=1, description="self_instruct: seed tasks shown per prompt")
    overwrite: bool = False

    @model_validator(mode="after")
    def _mode_rules(self) -> "GenerateOptions":
        if self.mode == "sample" and self.sampling.n < 2:
            raise ValueError("mode 'sample' needs sampling.n >= 2 (k samples per instruction)")
        if self.mode == "sample" and self.sampling.temperature == 0:
            raise ValueError("mode 'sample' needs sampling.temperature > 0, or all k samples are identical")
        if self.mode == "distill" and self.sampling.n != 1:
            raise ValueError("mode 'distill' takes one response per row: set sampling.n to 1 or use mode 'sample'")
        if not self.evolve_ops:
            raise ValueError("evolve_ops must not be empty")
        return self


class GenerateConfig(GenerateOptions):
    """`instructscale generate`: input pool -> out_dir/part-*.parquet with teacher outputs."""

    input: str = Field(description="directory or file(s) of canonical Parquet rows")
    out_dir: str
    model: str = Field(description="teacher: local directory, hub id, or the endpoint's model name")
