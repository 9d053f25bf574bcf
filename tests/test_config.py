"""Typed configs: unknown keys, bad values, bad YAML and bad overrides give errors naming them."""

import subprocess
import sys
from pathlib import Path

import pytest

from instructscale.cli import main
from instructscale.config import ConfigError, load_config
from instructscale.experiment.config import ExperimentConfig
from instructscale.generate.config import GenerateConfig
from instructscale.pipeline import PipelineConfig
from instructscale.tune.config import TuneConfig


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_demo_config_loads_and_overrides_apply(tmp_path):
    cfg = load_config(PipelineConfig, "configs/demo.yaml", {"demo.rows": 10, "run_dir": str(tmp_path)})
    assert cfg.demo.rows == 10 and cfg.run_dir == str(tmp_path) and cfg.ray.num_cpus == 8
    # the train stage's refusal to resume other settings names this override for a pipeline
    assert load_config(PipelineConfig, "configs/demo.yaml", {"train.restart": True}).train.restart


SHIPPED = {
    "demo.yaml": PipelineConfig,
    "smollm2.yaml": PipelineConfig,
    "generate.example.yaml": GenerateConfig,
    "tune.yaml": TuneConfig,
    "selection_arms.yaml": ExperimentConfig,
    "mixture.yaml": ExperimentConfig,
}


def test_every_shipped_config_is_valid():
    assert sorted(p.name for p in Path("configs").glob("*.yaml")) == sorted(SHIPPED)
    for name, model in SHIPPED.items():
        load_config(model, f"configs/{name}")
    main_job = load_config(PipelineConfig, "configs/smollm2.yaml")
    assert {g.suite for g in main_job.evaluate.gates} == {"general", "ifbench"} and main_job.demo.general_rows


def test_unknown_key_is_named_with_its_path(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(PipelineConfig, write(tmp_path, "demo:\n  rowz: 5\n"))
    assert str(tmp_path / "c.yaml") in str(info.value)
    assert "demo.rowz: unknown key" in str(info.value)


def test_bad_value_is_named_with_input(tmp_path):
    with pytest.raises(ConfigError, match=r"demo\.rows: .*greater than or equal to 1 \(got -3\)"):
        load_config(PipelineConfig, write(tmp_path, "demo:\n  rows: -3\n"))
    with pytest.raises(
        ConfigError,
        match=r"inputs\.0\.format: Input should be 'jsonl', 'parquet', 'alpaca', 'sharegpt', 'hf' or 'seed_tasks'",
    ):
        load_config(PipelineConfig, write(tmp_path, "inputs:\n  - {path: x, format: csv}\n"))


def test_no_data_and_not_a_mapping_and_bad_yaml(tmp_path):
    for empty in ("demo: null\n", "run_dir: x\n"):  # the demo runs only when its section is there
        with pytest.raises(ConfigError, match=r"no data: set `inputs`, or `demo: \{\}`"):
            load_config(PipelineConfig, write(tmp_path, empty))
    with pytest.raises(ConfigError, match="top level must be a mapping, got list"):
        load_config(PipelineConfig, write(tmp_path, "- 1\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(PipelineConfig, write(tmp_path, "demo: [\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(PipelineConfig, tmp_path / "missing.yaml")


def test_cli_reports_config_errors_with_exit_code_2(tmp_path, capsys):
    assert main(["pipeline", str(write(tmp_path, "ray: {num_cpu: 2}\n"))]) == 2
    assert "ray.num_cpu: unknown key" in capsys.readouterr().err
    assert main(["make-demo", "--set", "rows"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert main(["make-demo", "--set", "rows=5"]) == 2
    assert "out_dir: Field required" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [
        "",
        "pipeline",
        "make-demo",
        "ingest",
        "generate",
        "select",
        "train",
        "tune",
        "evaluate",
        "export",
        "submit",
        "status",
        "stop",
        "logs",
        "fits",
        "build-models",
        "check-model",
    ],
)
def test_every_command_has_help(command):
    args = [sys.executable, "-m", "instructscale.cli", *([command] if command else []), "--help"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    assert "usage: instructscale" in out


HEAVY = ("torch", "transformers", "vllm", "deepspeed", "ray.data", "ray.train", "ray.tune", "pandas", "scipy")


def test_the_cli_with_every_command_imports_no_ml_library():
    """`instructscale status` or `--help` starts in a second or two: the libraries a stage runs on
    (~15 s to import here) are imported where the stage runs, not where its command is declared."""
    code = (
        "import sys; sys.argv = ['instructscale']; import instructscale.cli; "
        "from instructscale.stage import Command; [Command.registry.get(n) for n in Command.registry.names()]; "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"imported when the CLI starts: {out.strip()}"
