"""Where training metrics go besides ``metrics.jsonl``: TensorBoard event files (always, under
``out_dir/tensorboard``) and an MLflow run when ``tracking.mlflow_uri`` is set."""

from __future__ import annotations

import os
import shutil

from pydantic import Field

from instructscale import storage
from instructscale.config import StrictModel

SCALARS = ("loss", "eval_loss", "tokens_per_s", "padded_tokens_per_s", "mfu_pct", "lr", "difficulty_mean")


class TrackingSettings(StrictModel):
    tensorboard: bool = Field(True, description="TensorBoard event files under out_dir/tensorboard")
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI (e.g. http://mlflow:5000, sqlite:///m.db)")
    mlflow_experiment: str = "instructscale"


class Tracker:
    """Rank 0's TensorBoard writer and MLflow run. Event files are written locally and, when
    ``out_dir`` is an object store, uploaded whole at every flush (object stores have no append)."""

    def __init__(self, settings: TrackingSettings, out_dir: str, run_name: str, params: dict):
        self.out = storage.join(out_dir, "tensorboard")
        self.remote = not storage.is_local(out_dir)
        self.local = storage.local_scratch("tensorboard") if self.remote else self.out
        self.tb = None
        if settings.tensorboard:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(self.local, flush_secs=10)
        self.mlflow = None
        if settings.mlflow_uri:
            try:
                import mlflow
            except ImportError:
                raise RuntimeError("tracking.mlflow_uri needs MLflow: pip install mlflow-skinny") from None
            mlflow.set_tracking_uri(settings.mlflow_uri)
            mlflow.set_experiment(settings.mlflow_experiment)
            self.mlflow = mlflow
            mlflow.start_run(run_name=run_name)
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def log(self, metrics: dict) -> None:
        values = {k: float(metrics[k]) for k in SCALARS if k in metrics}
        if self.tb is not None:
            for name, value in values.items():
                self.tb.add_scalar(f"train/{name}", value, metrics["step"])
        if self.mlflow is not None:
            self.mlflow.log_metrics(values, step=metrics["step"])

    def flush(self) -> None:
        if self.tb is None:
            return
        self.tb.flush()
        if self.remote:
            for name in os.listdir(self.local):
                with open(os.path.join(self.local, name), "rb") as f:
                    storage.write_bytes(storage.join(self.out, name), f.read())

    def close(self) -> None:
        self.flush()
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            self.mlflow.end_run()
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)
