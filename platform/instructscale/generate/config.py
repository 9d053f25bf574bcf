"""Typed config of the generation stage (teacher distillation, k-sampling, instruction synthesis)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, model_validator

from instructscale.backends.base import SamplingConfig
from instructscale.config import ActorPool, StrictModel
from instructscale.lifecycle import StageConfig
from instructscale.plugins import BackendSpec, GenerationMode, ModeSpec


class ReplicaConfig(ActorPool):
    """The teacher replicas: started once per stage run and kept for all its passes; resources are
    per replica. The stage starts ``max_replicas``; a pass begins with the first to load, the others
    join as they load, and those not loaded within ``start_timeout_s`` (a cluster may first have to
    add nodes) are given up: fewer than ``min_replicas`` by then stops the stage."""

    OPERATIONAL: ClassVar[frozenset[str]] = ActorPool.OPERATIONAL | {"start_timeout_s"}
    start_timeout_s: float = Field(900, gt=0, description="seconds to wait for the replicas to load")
    batch_size: int = Field(256, ge=1, description="rows per actor call, written as one output part")
    num_cpus: float = Field(1, ge=0, description="per replica; on CPU also the engine's thread count")
    num_gpus: float = Field(0, ge=0, description="per replica; set to tensor_parallel_size on GPUs")


class GenerateOptions(StrictModel):
    """Everything about generation except where it reads, writes and which teacher it uses;
    the `generate` section of a pipeline config."""

    mode: ModeSpec = Field(
        "distill",
        description="distill | sample | self_instruct | evolve | a plug-in; a name or {kind: NAME, ...its options}",
    )
    backend: BackendSpec = Field("vllm", description="vllm | hf | openai | a plug-in")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    replicas: ReplicaConfig = Field(default_factory=ReplicaConfig)
    system_prompt: str | None = None
    max_faulty_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        description="fail the job when more rows than this share cannot be served (too long, "
        "engine error or crash, HTTP 4xx), not the rows a mode rejects by design",
    )
    max_same_row_errors: int = Field(
        3,
        ge=1,
        description="stop when this many rows in a row, each sent alone, fail with the same engine error: "
        "the engine is broken, not the rows (a row-specific error still costs one row)",
    )

    @model_validator(mode="before")
    @classmethod
    def _mode_section(cls, data: Any) -> Any:
        """``mode: self_instruct`` with a ``self_instruct: {...}`` section: the section holds the
        mode's options (the same as ``mode: {kind: self_instruct, ...}``)."""
        if not isinstance(data, dict):
            return data
        mode = data.get("mode", "distill")
        name = mode if isinstance(mode, str) else mode.get("kind") if isinstance(mode, dict) else None
        if isinstance(name, str) and name not in cls.model_fields and isinstance(data.get(name), dict):
            data = dict(data)
            data["mode"] = {**({"kind": name} if isinstance(mode, str) else mode), **data.pop(name)}
        return data

    @model_validator(mode="after")
    def _mode_fits(self) -> GenerateOptions:
        GenerationMode.registry.build(self.mode, self).check()
        return self


class GenerateConfig(GenerateOptions, StageConfig):
    """`instructscale generate`: input pool -> out_dir/rows (Parquet parts) with teacher outputs."""

    input: str = Field(description="canonical Parquet rows: a dataset directory, files, or a URI")
    out_dir: str
    model: str = Field(description="teacher: local directory, URI, hub id, or the endpoint's model name")

    IDENTITY_EXCLUDE: ClassVar[frozenset[str]] = frozenset({"replicas", "max_faulty_fraction", "max_same_row_errors"})
