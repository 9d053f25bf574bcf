"""Commands and stages: one type for every step, and one table of them.

A :class:`Command` is anything run by name with a typed config: the pipeline, a search, one stage.
Its registry is the table that drives the CLI's sub-commands, ``submit``, the pipeline's order and
the docs; a command of your own registers the same way (``@register("name")`` in a file your config
lists under ``plugins:``).

A :class:`Stage` is a command with the lifecycle (:mod:`instructscale.lifecycle`): :meth:`Stage.execute`
does the opening (prepare the process, skip if done, check, start) and the publishing once for every
stage, so a stage writes only :meth:`Stage.run`. A stage with ``Options`` is also a pipeline step: its
section of the pipeline config, plus what earlier stages handed on (:class:`Pipe`), makes its config.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from instructscale import storage
from instructscale.config import StrictModel
from instructscale.lifecycle import StageConfig, StageRun
from instructscale.markdown import markdown_table
from instructscale.plugins import Registry
from instructscale.process import prepare
from instructscale.runtime import check_output_location

log = logging.getLogger(__name__)
C = TypeVar("C", bound=StageConfig)
BUILTINS = (
    "instructscale.pipeline",
    "instructscale.demo.pool",
    "instructscale.pools.ingest",
    "instructscale.generate.stage",
    "instructscale.select.stage",
    "instructscale.train.stage",
    "instructscale.evaluate",
    "instructscale.export",
    "instructscale.tune.command",
    "instructscale.experiment.command",
)
INTERNAL = ("config", "schema_version", "stage")  # manifest keys a summary leaves out


class Command(Generic[C]):
    """Something a user or a Ray job runs by name: ``Config`` in, a result (a manifest) out."""

    registry: ClassVar[Registry] = Registry("command", BUILTINS)
    name: ClassVar[str] = ""
    Config: ClassVar[type[StageConfig]] = StageConfig
    summary: ClassVar[str] = ""  # one line: the CLI's help, the docs' table
    cli_name: ClassVar[str | None] = None  # the CLI sub-command, when it is not ``name``
    flags: ClassVar[dict[str, str]] = {}  # boolean config fields offered as CLI flags, with their help
    hide: ClassVar[tuple[str, ...]] = ("config",)  # result keys the CLI does not print

    def __init__(self, cfg: C):
        self.cfg = cfg

    def execute(self) -> dict:
        raise NotImplementedError

    def output(self) -> str:
        """Where the command writes (its log file goes under it)."""
        return self.cfg.out_dir

    def failure(self, result: dict) -> str | None:
        """Why a finished run counts as failed (the CLI exits 1), or None."""
        return None

    def print_result(self, result: dict) -> None:
        print(json.dumps({k: v for k, v in result.items() if k not in self.hide}, indent=2, default=str))


@dataclass
class Pipe:
    """What a pipeline's stages hand each other: where the run lives, the models, the rows so far."""

    run_dir: str
    common: dict  # plugins, storage, overwrite: the same for every stage
    models: dict[str, str]
    inputs: list = field(default_factory=list)  # the ingest stage's inputs
    eval_data: str | None = None  # held-out rows
    pool: str | None = None  # the rows the next stage reads
    model: str | None = None  # the trained model
    source_weights: dict[str, float] = field(default_factory=dict)  # the inputs' mixture weights (registries')


class Stage(Command[C]):
    """A command with the lifecycle: identity -> skip if done -> check -> start -> run -> publish.

    ``resumable`` datasets keep their committed parts across runs, ``rebuilt`` ones are emptied at
    the start, ``published`` ones get their manifests when the stage ends. In a pipeline, a stage
    with ``Options`` runs where its section is set, after the stage named ``after``."""

    resumable: ClassVar[tuple[str, ...]] = ()
    rebuilt: ClassVar[tuple[str, ...]] = ()
    published: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type[StrictModel] | None] = None
    after: ClassVar[str | None] = None
    folder: ClassVar[str | None] = None  # its directory under a pipeline's run_dir (default: its name)

    def execute(self) -> dict:
        """Run (or resume, or skip) the stage; returns its manifest."""
        prepare(self.cfg.plugins, self.cfg.storage)
        run = StageRun(self.name, self.cfg.out_dir, self.cfg.identity(), self.cfg.overwrite)
        if done := run.finished():
            log.info("%s: %s already complete, skipping", self.name, run.out)
            return done
        self.cfg = self.check()
        check_output_location(run.out, f"{self.name} output")
        self.before_start(run)
        run.start(resumable=self.resumable, rebuilt=self.rebuilt)
        return run.publish(self.run(run), datasets=self.published)

    def check(self) -> C:
        """The config with normalised paths, after checking what must exist (before anything is written)."""
        return self.cfg

    def before_start(self, run: StageRun) -> None:
        """What to refuse or clear before the output directory is started (earlier checkpoints)."""

    def run(self, run: StageRun) -> dict:
        """The stage's work, writing committed parts under ``run``; returns the manifest's summary."""
        raise NotImplementedError

    # -- in a pipeline

    @classmethod
    def out_dir(cls, run: str) -> str:
        """Its output directory under a pipeline's run directory."""
        return storage.join(run, cls.folder or cls.name)

    @classmethod
    def wiring(cls, pipe: Pipe) -> dict[str, Any]:
        """The config fields a pipeline fills from earlier stages (``out_dir`` and the shared settings aside)."""
        return {"input": pipe.pool}

    @classmethod
    def hand_on(cls, manifest: dict, pipe: Pipe) -> None:
        """What the stages after this one read (e.g. ``pipe.pool``), from this stage's manifest."""

    @classmethod
    def in_pipeline(cls, options: StrictModel, pipe: Pipe) -> dict:
        """Run as a pipeline step; returns the summary's entry for this stage."""
        cfg = cls.Config(**options.model_dump(), **cls.wiring(pipe), out_dir=cls.out_dir(pipe.run_dir), **pipe.common)
        manifest = cls(cfg).execute()
        cls.hand_on(manifest, pipe)
        return without_internal(manifest)

    @classmethod
    def describe(cls, entry: dict) -> list[str]:
        """Lines for the pipeline's closing summary."""
        return []

    @classmethod
    def report(cls, entry: dict, run: str) -> list[str]:
        """Markdown lines for the run report (``run``: the run directory, where plots may go); by
        default the entry's plain values as a table."""
        values = [{"key": k, "value": v} for k, v in entry.items() if isinstance(v, (int, float, str))]
        return [f"## {cls.name}", "", markdown_table(values, ["key", "value"]), ""]


def without_internal(manifest: dict, *keys: str) -> dict:
    """A manifest without its bookkeeping (config, schema version, stage) and ``keys``."""
    return {k: v for k, v in manifest.items() if k not in (*INTERNAL, *keys)}


def command(name: str) -> type[Command]:
    """The registered command called ``name`` (its CLI name works too)."""
    for key in Command.registry.names():
        cls = Command.registry.get(key)
        if name in (key, cls.cli_name):
            return cls
    return Command.registry.get(name)  # raises, listing the names


def _builtin(cls: type) -> bool:
    return cls.__module__.startswith("instructscale.")


def pipeline_stages() -> list[type[Stage]]:
    """The pipeline's stages in order. Each goes right after the stage its ``after`` names: the
    built-ins make the spine, and a plug-in stage placed after ``select`` runs before ``train``
    (after the plug-in stages placed there whose names sort first)."""
    pending = [Command.registry.get(n) for n in Command.registry.names()]
    pending = [s for s in pending if issubclass(s, Stage) and s.Options is not None]
    pending.sort(key=lambda s: not _builtin(s))
    order: list[type[Stage]] = []
    while pending:
        ready = next((s for s in pending if s.after is None or s.after in {o.name for o in order}), None)
        if ready is None:
            raise ValueError(f"stages placed after no stage of the pipeline: { {s.name: s.after for s in pending} }")
        at = next((i + 1 for i, o in enumerate(order) if o.name == ready.after), 0)
        while at < len(order) and not _builtin(order[at]) and order[at].after == ready.after:
            at += 1
        order.insert(at, ready)
        pending.remove(ready)
    return order
