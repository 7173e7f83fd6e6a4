"""Per-run results -> one row per (dataset, model, loss): mean +- std over seeds, change
against the baseline loss, and a paired significance test over (user, seed) pairs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from lossbench.compare.report.results import POPULARITY_PREFIX, read_ranks
from lossbench.compare.report.stats import DEFAULT_PERMUTATIONS, holm_adjust, sign_flip_test
from lossbench.evaluation.metrics import per_user_metric

BETTER, WORSE = "▲", "▼"
POPULARITY = "pop"  # the reference row: the training data's most popular items
GROUP = ["dataset", "model"]


@dataclass(frozen=True)
class SummaryOptions:
    metrics: list[str] = field(default_factory=lambda: ["hr@10", "ndcg@10"])  # shown columns
    significance_metric: str = "ndcg@10"  # per-user metric the paired test compares
    alpha: float = 0.05  # family-wise level, Holm-corrected over the rows of a dataset
    n_permutations: int = DEFAULT_PERMUTATIONS


def summarize(
    runs: pl.DataFrame,
    baselines: Mapping[tuple[str, str], str],
    options: SummaryOptions,
    loss_order: list[str] | None = None,
) -> pl.DataFrame:
    """One row per (dataset, model, loss) of `runs` (one row per run, see results.py), then a
    `pop` row per (dataset, model): the popularity floor, where the runs recorded it.

    `baselines` maps (dataset, model) to its baseline loss; a group without one (or whose
    baseline has no runs) uses its first loss. Rows follow `loss_order`, then first appearance.
    Collapsed runs are counted (`collapsed`) but left out of every mean and paired test.
    """
    ranks = _RankCache()
    metrics = list(dict.fromkeys([*options.metrics, options.significance_metric]))
    per_run = runs.with_columns(
        pl.Series(f"test_{name}", _run_means(runs, name, ranks), dtype=pl.Float64)
        for name in metrics
    )
    if "collapsed" not in per_run.columns:
        per_run = per_run.with_columns(pl.lit(False).alias("collapsed"))
    rows: list[dict[str, object]] = []
    for (dataset, model), group in per_run.group_by(GROUP, maintain_order=True):
        losses = _ordered(group["loss"].unique(maintain_order=True).to_list(), loss_order)
        baseline = baselines.get((str(dataset), str(model)), losses[0])
        baseline = baseline if baseline in losses else losses[0]
        kept = group.filter(~pl.col("collapsed"))
        reference = kept.filter(pl.col("loss") == baseline)
        for loss in losses:
            every_run = group.filter(pl.col("loss") == loss)
            runs_of_loss = kept.filter(pl.col("loss") == loss)
            row: dict[str, object] = {
                "dataset": dataset,
                "model": model,
                "loss": loss,
                "baseline": baseline,
                "seeds": runs_of_loss.height,
                "collapsed": every_run.height - runs_of_loss.height,
                "reference": False,
                "split": _split(every_run),
            }
            for name in metrics:
                values = runs_of_loss[f"test_{name}"]
                mean, base_mean = values.mean(), reference[f"test_{name}"].mean()
                row[f"{name}_mean"] = mean
                row[f"{name}_std"] = values.std() if len(values) > 1 else None
                row[f"{name}_change"] = _relative_change(mean, base_mean)
            row.update(_timings(every_run))  # a collapsed run cost what it cost
            if "seen_targets" in every_run.columns:  # the seen-items rule, for the footnote
                row["seen_targets"] = ", ".join(sorted(set(every_run["seen_targets"])))
            row["mean_difference"], row["p_value"], row["pairs"] = (
                _paired(runs_of_loss, reference, options, ranks)
                if loss != baseline
                else (None, None, None)
            )
            rows.append(row)
        floor = _popularity_row(group, baseline, reference, metrics)
        if floor is not None:
            rows.append(floor)
    table = pl.from_dicts(rows, infer_schema_length=None)
    return _with_holm(table, options.alpha)


def _popularity_row(
    group: pl.DataFrame, baseline: str, reference: pl.DataFrame, metrics: list[str]
) -> dict[str, object] | None:
    """The `pop` row of one (dataset, model): the popularity ranking's test metrics averaged
    over the group's runs (the same users, unless runs sampled users by seed); no test."""
    columns = [f"{POPULARITY_PREFIX}test_{name}" for name in metrics]
    if not any(column in group.columns for column in columns):
        return None  # runs recorded before the floor existed
    row: dict[str, object] = {
        "dataset": group["dataset"][0],
        "model": group["model"][0],
        "loss": POPULARITY,
        "baseline": baseline,
        "seeds": None,
        "collapsed": None,
        "reference": True,
        "split": _split(group),
    }
    for name, column in zip(metrics, columns, strict=True):
        mean = group[column].cast(pl.Float64).mean() if column in group.columns else None
        row[f"{name}_mean"] = mean
        row[f"{name}_std"] = None
        row[f"{name}_change"] = _relative_change(mean, reference[f"test_{name}"].mean())
    row["mean_difference"], row["p_value"], row["pairs"] = None, None, None
    return row


def _with_holm(table: pl.DataFrame, alpha: float) -> pl.DataFrame:
    """Holm over the non-baseline rows of each dataset, then the ▲ / ▼ marks."""
    adjusted = np.full(table.height, np.nan)
    p_values = table["p_value"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    datasets = table["dataset"].to_numpy()
    for dataset in np.unique(datasets):
        rows = datasets == dataset
        adjusted[rows] = holm_adjust(p_values[rows])
    difference = table["mean_difference"].cast(pl.Float64).fill_null(0.0).to_numpy()
    significant = np.nan_to_num(adjusted, nan=1.0) < alpha
    marks = np.where(
        significant & (difference > 0), BETTER, np.where(significant & (difference < 0), WORSE, "")
    )
    return table.with_columns(
        pl.Series("p_holm", adjusted).fill_nan(None), pl.Series("mark", marks)
    )


def _paired(
    runs: pl.DataFrame, reference: pl.DataFrame, options: SummaryOptions, ranks: _RankCache
) -> tuple[float | None, float | None, int | None]:
    """Pool (user, seed) pairs over the seeds both losses have; test the paired metric."""
    treated, base = [], []
    base_dirs = dict(zip(reference["seed"].to_list(), reference["run_dir"].to_list(), strict=True))
    for seed, run_dir in zip(runs["seed"].to_list(), runs["run_dir"].to_list(), strict=True):
        if seed not in base_dirs:
            continue
        joined = ranks.get(run_dir).join(ranks.get(base_dirs[seed]), on="user", suffix="_base")
        treated.append(per_user_metric(joined["rank"].to_numpy(), options.significance_metric))
        base.append(per_user_metric(joined["rank_base"].to_numpy(), options.significance_metric))
    if not treated:
        return None, None, None
    test = sign_flip_test(np.concatenate(treated), np.concatenate(base), options.n_permutations)
    return test.mean_difference, test.p_value, test.n_pairs


def _run_means(runs: pl.DataFrame, name: str, ranks: _RankCache) -> list[float]:
    """Each run's test value of `name`: from metrics.json, else recomputed from its ranks."""
    column = f"test_{name}"
    saved = runs[column].to_list() if column in runs.columns else [None] * runs.height
    return [
        float(value)
        if value is not None
        else float(per_user_metric(ranks.get(run_dir)["rank"].to_numpy(), name).mean())
        for value, run_dir in zip(saved, runs["run_dir"].to_list(), strict=True)
    ]


def _split(runs: pl.DataFrame) -> str:
    """The rows' split label(s), e.g. 'loo' or 'temporal 0.8/0.9'."""
    if "split" not in runs.columns:
        return "loo"
    return ", ".join(sorted({str(split) for split in runs["split"].to_list()}))


def _timings(runs: pl.DataFrame) -> dict[str, float | None]:
    return {
        name: runs[name].cast(pl.Float64).mean()  # type: ignore[misc]
        for name in (
            "train_seconds_per_epoch",
            "train_seconds",
            "best_epoch",
            "epochs",
            "peak_memory_mb",
            "loss_seconds_per_epoch",
            "loss_share",
            "tokens_per_second",
        )
        if name in runs.columns
    }


def _relative_change(value: object, reference: object) -> float | None:
    if not isinstance(value, float) or not isinstance(reference, float) or reference == 0:
        return None
    return 100.0 * (value - reference) / reference


def _ordered(losses: list[str], order: list[str] | None) -> list[str]:
    rank = {name: i for i, name in enumerate(order or [])}
    return sorted(losses, key=lambda name: rank.get(name, len(rank)))  # stable: then appearance


class _RankCache:
    """Each run's test ranks, read once (they are read for metrics and for every pairing)."""

    def __init__(self) -> None:
        self._frames: dict[str, pl.DataFrame] = {}

    def get(self, run_dir: str) -> pl.DataFrame:
        if run_dir not in self._frames:
            self._frames[run_dir] = read_ranks(Path(run_dir)).select("user", "rank")
        return self._frames[run_dir]
