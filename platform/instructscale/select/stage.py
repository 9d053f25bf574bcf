"""The selection stage.

1. **Features** (streamed through Ray Data, resumable): cheap text features and the row filters as
   a stateless UDF, then each scorer (stateless tasks or an autoscaling actor pool). Every input row,
   with its feature columns, is committed under ``features/rows`` in parts; a rerun reuses the
   committed parts and computes only the missing rows.
2. **Decisions** (:mod:`instructscale.select.decide`, Ray Data operations; the driver holds
   counts, rank summaries and the allocation only): generation rejects, filters, unscorable rows,
   the IFD cap, a weighted score, exact and near duplicates (one shuffle), quotas per stratum and
   the selector plug-in per stratum shard.
3. **Outputs**: ``scores/`` (every row: scores, status, reason, duplicate_of), ``selected/`` (the
   chosen rows with `score` and `difficulty`), and the manifest with counts per removal reason.
   Nothing vanishes without a recorded reason.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import ray

from instructscale import storage
from instructscale.config import ConfigError
from instructscale.lifecycle import StageRun, commit_part, commit_records, part_files, part_name, require_dataset
from instructscale.markdown import markdown_table, pyplot, save_figure
from instructscale.plugins import EMBEDDING, RowFilter, Scorer, Selector, register, secret_envs
from instructscale.process import Shipped, secret_values
from instructscale.progress import Progress
from instructscale.select import agreement, decide, mixture
from instructscale.select.config import SelectConfig, SelectOptions
from instructscale.select.features import text_features
from instructscale.select.scoring import ScorerActor, score_in_task
from instructscale.stage import Pipe, Stage

log = logging.getLogger(__name__)

ROWS = "rows"


def _commit_block(block: pa.Table, dataset: str) -> pa.Table:
    commit_part(dataset, part_name(block["id"].to_pylist()), block)
    return pa.table({"rows": [block.num_rows]})


def _pending(batch: pa.Table, done: list) -> pa.Table:
    return batch.filter(pc.invert(pc.is_in(batch["id"], value_set=ray.get(done[0]))))


def _with_scorers(ds: ray.data.Dataset, cfg: SelectConfig) -> ray.data.Dataset:
    # API keys travel with the shipped config, never in the config itself
    shipped = Shipped.of(cfg, secret_values(secret_envs(cfg.scorers)))
    for i, spec in enumerate(cfg.scorers):
        if Scorer.registry.get(spec.kind).actor:
            # one call's rows per block: a pool of N replicas gets N inputs at once, however few the rows
            ds = ds.repartition(target_num_rows_per_block=spec.batch_size).map_batches(
                ScorerActor,
                fn_constructor_kwargs={"shipped": shipped, "index": i},
                batch_format="pyarrow",
                **spec.map_batches_args(),
            )
        else:
            ds = ds.map_batches(
                score_in_task,
                batch_format="pyarrow",
                batch_size=cfg.batch_size,
                fn_kwargs={"shipped": shipped, "index": i},
            )
    return ds


def compute_features(cfg: SelectConfig) -> tuple[str, dict]:
    """Compute (or reuse, or finish) the per-row feature table; returns its dataset URI and manifest."""
    uri = storage.normalize(cfg.features_dir or storage.join(cfg.out_dir, "features"))
    run = StageRun("select-features", uri, cfg.feature_identity(), cfg.overwrite)
    if done := run.finished():
        log.info("select: reusing features in %s", uri)
        return run.uri(ROWS), done
    if cfg.features_dir:
        raise ConfigError(f"features_dir: {uri} holds no features for this input and these scorer settings")
    t0 = time.time()
    run.start(resumable=(ROWS,))
    reused = len(commit_records(run.uri(ROWS)))
    done_ids = [
        r for f in part_files(run.uri(ROWS)) for r in storage.read_parquet([f], columns=["id"])["id"].to_pylist()
    ]
    ds = decide.read_parquet(part_files(cfg.input))
    if done_ids:
        log.info("select: resuming features, %d rows in %d committed parts", len(done_ids), reused)
        ds = ds.map_batches(_pending, batch_format="pyarrow", fn_kwargs={"done": [ray.put(pa.array(done_ids))]})
    # blocks of a few batches, so that every scorer task and replica gets work
    ds = ds.repartition(target_num_rows_per_block=cfg.batch_size * 2)
    ds = ds.map_batches(
        text_features, batch_format="pyarrow", batch_size=cfg.batch_size, fn_kwargs={"shipped": Shipped.of(cfg)}
    )
    ds = _with_scorers(ds, cfg).map_batches(
        _commit_block, batch_format="pyarrow", batch_size=None, fn_kwargs={"dataset": run.uri(ROWS)}
    )
    progress = Progress("features")
    for rec in ds.iter_rows():
        progress.update(rec["rows"])
    progress.close()
    computed = len(commit_records(run.uri(ROWS))) - reused
    manifest = run.publish(
        {
            "rows": len(done_ids) + progress.done,
            "parts_reused": reused,
            "parts_computed": computed,
            "seconds": round(time.time() - t0, 2),
        },
        datasets=(ROWS,),
    )
    return run.uri(ROWS), manifest


def _mixture_summary(cfg: SelectConfig, rows: Counter, tokens: Counter, targets: dict[str, int]) -> dict:
    """A mixture's outcome per source: its target share, the rows (and tokens) it got and their share."""
    if not cfg.mix:
        return {}
    counted = cfg.tokens_counted()
    out = {"budget_unit": cfg.mix.unit, "mix": mixture.report(cfg.mix, dict(rows), dict(tokens) if counted else None)}
    return out | ({"token_targets": targets, "selected_tokens": sum(tokens.values())} if counted else {})


def _agreement(cfg: SelectConfig, features: list[str], heavy: list[str]) -> dict:
    """``rank_correlations`` of the named scorers' columns with their reference (none: no pairs)."""
    if not agreement.pairs(cfg):
        return {}
    return {"rank_correlations": agreement.rank_correlations(cfg, _light(features, heavy))}


def _light(features: list[str], drop: list[str]) -> ray.data.Dataset:
    """The features rows without the ``drop`` columns."""
    return decide.read_parquet(features).select_columns(
        [n for n in storage.parquet_schema(features[0]).names if n not in drop]
    )


@register("select")
class Select(Stage[SelectConfig]):
    """Score, filter, dedup and select: every input row ends in ``scores`` with its status and
    reason, the chosen ones in ``selected`` with ``score`` and ``difficulty``."""

    Config = SelectConfig
    Options = SelectOptions
    summary = "score (heuristics, verifier, dedup, perplexity, IFD, embeddings) and select a budget"
    after = "generate"
    rebuilt = (decide.SCORES, decide.SELECTED)
    published = (decide.SCORES, decide.SELECTED)

    def check(self) -> SelectConfig:
        """Normalised paths; each filter's and scorer's own check (models, eval sets, endpoints)."""
        cfg = self.cfg
        if cfg.mix and not cfg.mix.weights:
            raise ConfigError("select.mix.weights: give a weight per source")
        if cfg.tokens_counted() and not cfg.mix.tokenizer:
            raise ConfigError("select.mix: a mixture in tokens needs mix.tokenizer (a pipeline uses its student's)")
        source = require_dataset(cfg.input, "input")
        filters = [RowFilter.registry.build(f).checked() for f in cfg.filters]
        scorers = [Scorer.registry.build(s).checked() for s in cfg.scorers]
        update = {"input": source, "out_dir": storage.normalize(cfg.out_dir), "filters": filters, "scorers": scorers}
        return cfg.model_copy(update=update)

    def run(self, run: StageRun) -> dict:
        cfg, t0 = self.cfg, time.time()
        features_uri, feats = compute_features(cfg)
        features = part_files(features_uri)
        t_decide = time.time()
        heavy = decide.heavy_columns(cfg)
        ranks = decide.rank_summaries(decide.read_parquet(features), list(cfg.weights))
        ctx = decide.duplicates(decide.Decide(Shipped.of(cfg), ranks), features, feats["rows"])
        ray.wait(ctx.dups, fetch_local=False)
        dedup_seconds = time.time() - t_decide
        counts, scorer_counts = decide.count_decisions(ctx, _light(features, heavy))
        totals = decide.token_totals(ctx, _light(features, heavy)) if cfg.tokens_counted() else None
        budget, alloc, targets = decide.allocation(cfg, counts, totals)
        if Selector.registry.get(cfg.selector.kind).needs_embeddings:
            heavy = [c for c in heavy if c != EMBEDDING]
        chosen = decide.chosen_ids(ctx, _light(features, heavy), counts, alloc, targets)
        progress, by_stratum, tokens = Progress("select", total=feats["rows"]), Counter(), Counter()
        for rows, selected, selected_tokens in decide.write_outputs(ctx, features, feats["rows"], chosen, run.out):
            progress.update(rows)
            by_stratum.update(selected)
            tokens.update(selected_tokens)
        summary = {
            **_counts_summary(counts, budget, by_stratum),
            **_mixture_summary(cfg, by_stratum, tokens, targets),
            "allocation": alloc,
            **scorer_counts,
            **_agreement(cfg, features, heavy),
            "dedup_seconds": round(dedup_seconds, 2),
            "decide_seconds": round(time.time() - t_decide, 2),
            "features_seconds": feats["seconds"],
            "seconds": round(time.time() - t0, 2),
        }
        progress.close(f"{summary['selected']:,} selected, removed {json.dumps(summary['removed'])}")
        return summary

    @classmethod
    def wiring(cls, pipe: Pipe) -> dict:
        return {"input": pipe.pool}

    @classmethod
    def in_pipeline(cls, options: SelectOptions, pipe: Pipe) -> dict:
        """A scorer that names a model role (the model scorer: ``student``) gets the pipeline's
        model for it unless its own ``model`` is set; a mixture without weights takes the inputs'
        (a LLaMA-Factory registry's ``weight``)."""
        options = options.with_models(pipe.models)
        if options.mix and not options.mix.weights:
            if not pipe.source_weights:
                raise ConfigError("select.mix.weights: none given, and no input has a `weight`")
            options = options.model_copy(
                update={"mix": options.mix.model_copy(update={"weights": pipe.source_weights})}
            )
        return super().in_pipeline(options, pipe)

    @classmethod
    def hand_on(cls, manifest: dict, pipe: Pipe) -> None:
        pipe.pool = storage.join(cls.out_dir(pipe.run_dir), decide.SELECTED)

    @classmethod
    def describe(cls, entry: dict) -> list[str]:
        removed = ", ".join(f"{k} {v}" for k, v in entry["removed"].items()) or "none"
        return [
            (
                f"select     {entry['selected']:,} of {entry['input_rows']:,} rows (removed: {removed}; "
                f"{entry['not_selected']:,} over budget)"
            )
        ]

    @classmethod
    def report(cls, entry: dict, run: str) -> list[str]:
        removed = [{"filter": k, "rows removed": v} for k, v in entry["removed"].items()]
        removed.append({"filter": "over budget (eligible, not selected)", "rows removed": entry["not_selected"]})
        strata = [{"stratum": k, "selected": v} for k, v in entry["selected_by_stratum"].items()]
        parts = [
            "## Selection",
            "",
            f"{entry['selected']:,} of {entry['input_rows']:,} rows selected "
            f"(budget {entry['budget']:,}, {entry['eligible']:,} eligible).",
            "",
            markdown_table(removed, ["filter", "rows removed"]),
            "",
            markdown_table(strata, ["stratum", "selected"]),
            "",
        ]
        if mix := entry.get("mix"):
            unit = entry["budget_unit"]
            shown = [{"source": k, **v} for k, v in mix.items()]
            columns = ["source", "target_share", "share", "rows", *(["tokens"] if unit == "tokens" else [])]
            parts += [f"Mixture by {unit}:", "", markdown_table(shown, columns), ""]
        agree = [{"column": k, **v} for k, v in entry.get("rank_correlations", {}).items()]
        if agree:
            parts += [
                "Scorers' agreement (Spearman over the rows both scored):",
                "",
                markdown_table(agree, ["column", "with", "spearman", "rows"]),
                "",
            ]
        plot = _score_plot(storage.join(cls.out_dir(run), decide.SCORES), storage.join(run, "scores.png"))
        return parts + ([f"![score distributions]({plot})", ""] if plot else [])


def _score_plot(scores: str, uri: str) -> str | None:
    """Histograms of IFD and loss by selection status (when the rows have them); the plot's name."""
    files = part_files(scores) if storage.exists(scores) else []
    if not files or not {"ifd", "loss"} <= set(storage.parquet_schema(files[0]).names):
        return None
    t = storage.read_parquet(files, columns=["status", "ifd", "loss"])
    fig, axes = pyplot().subplots(1, 2, figsize=(9, 3.2))
    for ax, col in zip(axes, ("ifd", "loss")):
        for status in ("selected", "not_selected", "removed"):
            vals = [v for v, s in zip(t[col].to_pylist(), t["status"].to_pylist()) if s == status and v is not None]
            if vals:
                ax.hist(vals, bins=40, alpha=0.6, label=f"{status} ({len(vals)})")
        ax.set_title(f"{col} by selection status")
        ax.legend(fontsize=7)
    return save_figure(fig, uri)


def _counts_summary(counts: Counter, budget: int, by_stratum: Counter) -> dict:
    removed = Counter()
    for (_, reason), n in counts.items():
        removed[reason or ""] += n
    eligible = removed.pop("", 0)
    return {
        "input_rows": sum(counts.values()),
        "removed": dict(sorted(removed.items())),
        "eligible": eligible,
        "budget": budget,
        "selected": sum(by_stratum.values()),
        "not_selected": eligible - sum(by_stratum.values()),
        "selected_by_stratum": dict(sorted(by_stratum.items())),
    }


def select(cfg: SelectConfig) -> dict:
    """Score, filter, dedup and select; returns the manifest written to ``out_dir``."""
    return Select(cfg).execute()
