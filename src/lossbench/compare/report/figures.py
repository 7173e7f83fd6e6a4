"""The comparison's figures as PNGs: quality vs training time (the study's Figure 1),
validation curves against wall-clock time (of the metric each run's early stopping used,
its best epoch marked), and the quality-cost frontier.

Figures are built with `matplotlib.figure.Figure` (Agg canvas), never pyplot: no global
backend or open-figure state, so it works headless and inside tests.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from lossbench.atomic import write_with
from lossbench.compare.report.results import read_history
from lossbench.compare.report.summary import BETTER, WORSE

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn: it costs a second at startup
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

QUALITY_VS_TIME = "quality_vs_time.png"
VALIDATION_CURVES = "validation_curves.png"
FRONTIER = "frontier.png"
COSTS = {"train_seconds_per_epoch": "training seconds per epoch", "peak_memory_mb": "peak MB"}
_SIGNIFICANCE_MARKERS = {BETTER: "^", WORSE: "v", "": "o"}  # the baseline: "s"
_BUBBLE_AREA = 1500.0  # points^2 of the largest peak memory


def quality_vs_time(summary: pl.DataFrame, path: Path, metric: str = "ndcg@10") -> Path:
    """One bubble per (model, loss): x = mean total training seconds, y = mean test metric,
    area = mean peak memory; one panel per dataset. Losses whose runs all collapsed have no
    mean and no bubble."""
    datasets = summary["dataset"].unique(maintain_order=True).to_list()
    figure, panels = _panels(len(datasets))
    colors = _colors(summary["loss"].to_list())
    largest = summary["peak_memory_mb"].max() if "peak_memory_mb" in summary.columns else None
    for axes, dataset in zip(panels, datasets, strict=False):
        part = summary.filter(pl.col("dataset") == dataset)
        several_models = part["model"].n_unique() > 1
        for row in part.iter_rows(named=True):
            if row.get("reference") or row[f"{metric}_mean"] is None:
                continue  # the pop floor (no cost), or a loss whose every run collapsed
            memory = row.get("peak_memory_mb")
            area = (
                _BUBBLE_AREA * memory / largest
                if memory is not None and isinstance(largest, float) and largest > 0
                else 200.0
            )
            x, y = row.get("train_seconds") or 0.0, row[f"{metric}_mean"]
            axes.scatter(
                [x],
                [y],
                s=area,
                color=colors[row["loss"]],
                alpha=0.55,
                edgecolors="black",
                linewidths=0.6,
            )
            if row.get(f"{metric}_std") is not None:
                axes.errorbar(
                    [x], [y], yerr=[row[f"{metric}_std"]], color="black", linewidth=0.8, capsize=2
                )
            label = f"{row['model']} + {row['loss']}" if several_models else row["loss"]
            memory_text = "" if memory is None else f"\n{memory:.0f} MB"
            axes.annotate(
                label + memory_text, (x, y), textcoords="offset points", xytext=(8, 6), fontsize=8
            )
        axes.set_title(dataset)
        axes.set_xlabel("training seconds (mean over seeds)")
        axes.set_ylabel(f"test {metric.upper()} (mean over seeds)")
        axes.margins(0.25)
        axes.grid(alpha=0.3)
    figure.suptitle("quality against training time (bubble area = peak memory)")
    return _save(figure, path)


@dataclass(frozen=True)
class RunCurve:
    """One run's validation curve: its early-stopping metric against elapsed seconds."""

    loss: str
    metric: str  # the run's validation metric, which decided its early stopping
    epochs: list[int]  # (E,) the epochs recorded in history.csv
    seconds: list[float]  # (E,) elapsed wall-clock seconds at each epoch's end
    values: list[float]  # (E,) validation `metric` after each epoch
    best_epoch: int | None  # the epoch whose weights were kept (None: not recorded)

    @property
    def best(self) -> tuple[float, float] | None:
        """(seconds, value) of the best epoch, where the figure marks it."""
        if self.best_epoch is None or self.best_epoch not in self.epochs:
            return None
        at = self.epochs.index(self.best_epoch)
        return self.seconds[at], self.values[at]


@dataclass(frozen=True)
class CurvePanel:
    dataset: str
    model: str
    curves: list[RunCurve]

    @property
    def metrics(self) -> list[str]:
        return sorted({curve.metric for curve in self.curves})


def validation_curve_panels(runs: pl.DataFrame, metric: str = "ndcg@10") -> list[CurvePanel]:
    """What `validation_curves` draws: per (dataset, model), each run's curve of the metric
    its early stopping used (from its config; `metric`, the configuration's default, for a
    run that records none)."""
    panels = []
    for dataset, model in runs.select("dataset", "model").unique(maintain_order=True).rows():
        part = runs.filter((pl.col("dataset") == dataset) & (pl.col("model") == model))
        curves = [_run_curve(row, metric) for row in part.iter_rows(named=True)]
        panels.append(CurvePanel(dataset, model, [curve for curve in curves if curve.epochs]))
    return panels


def _run_curve(row: dict[str, Any], default_metric: str) -> RunCurve:
    config = json.loads(row["config"]) if row.get("config") else {}
    metric = config.get("validation_metric") or row.get("validation_metric") or default_metric
    history = read_history(Path(row["run_dir"]))
    column = f"valid_{metric}"
    if column not in history.columns:  # recorded before the metric was: nothing to draw
        return RunCurve(row["loss"], metric, [], [], [], None)
    best = row.get("best_epoch")
    return RunCurve(
        loss=row["loss"],
        metric=metric,
        epochs=history["epoch"].to_list(),
        seconds=history["elapsed_seconds"].to_list(),
        values=history[column].to_list(),
        best_epoch=None if best is None else int(best),
    )


def validation_curves(runs: pl.DataFrame, path: Path, metric: str = "ndcg@10") -> Path:
    """Each run's early-stopping metric on validation against elapsed wall-clock seconds, one
    panel per (dataset, model): each seed a thin line with its best epoch marked, the mean over
    seeds (per epoch, while every seed still trains) a thick one, one colour per loss."""
    return _save(validation_curves_figure(validation_curve_panels(runs, metric)), path)


def validation_curves_figure(panels: list[CurvePanel]) -> Figure:
    figure, axes_list = _panels(len(panels))
    colors = _colors(curve.loss for panel in panels for curve in panel.curves)
    for axes, panel in zip(axes_list, panels, strict=False):
        mixed = len(panel.metrics) > 1  # runs stopped on different metrics: name each
        groups: dict[tuple[str, str], list[RunCurve]] = {}
        for curve in panel.curves:
            groups.setdefault((curve.loss, curve.metric), []).append(curve)
        for (loss, metric), curves in groups.items():
            for curve in curves:
                axes.plot(
                    curve.seconds, curve.values, color=colors[loss], linewidth=0.7, alpha=0.35
                )
                if (best := curve.best) is not None:
                    axes.plot(*best, marker="*", markersize=9, color=colors[loss], gid="best")
            seeds = f"{len(curves)} seed{'s' if len(curves) > 1 else ''}"
            label = f"{loss}, {metric.upper()} ({seeds})" if mixed else f"{loss} ({seeds})"
            axes.plot(*_mean_curve(curves), color=colors[loss], linewidth=2.0, label=label)
        axes.set_title(f"{panel.dataset}: {panel.model}")
        axes.set_xlabel("wall-clock seconds since the start of training")
        axes.set_ylabel(
            "validation: each run's early-stopping metric"
            if mixed or not panel.metrics
            else f"validation {panel.metrics[0].upper()} (the early-stopping metric)"
        )
        axes.grid(alpha=0.3)
        if panel.curves:
            axes.legend(fontsize=8)
    figure.suptitle(
        "validation curves (thin: seeds, * their best epoch; thick: mean while all seeds train)"
    )
    return figure


def _mean_curve(curves: list[RunCurve]) -> tuple[list[float], list[float]]:
    """(seconds, values) averaged per epoch over the epochs every run reached: once a seed
    stops early, a mean over the rest would jump (and its mean time step backwards)."""
    epochs = sorted(set.intersection(*(set(curve.epochs) for curve in curves)))
    rows = [[curve.epochs.index(epoch) for epoch in epochs] for curve in curves]  # (runs, E)
    seconds = [np.asarray(c.seconds)[r] for c, r in zip(curves, rows, strict=True)]
    values = [np.asarray(c.values)[r] for c, r in zip(curves, rows, strict=True)]
    return np.mean(seconds, axis=0).tolist(), np.mean(values, axis=0).tolist()


def frontier_points(summary: pl.DataFrame, metric: str = "ndcg@10") -> pl.DataFrame:
    """The data behind the frontier figure: one row per (dataset, model, loss) with runs left
    after collapsed ones, its test `metric` mean and std, each cost, its significance mark,
    and `pareto_<cost>`: no other loss of the group is at least as good and at most as costly
    (better in one). The `pop` floor row has no cost and is not a point."""
    wanted = ["dataset", "model", "loss", "baseline", "mark", f"{metric}_mean", f"{metric}_std"]
    points = summary
    if "reference" in points.columns:
        points = points.filter(~pl.col("reference").fill_null(False))
    points = points.filter(pl.col(f"{metric}_mean").is_not_null())
    for cost in COSTS:
        if cost not in points.columns:
            points = points.with_columns(pl.lit(None, dtype=pl.Float64).alias(cost))
    points = points.select(*wanted, *COSTS).rename(
        {f"{metric}_mean": "mean", f"{metric}_std": "std"}
    )
    groups = []
    for _, group in points.group_by("dataset", "model", maintain_order=True):
        groups.append(
            group.with_columns(
                pl.Series(f"pareto_{cost}", _pareto(group[cost], group["mean"])) for cost in COSTS
            )
        )
    return pl.concat(groups) if groups else points


def _pareto(costs: pl.Series, values: pl.Series) -> list[bool]:
    """Whether each (cost, value) is not dominated: no other point costs no more and scores
    no less, better in one. A point without a cost is never on the frontier."""
    pairs = list(zip(costs.to_list(), values.to_list(), strict=True))
    flags = []
    for i, (cost, value) in enumerate(pairs):
        if cost is None:
            flags.append(False)
            continue
        dominated = any(
            other_cost is not None
            and other_cost <= cost
            and other_value >= value
            and (other_cost < cost or other_value > value)
            for j, (other_cost, other_value) in enumerate(pairs)
            if j != i
        )
        flags.append(not dominated)
    return flags


def frontier(summary: pl.DataFrame, path: Path, metric: str = "ndcg@10") -> Path:
    """Test `metric` (mean ± std over seeds) against seconds per epoch and against peak
    memory, one row of two panels per (dataset, model): the Pareto-optimal losses outlined
    and joined by a line, ▲ / ▼ for a significant difference from the baseline (a square),
    and the popularity floor as a dashed line."""
    points = frontier_points(summary, metric)
    groups = points.select("dataset", "model").unique(maintain_order=True).rows()
    figure, panels = _panels(max(1, 2 * len(groups)), columns=2)
    colors = _colors(points["loss"].to_list())
    for index, (dataset, model) in enumerate(groups):
        part = points.filter((pl.col("dataset") == dataset) & (pl.col("model") == model))
        floor = _floor(summary, dataset, model, metric)
        for axes, (cost, label) in zip(panels[2 * index :], COSTS.items(), strict=False):
            _frontier_panel(axes, part, cost, colors, floor)
            axes.set_title(f"{dataset}: {model}")
            axes.set_xlabel(f"{label} (mean over seeds)")
            axes.set_ylabel(f"test {metric.upper()} (mean ± std over seeds)")
    figure.suptitle(
        "quality against cost (outlined and joined: Pareto-optimal losses; ▲ / ▼: "
        "significantly better / worse than the baseline ■)"
    )
    return _save(figure, path)


def _frontier_panel(
    axes: Axes, part: pl.DataFrame, cost: str, colors: dict[str, str], floor: float | None
) -> None:
    for row in part.iter_rows(named=True):
        if row[cost] is None:
            continue
        marker = "s" if row["loss"] == row["baseline"] else _SIGNIFICANCE_MARKERS[row["mark"]]
        optimal = row[f"pareto_{cost}"]
        axes.errorbar(
            [row[cost]],
            [row["mean"]],
            yerr=None if row["std"] is None else [row["std"]],
            fmt=marker,
            color=colors[row["loss"]],
            markersize=9 if optimal else 7,
            markeredgecolor="black" if optimal else colors[row["loss"]],  # on the frontier
            capsize=2,
            label=row["loss"],
        )
        axes.annotate(
            row["loss"], (row[cost], row["mean"]), textcoords="offset points", xytext=(6, 5)
        )
    line = part.filter(pl.col(f"pareto_{cost}")).sort(cost)
    if line.height > 1:
        axes.plot(line[cost], line["mean"], color="black", linewidth=1.0, linestyle="-")
    if floor is not None:
        axes.axhline(floor, color="grey", linestyle="--", linewidth=0.8, label="pop (floor)")
    axes.margins(0.2)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[1]:  # a pop floor or a labelled point
        axes.legend(fontsize=7)


def _floor(summary: pl.DataFrame, dataset: str, model: str, metric: str) -> float | None:
    if "reference" not in summary.columns:
        return None
    rows = summary.filter(
        pl.col("reference").fill_null(False)
        & (pl.col("dataset") == dataset)
        & (pl.col("model") == model)
    )
    value = rows[f"{metric}_mean"][0] if rows.height else None
    return float(value) if value is not None else None


def _panels(count: int, columns: int = 3) -> tuple[Figure, list[Axes]]:
    columns = min(count, columns)
    rows = math.ceil(count / columns)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0 * columns, 4.5 * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    every = [axes for row in grid for axes in row]
    for unused in every[count:]:
        unused.set_visible(False)
    return figure, every[:count]


def _colors(losses: Iterable[str]) -> dict[str, str]:
    """The same colour for a loss in every panel and figure."""
    names = sorted(set(losses))
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def _save(figure: Figure, path: Path) -> Path:
    write_with(path, lambda temporary: figure.savefig(temporary, format="png", dpi=130))
    return path
