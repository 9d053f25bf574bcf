"""Evaluation: a model answers every suite's prompts (the held-out rows, IFBench, general prompts,
your own) through one engine loaded once, each answer is scored by its suite, and every metric gets
its 95% interval over prompts (:mod:`instructscale.stats`). In a pipeline the base student and the
trained model are evaluated on the same prompts, compared by their paired differences (with a
verdict: better, worse or no detectable difference), and a pairwise judge gives the trained
model's win rate over the base on the judged suites."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import defaultdict

import pyarrow as pa
import ray
from pydantic import Field, model_validator

from instructscale import gates, stats, storage
from instructscale.backends.base import Conversation, RowFault, SamplingConfig
from instructscale.config import ConfigError, StrictModel
from instructscale.gates import Gate
from instructscale.generate.config import ReplicaConfig
from instructscale.judge import JudgeSettings, pair_prompts, parse_verdict, second_model_score, win_rate
from instructscale.lifecycle import StageConfig, StageRun, commit_part, part_files, require_dataset
from instructscale.markdown import markdown_table, pyplot, save_figure
from instructscale.plugins import Backend, BackendSpec, EvalSuite, SuiteSpec, register, secret_envs
from instructscale.process import Shipped, secret_values
from instructscale.stage import Pipe, Stage, without_internal

log = logging.getLogger(__name__)
PREDICTIONS = "predictions"


class EvalOptions(StrictModel):
    """The `evaluate` section of a pipeline: the held-out rows (the ``holdout`` suite: ``max_rows``,
    ``sampling``, ``group_by``, ``loss``, ``system_prompt``), further ``suites``, the engine, and
    the pairwise judge (pipelines: the trained model against the base)."""

    backend: BackendSpec = "vllm"
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(max_tokens=32, temperature=0.0))
    max_rows: int | None = Field(None, ge=1, description="evaluate at most this many held-out rows")
    group_by: str = Field("task", description="metadata key (or column) for the per-family table")
    loss: bool = Field(True, description="also the model's loss on the reference outputs")
    system_prompt: str | None = Field(None, description="e.g. a few-shot prompt that shows the answer format")
    suites: list[SuiteSpec] = Field(
        default_factory=list,
        description="suites besides the held-out rows: ifbench | general | instructions | a plug-in",
    )
    judge: JudgeSettings | None = Field(None, description="pairwise win rate on the judged suites; null: no judge")
    replicas: ReplicaConfig = Field(
        default_factory=lambda: ReplicaConfig(batch_size=1024),
        description="the engine's resources: num_cpus (on CPU its threads) and num_gpus",
    )
    gates: list[Gate] = Field(
        default_factory=list,
        description="regression gates {suite, metric, rule: not_worse | min, value}: a failed one fails the run",
    )

    OPERATIONAL = frozenset({"gates"})  # checked on the results: changing them re-evaluates nothing

    @model_validator(mode="after")
    def _names_differ(self) -> EvalOptions:
        names = [s.kind for s in self.suites]
        if "holdout" in names or len(set(names)) != len(names):
            raise ValueError(f"suites: each once, and not holdout (the held-out rows are always evaluated): {names}")
        return self

    @model_validator(mode="after")
    def _gates_measured(self) -> EvalOptions:
        suites = {k: EvalSuite.registry.get(k) for k in ("holdout", *(s.kind for s in self.suites))}
        for g in self.gates:
            if g.suite not in suites:
                raise ValueError(f"gates: {g.name}: suite {g.suite!r} is not evaluated (suites: {sorted(suites)})")
            cls = suites[g.suite]
            known = [*cls.metrics, *([gates.WIN_RATE] if cls.judged else [])]
            if g.metric not in known:
                raise ValueError(f"gates: {g.name}: {g.suite} has no metric {g.metric!r} (it has {known})")
            if g.rule == "not_worse" and g.metric in cls.descriptive:
                raise ValueError(f"gates: {g.name}: {g.metric} is descriptive (neither better nor worse); use min")
        return self


class EvalConfig(EvalOptions, StageConfig):
    """`instructscale evaluate`: a model on the suites -> out_dir/eval.json + out_dir/predictions/<suite>."""

    model: str
    data: str | None = Field(None, description="held-out Parquet rows with reference outputs (the holdout suite)")
    out_dir: str
    allow_regression: bool = Field(False, description="a failed gate is reported, but the command exits 0")

    OPERATIONAL = frozenset({"gates", "allow_regression"})

    @model_validator(mode="after")
    def _gates_alone(self) -> EvalConfig:
        if paired := [g.name for g in self.gates if g.rule == "not_worse"]:
            raise ValueError(f"gates: {paired}: not_worse compares with the base model, which a pipeline evaluates")
        return self

    def suite_plugins(self) -> list[EvalSuite]:
        """The suites this config evaluates: the held-out rows (when there are any) first."""
        holdout = {"kind": "holdout", "max_prompts": self.max_rows, "sampling": self.sampling}
        holdout |= {"group_by": self.group_by, "loss": self.loss, "system_prompt": self.system_prompt}
        specs = ([EvalSuite.registry.parse(holdout)] if self.data else []) + list(self.suites)
        return [EvalSuite.registry.build(spec) for spec in specs]


@ray.remote(max_calls=1)  # the engine's memory goes with the process
def _answer(shipped: Shipped, model: str, requests: list[tuple[list[Conversation], SamplingConfig]], judge: bool):
    """Every request's answers from one engine: (text, None) per conversation, or (None, reason);
    and the seconds the engine took to load and each request took."""
    cfg, t0 = shipped.load(), time.time()
    backend = Backend.load(cfg.judge.backend if judge else cfg.backend, model)
    out, seconds = [], {"engine": time.time() - t0, "requests": []}
    for conversations, sampling in requests:
        t = time.time()
        reasons = backend.check(conversations, sampling)
        served = [i for i, reason in enumerate(reasons) if reason is None]
        results = backend.generate([conversations[i] for i in served], sampling) if served else []
        answers: list[tuple[str | None, str | None]] = [(None, reason) for reason in reasons]
        for i, result in zip(served, results):
            answers[i] = (None, result.reason) if isinstance(result, RowFault) else (result[0].text, None)
        out.append(answers)
        seconds["requests"].append(time.time() - t)
    return out, seconds


def answer(cfg: EvalConfig, model: str, requests: list, judge: bool = False) -> tuple[list, dict]:
    """:func:`_answer` in a Ray task with the engine's resources (API keys shipped, never logged)."""
    shipped = Shipped.of(cfg, secret_values(secret_envs(cfg)))
    return ray.get(_answer.options(**cfg.replicas.ray_options()).remote(shipped, model, requests, judge))


def _record(suite: EvalSuite, row: dict, answered: tuple, extra: dict) -> dict:
    text, reason = answered
    scores = {**suite.score(row, text), **extra.get(row["id"], {})}
    details = {k: v for k, v in scores.items() if k not in suite.metrics}
    fields = {k: row[k] for k in ("group", "reference") if k in row}
    prompt = row["conversation"][-1]["content"]
    base = {"id": row["id"], "prompt": prompt, "prediction": text or "", "reject_reason": reason}
    return {**base, **fields, **{m: scores.get(m) for m in suite.metrics}, "details": json.dumps(details)}


def summarize(suite: EvalSuite, records: list[dict]) -> dict:
    """Each metric with its interval over the rows it scores, the rows, and the suite's counts."""
    out: dict = {"rows": len(records)}
    for m in suite.metrics:
        known = [r for r in records if r[m] is not None]
        weights = [json.loads(r["details"])[suite.weights[m]] for r in known] if m in suite.weights else None
        out |= stats.metric(m, [r[m] for r in known], weights) if known else {m: None}
    return out | suite.counts([{**json.loads(r["details"]), **r} for r in records])


def _by_group(suite: EvalSuite, records: list[dict]) -> dict:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["group"]].append(r)
    return {g: summarize(suite, rs) for g, rs in sorted(groups.items())}


@register("evaluate")
class Evaluate(Stage[EvalConfig]):
    """A model on every suite, one engine load; in a pipeline, the base student and the trained
    model, compared prompt by prompt."""

    Config = EvalConfig
    Options = EvalOptions
    summary = "evaluate a model on held-out rows, IFBench and general prompts, with 95% intervals"
    after = "train"
    rebuilt = (PREDICTIONS,)
    flags = {"allow_regression": "exit 0 even when a regression gate fails"}

    def execute(self) -> dict:
        """The evaluation (run, or reused), with its gates' outcomes."""
        result = super().execute()
        return {**result, "gates": gates.check(self.cfg.gates, result)} if self.cfg.gates else result

    def failure(self, result: dict) -> str | None:
        return None if self.cfg.allow_regression else gates.failure(result.get("gates", []))

    def print_result(self, result: dict) -> None:
        super().print_result({k: v for k, v in result.items() if k != "gates"})
        for line in gates.lines(result.get("gates", [])):
            print(line)

    def check(self) -> EvalConfig:
        cfg = self.cfg
        if not cfg.data and not cfg.suites:
            raise ConfigError("evaluate: nothing to evaluate: give `data` (held-out rows) or `suites`")
        data = cfg.data and require_dataset(cfg.data, "data")
        return cfg.model_copy(update={"model": Backend.model_ref(cfg.backend, cfg.model), "data": data})

    def run(self, run: StageRun) -> dict:
        cfg, t0 = self.cfg, time.time()
        suites = cfg.suite_plugins()
        rows = [suite.prompts(cfg.data) for suite in suites]
        answers, seconds = answer(
            cfg, cfg.model, [([r["conversation"] for r in rs], s.config.sampling) for s, rs in zip(suites, rows)]
        )
        results, by_suite = {}, {}
        for suite, suite_rows, answered, generating in zip(suites, rows, answers, seconds["requests"]):
            t_suite = time.time()
            extra = suite.model_scores(cfg.model, suite_rows)
            records = [_record(suite, r, a, extra) for r, a in zip(suite_rows, answered)]
            commit_part(run.uri(PREDICTIONS, suite.name), "part-00000.parquet", pa.Table.from_pylist(records))
            run.publish_dataset(storage.join(PREDICTIONS, suite.name))
            results[suite.name] = summarize(suite, records) | (
                {"by_group": _by_group(suite, records)} if "group" in records[0] else {}
            )
            by_suite[suite.name] = round(generating + time.time() - t_suite, 2)
        summary = {
            "model": cfg.model,
            "suites": results,
            **_holdout_view(results),
            "seconds": round(time.time() - t0, 2),
            "seconds_by_suite": by_suite,  # answering and scoring, without the engine's start-up
            "engine_seconds": round(seconds["engine"], 2),
        }
        storage.write_json(run.uri("eval.json"), summary)
        log.info(
            "evaluate: %s %s", cfg.model, {k: v.get(suites[i].metrics[0]) for i, (k, v) in enumerate(results.items())}
        )
        return summary

    @classmethod
    def in_pipeline(cls, options: EvalOptions, pipe: Pipe) -> dict | None:
        if not pipe.eval_data and not options.suites:
            log.warning(
                "evaluate: nothing to evaluate: no held-out rows (`eval_data` or a `demo` section) and no suites"
            )
            return None
        entry, dirs, each = {}, {}, options.model_dump(exclude={"gates"})
        for name, model in (("base", pipe.models["student"]), ("tuned", pipe.model)):
            if model is not None:
                dirs[name] = storage.join(cls.out_dir(pipe.run_dir), name)
                cfg = EvalConfig(**each, model=model, data=pipe.eval_data, out_dir=dirs[name], **pipe.common)
                entry[name] = without_internal(cls(cfg).execute())
        if len(dirs) == 2:
            cfg = EvalConfig(**each, model=pipe.model, data=pipe.eval_data, out_dir=dirs["tuned"], **pipe.common)
            entry["tuned"] |= cls._compared(cfg, entry, dirs, pipe)
        if options.gates and "tuned" in entry:  # the pipeline's config refuses gates without training
            entry["tuned"]["gates"] = gates.check(options.gates, entry["tuned"])
        return entry

    @classmethod
    def _compared(cls, cfg: EvalConfig, entry: dict, dirs: dict, pipe: Pipe) -> dict:
        """:func:`compare`, or the comparison a finished run wrote for the same two evaluations and
        judge (a rerun reuses it, as it reuses the evaluations: the judge is an engine load)."""
        teacher = pipe.models["teacher"]
        inputs = {
            "base": entry["base"],
            "tuned": entry["tuned"],
            "judge": cfg.judge and cfg.judge.model_dump(),
            "teacher": teacher,
        }
        key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
        path = storage.join(cls.out_dir(pipe.run_dir), "comparison.json")
        done = storage.read_json_if_exists(path)
        if done and done.pop("inputs_key", None) == key:
            return done
        compared = compare(cfg, dirs["base"], dirs["tuned"], teacher)
        storage.write_json(path, {**compared, "inputs_key": key})
        return compared

    @classmethod
    def describe(cls, entry: dict) -> list[str]:
        lines = []
        for model, ev in entry.items():
            for suite, res in ev["suites"].items():
                shown = ", ".join(_fmt(m, res) for m in HEADLINE.get(suite, list(res)[1:2]) if m in res)
                lines.append(f"evaluate   {model:5s} {suite:8s} {shown} on {res['rows']} prompts")
        tuned = entry.get("tuned", {})
        for suite, metrics in tuned.get("vs_base", {}).items():
            for m in HEADLINE.get(suite, []):
                if metrics.get(m, {}).get("verdict"):
                    d = metrics[m]
                    lines.append(f"  tuned vs base {suite} {m}: {d['diff']:+.3f} {_ci(d['diff_ci95'])} {d['verdict']}")
        for suite, w in tuned.get("win_rate", {}).items():
            if w.get("win_rate") is not None:
                lines.append(
                    f"  judged win rate over base, {suite}: {w['win_rate']:.3f} {_ci(w['win_rate_ci95'])} {w['verdict']}"
                )
        return lines + [f"  {line}" for line in gates.lines(tuned.get("gates", []))]

    @classmethod
    def report(cls, entry: dict, run: str) -> list[str]:
        parts = ["## Evaluation", ""]
        for suite in next(iter(entry.values())).get("suites", {}):
            parts += _suite_section(suite, entry, storage.join(run, f"eval-{suite}.png"))
        if outcomes := entry.get("tuned", {}).get("gates"):
            shown = [{**g, "passed": "passed" if g["passed"] else "**failed**"} for g in outcomes]
            parts += ["### Regression gates", "", markdown_table(shown, ["gate", "passed", "why"]), ""]
        return parts


HEADLINE = {
    "holdout": ["exact_match", "loss"],
    "ifbench": ["prompt_strict", "instruction_loose"],
    "general": ["rouge_l", "words"],
}


def _ci(ci: list[float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _fmt(m: str, res: dict) -> str:
    value = res.get(m)
    return f"{m} {value:.3f} {_ci(res.get(f'{m}_ci95'))}" if value is not None else f"{m} -"


def _suite_section(suite: str, entry: dict, plot_uri: str) -> list[str]:
    """One table (each model's metrics with intervals; the paired difference and its verdict) and a plot."""
    tuned = entry.get("tuned", {})
    vs, metrics = tuned.get("vs_base", {}).get(suite, {}), _metrics(entry, suite)
    rows = []
    for m in metrics:
        row = {"metric": m}
        for model, ev in entry.items():
            res = ev["suites"][suite]
            row[model] = f"{res[m]:.3f} {_ci(res.get(f'{m}_ci95'))}" if res.get(m) is not None else "-"
        if m in vs:
            row |= {"diff": f"{vs[m]['diff']:+.3f} {_ci(vs[m]['diff_ci95'])}", "verdict": vs[m].get("verdict", "")}
        rows.append(row)
    first = next(iter(entry.values()))["suites"][suite]
    counts = {k: v for k, v in first.items() if isinstance(v, int) and k != "rows"}
    parts = [f"### {suite}", "", f"{first['rows']} prompts" + (f"; {counts}" if counts else "") + ".", ""]
    parts += [markdown_table(rows, ["metric", *entry, "diff", "verdict"]), ""]
    win = tuned.get("win_rate", {}).get(suite)
    if win and win.get("win_rate") is not None:
        parts += [
            f"Judged win rate of tuned over base: {win['win_rate']:.3f} {_ci(win['win_rate_ci95'])} ({win['verdict']}; {win['judged']} prompts, {win['unparsable']} unparsable).",
            "",
        ]
    plot = _suite_plot(entry, suite, metrics, plot_uri)
    return [*parts, f"![{suite}]({plot})", ""]


def _metrics(entry: dict, suite: str) -> list[str]:
    res = next(iter(entry.values()))["suites"][suite]
    return [k.removesuffix("_ci95") for k in res if k.endswith("_ci95")]


def _suite_plot(entry: dict, suite: str, metrics: list[str], uri: str) -> str:
    """Each metric per model, with its 95% interval as error bars."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics), 3), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        names = [n for n in entry if entry[n]["suites"][suite].get(m) is not None]
        values = [entry[n]["suites"][suite][m] for n in names]
        cis = [entry[n]["suites"][suite][f"{m}_ci95"] for n in names]
        errors = [[v - c[0] for v, c in zip(values, cis)], [c[1] - v for v, c in zip(values, cis)]]
        ax.bar(names, values, yerr=errors, capsize=4, color=["#999999", "#3b6ea5"][: len(names)])
        ax.set_title(m, fontsize=9)
    fig.suptitle(f"{suite}: 95% intervals over prompts", fontsize=10)
    return save_figure(fig, uri)


def _holdout_view(results: dict) -> dict:
    """The held-out rows' figures as ``overall`` and ``by_group`` (what earlier runs reported)."""
    if "holdout" not in results:
        return {}
    holdout = dict(results["holdout"])
    return {"by_group": holdout.pop("by_group", {}), "overall": holdout}


def predictions(out: str, suite: str) -> dict[str, dict]:
    """A finished evaluation's scored answers on ``suite``, by prompt id."""
    table = storage.read_parquet(part_files(storage.join(out, PREDICTIONS, suite)))
    return {r["id"]: r for r in table.to_pylist()}


def _paired(suite: EvalSuite, m: str, base: dict, tuned: dict) -> dict:
    ids = [i for i in base if base[i][m] is not None and tuned.get(i, {}).get(m) is not None]
    if not ids:
        return {}
    weights = [json.loads(base[i]["details"])[suite.weights[m]] for i in ids] if m in suite.weights else None
    better = None if m in suite.descriptive else m not in suite.lower_is_better
    pair = stats.paired([base[i][m] for i in ids], [tuned[i][m] for i in ids], better, weights)
    return {**pair, "prompts": len(ids)}


def compare(cfg: EvalConfig, base_dir: str, tuned_dir: str, teacher: str) -> dict:
    """The tuned model against the base on the same prompts: per suite and metric the paired
    difference (``vs_base``), and the judge's win rate on the judged suites (``win_rate``)."""
    vs, judged = {}, []
    for suite in cfg.suite_plugins():
        base, tuned = predictions(base_dir, suite.name), predictions(tuned_dir, suite.name)
        vs[suite.name] = {m: p for m in suite.metrics if (p := _paired(suite, m, base, tuned))}
        if suite.judged:
            judged.append((suite.name, base, tuned))
    out: dict = {"vs_base": vs}
    if judged and cfg.judge:
        t0 = time.time()
        out["win_rate"] = judge(cfg, judged, cfg.judge.model or teacher)
        out["judge_seconds"] = round(time.time() - t0, 2)
    return out


def judge(cfg: EvalConfig, judged: list[tuple[str, dict, dict]], model: str) -> dict:
    """The judge's win rate of the tuned model over the base, per judged suite (both orders a pair)."""
    requests, spans = [], []
    sampling = SamplingConfig(max_tokens=cfg.judge.max_tokens, temperature=0.0)
    for name, base, tuned in judged:
        ids = [i for i in base if i in tuned]
        pairs = [
            pair_prompts(base[i]["prompt"], base[i]["prediction"], tuned[i]["prediction"], cfg.judge.max_answer_chars)
            for i in ids
        ]
        requests.append(([c for pair in pairs for c in pair], sampling))
        spans.append((name, len(ids)))
    replies, _ = answer(cfg, Backend.model_ref(cfg.judge.backend, model), requests, judge=True)
    out = {}
    for (name, n), got in zip(spans, replies):
        verdicts = [parse_verdict(text) for text, _ in got]
        out[name] = win_rate([second_model_score(verdicts[2 * k], verdicts[2 * k + 1]) for k in range(n)])
    return out


def evaluate(cfg: EvalConfig) -> dict:
    """Answer and score every suite; returns the manifest (also ``out_dir/eval.json``)."""
    return Evaluate(cfg).execute()
