"""The `experiment` command. Ray Tune is imported when an experiment runs, so that the CLI starts quickly."""

from __future__ import annotations

from instructscale.experiment.config import ExperimentConfig
from instructscale.plugins import register
from instructscale.process import prepare
from instructscale.stage import Command


@register("experiment")
class Experiment(Command[ExperimentConfig]):
    """Arms x seeds as Ray Tune trials, compared with the baseline; rerunning it resumes."""

    Config = ExperimentConfig
    summary = "arms (selectors, curricula, mixtures) x seeds on one token budget, with paired intervals"

    def execute(self) -> dict:
        from instructscale.experiment.run import run_experiment

        prepare(self.cfg.plugins, self.cfg.storage)
        return run_experiment(self.cfg)

    def print_result(self, result: dict) -> None:
        from instructscale.experiment.analysis import arms_table

        print(arms_table(result))
        print(f"best: {result['best']} (its selection: {result['best_selection']}); plot: {result['plot']}")
