"""Typed config of the training stage (Ray Train + DeepSpeed, full or LoRA, with a curriculum)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from instructscale.config import StrictModel
from instructscale.lifecycle import StageConfig
from instructscale.plugins import CallbackSpec, CurriculumSpec
from instructscale.train.tracking import TrackingSettings


class LoraSettings(StrictModel):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    merge: bool = Field(True, description="also export the adapter merged into the base weights")


class DeepSpeedSettings(StrictModel):
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = Field(False, description="ZeRO-3 only")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_clipping: float = Field(1.0, ge=0)
    config_file: str | None = Field(None, description="a DeepSpeed JSON/YAML merged over the generated config")


class OptimSettings(StrictModel):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "constant"


class ScalingSettings(StrictModel):
    """Multi-node is configuration only: more workers, GPUs per worker, resources per worker."""

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(1, ge=0, description="used when use_gpu is true")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description='custom Ray resources per worker, e.g. {"accelerator_type:A100": 1}: the node types of the '
        "cluster config that provide them",
    )

    def worker_resources(self) -> dict[str, float]:
        """What each Ray Train worker asks for."""
        return {
            "CPU": self.cpus_per_worker,
            **({"GPU": self.gpus_per_worker} if self.use_gpu else {}),
            **self.resources,
        }


class TrainOptions(StrictModel):
    """Everything but the data, the model and the output dir; the `train` section of a pipeline."""

    lora: LoraSettings | None = Field(default_factory=LoraSettings, description="null: full fine-tuning")
    deepspeed: DeepSpeedSettings = Field(default_factory=DeepSpeedSettings)
    optim: OptimSettings = Field(default_factory=OptimSettings)
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)
    curriculum: CurriculumSpec = Field(
        "random", description="random | easy_to_hard | anti | baby_steps | competence | a plug-in"
    )
    callbacks: list[CallbackSpec] = Field(default_factory=list, description="training-loop hooks (plug-ins)")
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    micro_batch_size: int = Field(8, ge=1, description="rows per worker per forward pass")
    grad_accum: int = Field(1, ge=1)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="a training-token budget (prompt and response tokens, as the trainer sees them): "
        "steps = budget / (global batch x the data's mean row tokens), epochs repeating as needed, so "
        "that runs on different data train on the same number of tokens. With max_steps: the smaller",
    )
    max_length: int = Field(256, ge=8)
    train_reasoning: bool = Field(True, description="train on assistant turns' reasoning (false: masked)")
    packing: bool = Field(
        True, description="pack each micro-batch's rows into packed sequences (no attention across rows)"
    )
    pack_length: int | None = Field(
        None, ge=8, description="tokens per packed sequence; null: the whole micro-batch in one sequence"
    )
    length_window: int = Field(
        16,
        ge=1,
        description="packing off: the rows of this many consecutive steps are regrouped by length, "
        "so batches carry little padding (1: no grouping)",
    )
    log_every: int = Field(1, ge=1, description="steps between metric records (out_dir/metrics.jsonl)")
    peak_tflops: float | None = Field(
        None,
        gt=0,
        description="one worker's matmul peak at the training precision, for mfu_pct in the metrics; "
        "null: each worker measures it at start-up (about 0.5 s; benchmarks/peak.py measures the same)",
    )
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0, description="worker-group restarts from the last checkpoint")
    max_nonfinite_steps: int = Field(10, ge=1, description="stop after this many steps in a row with a NaN/inf loss")
    eval_every: int | None = Field(None, ge=1, description="steps between held-out loss evaluations (and at the end)")
    eval_rows: int = Field(256, ge=1, description="at most this many rows of eval_data")
    seed: int = 0
    restart: bool = Field(False, description="discard checkpoints of a run with other settings and start over")

    @model_validator(mode="after")
    def _check(self) -> TrainOptions:
        if self.deepspeed.precision == "fp16" and not self.scaling.use_gpu:
            raise ValueError("deepspeed.precision fp16 needs GPUs (scaling.use_gpu: true); use fp32 or bf16 on CPU")
        if self.deepspeed.offload_params and self.deepspeed.zero_stage != 3:
            raise ValueError("deepspeed.offload_params needs zero_stage 3")
        if self.max_tokens and self.epochs != 1:
            raise ValueError("give epochs or max_tokens, not both: a token budget repeats epochs as it needs")
        return self

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.grad_accum * self.scaling.num_workers


class TrainConfig(TrainOptions, StageConfig):
    """`instructscale train`: a pool of rows with responses -> a fine-tuned model in out_dir."""

    IDENTITY_EXCLUDE: ClassVar[frozenset[str]] = frozenset({"restart", "max_failures", "tracking", "peak_tflops"})

    data: str = Field(description="Parquet rows (selection or generation output; a directory or URI)")
    model: str = Field(description="student: local directory, URI or hub id")
    out_dir: str
    eval_data: str | None = Field(None, description="held-out Parquet rows: eval_loss in the metrics")

    def identity(self) -> dict:
        """The settings plus the data's version (its manifest), so that changed data is a new run."""
        from instructscale import storage
        from instructscale.lifecycle import MANIFEST

        manifest = storage.read_json_if_exists(storage.join(self.data, MANIFEST)) or {}
        version = {k: manifest.get(k) for k in ("parts", "rows")} if manifest else None
        return {**super().identity(), "data_version": version}
