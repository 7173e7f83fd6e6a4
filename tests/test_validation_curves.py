"""validation_curves.png plots the metric each run's early stopping used, read from its
config, and marks each run's best epoch (checked through the figure's data and artists)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from lossbench.compare.report.figures import (
    validation_curve_panels,
    validation_curves,
    validation_curves_figure,
)
from lossbench.compare.report.results import results_frame
from lossbench.training.config import TrainConfig

# NDCG@10 peaks at epoch 2, NDCG@20 (what stopped the runs) at epoch 3.
NDCG10 = [0.10, 0.30, 0.20, 0.15]
NDCG20 = [0.12, 0.20, 0.35, 0.25]


def write_run(root: Path, loss: str, seed: int, metric: str, best_epoch: int) -> Path:
    run_dir = root / "toy" / "sasrec" / loss / f"seed{seed}"
    run_dir.mkdir(parents=True)
    config = TrainConfig(dataset="toy", model="sasrec", loss=loss, seed=seed)
    record = {"config": config.model_dump(mode="json") | {"validation_metric": metric}}
    (run_dir / "config.json").write_text(json.dumps(record))
    pl.DataFrame(
        {
            "epoch": [1, 2, 3, 4],
            "loss": [3.0, 2.0, 1.5, 1.4],
            "elapsed_seconds": [10.0 + seed, 20.0 + seed, 30.0 + seed, 40.0 + seed],
            "valid_ndcg@10": [value + seed / 100 for value in NDCG10],
            "valid_ndcg@20": [value + seed / 100 for value in NDCG20],
        }
    ).write_csv(run_dir / "history.csv")
    metrics = {
        "valid": {"ndcg@10": 0.3, "ndcg@20": 0.35},
        "test": {"ndcg@10": 0.2},
        "best_epoch": best_epoch,
        "epochs": 4,
        "validation_metric": metric,
        "loss": loss,
        "model": "sasrec",
        "dataset": "toy",
        "seed": seed,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


def test_the_curves_plot_the_early_stopping_metric_and_mark_the_best_epoch(
    tmp_path: Path,
) -> None:
    runs = results_frame([write_run(tmp_path, "bce", seed, "ndcg@20", 3) for seed in (0, 1)])
    (panel,) = validation_curve_panels(runs)
    assert panel.metrics == ["ndcg@20"]
    first, second = panel.curves
    assert first.values == pytest.approx(NDCG20)
    assert second.values == pytest.approx([value + 0.01 for value in NDCG20])
    assert (first.best_epoch, first.best) == (3, (30.0, pytest.approx(0.35)))

    figure = validation_curves_figure([panel])
    (axes,) = figure.axes
    assert axes.get_ylabel() == "validation NDCG@20 (the early-stopping metric)"
    markers = [line for line in axes.get_lines() if line.get_gid() == "best"]
    assert [(line.get_xdata()[0], line.get_ydata()[0]) for line in markers] == [
        (30.0, pytest.approx(0.35)),
        (31.0, pytest.approx(0.36)),
    ]
    assert all(line.get_marker() == "*" for line in markers)
    (mean,) = [line for line in axes.get_lines() if line.get_label() == "bce (2 seeds)"]
    assert list(mean.get_xdata()) == [10.5, 20.5, 30.5, 40.5]
    assert list(mean.get_ydata()) == pytest.approx([value + 0.005 for value in NDCG20])
    assert "*" in figure.get_suptitle()


def test_runs_stopped_on_other_metrics_name_theirs(tmp_path: Path) -> None:
    run_dirs = [
        write_run(tmp_path, "bce", 0, "ndcg@20", 3),
        write_run(tmp_path, "improved", 0, "ndcg@10", 2),
    ]
    (panel,) = validation_curve_panels(results_frame(run_dirs))
    by_loss = {curve.loss: curve for curve in panel.curves}
    assert by_loss["improved"].values == pytest.approx(NDCG10)
    assert by_loss["improved"].best == (20.0, pytest.approx(0.30))
    (axes,) = validation_curves_figure([panel]).axes
    assert axes.get_ylabel() == "validation: each run's early-stopping metric"
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    assert labels == ["bce, NDCG@20 (1 seed)", "improved, NDCG@10 (1 seed)"]


def test_the_figure_file_is_written(tmp_path: Path) -> None:
    runs = results_frame([write_run(tmp_path, "bce", 0, "ndcg@20", 3)])
    path = validation_curves(runs, tmp_path / "validation_curves.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    assert not list(tmp_path.glob(".*.tmp"))
