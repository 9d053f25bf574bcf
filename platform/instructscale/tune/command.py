"""The `tune` command. Ray Tune is imported when a search runs, so that the CLI starts quickly."""

from __future__ import annotations

from instructscale.plugins import register
from instructscale.process import prepare
from instructscale.stage import Command
from instructscale.tune.config import TuneConfig


@register("tune")
class Tune(Command[TuneConfig]):
    """A Ray Tune search; rerunning it resumes an interrupted one."""

    Config = TuneConfig
    summary = "Ray Tune search (Optuna + ASHA) over selection, curriculum and LoRA settings"
    hide = ()

    def execute(self) -> dict:
        from instructscale.tune.search import run_search

        prepare(self.cfg.plugins, self.cfg.storage)
        return run_search(self.cfg)
