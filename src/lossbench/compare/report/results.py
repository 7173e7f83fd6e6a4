"""Finished run folders -> one polars row per run -> `results.parquet` / `results.csv`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from lossbench.atomic import write_with
from lossbench.data.fingerprint import describe
from lossbench.errors import LossbenchError
from lossbench.training.run_files import (
    CONFIG_FILE,
    DAMAGED_FIX,
    HISTORY_FILE,
    METRICS_FILE,
    RANKS_FILE,
    REPLACED,
    read_metrics,
    read_record,
    run_problems,
)
from lossbench.training.run_labels import record_label

RESULTS_PARQUET = "results.parquet"
RESULTS_CSV = "results.csv"
KEY_COLUMNS = ["dataset", "model", "loss", "seed"]
# What a run cost, as each run's metrics.json records it.
COST_COLUMNS = (
    "train_seconds",
    "train_seconds_per_epoch",
    "eval_seconds_per_epoch",
    "loss_seconds_per_epoch",
    "loss_share",
    "tokens_per_second",
    "peak_memory_mb",
)
TIMING_COLUMNS = ["best_epoch", "epochs", *COST_COLUMNS]
POPULARITY_PREFIX = "pop_"  # pop_valid_ndcg@10: the popularity floor on the run's own users


def find_finished_runs(root: Path) -> list[Path]:
    """Every run folder under `root` (or `root` itself) whose metrics.json exists, sorted;
    folders a resumed comparison moved aside (`<run>.replaced-<time>`) are not among them."""
    return sorted(
        path.parent
        for path in root.rglob(METRICS_FILE)
        if REPLACED not in path.parent.relative_to(root).as_posix()
    )


def run_row(run_dir: Path) -> dict[str, Any]:
    """One run as a flat row: keys, resolved loss settings, metrics, timings, config."""
    if problems := run_problems(run_dir, hashes=False):  # a stat per file: cheap
        raise LossbenchError(f"{problems[0]}; {DAMAGED_FIX}")
    metrics = read_metrics(run_dir)
    record = read_record(run_dir)
    if record is None:
        raise LossbenchError(f"{run_dir / CONFIG_FILE} is missing or damaged; {DAMAGED_FIX}")
    config = record.get("config", {})
    loss_settings = {k: v for k, v in record.get("loss_settings", {}).items() if k != "loss"}
    environment = record.get("environment", {})
    return {
        "dataset": metrics["dataset"],
        "model": metrics["model"],
        "loss": record_label(metrics["loss"], config),  # the arm: loss [sampler] [logq] ...
        "seed": int(metrics["seed"]),
        **loss_settings,
        "loss_name": metrics["loss"],
        "split": metrics.get("split", "loo"),
        "shuffle_train": config.get("shuffle_train", False),
        "sampler": config.get("sampler"),
        "logq": config.get("logq", False),
        "negatives_unseen": config.get("negatives_unseen", False),
        **{f"valid_{name}": float(value) for name, value in metrics["valid"].items()},
        **{f"test_{name}": float(value) for name, value in metrics["test"].items()},
        **{name: metrics.get(name) for name in TIMING_COLUMNS},
        "collapsed": bool(metrics.get("collapsed", False)),  # runs before the rule: not
        **_popularity_columns(metrics),
        "validation_metric": metrics.get("validation_metric"),
        "seen_targets": _seen_rule(metrics, config),
        "device": environment.get("device"),
        "precision": environment.get("precision"),
        "dataset_fingerprint": _fingerprint(record),
        "model_settings": json.dumps(record.get("model_settings", {}), sort_keys=True),
        "config": json.dumps(config, sort_keys=True),
        "run_dir": str(run_dir),
    }


def _fingerprint(record: dict[str, Any]) -> str | None:
    """The prepared data a run trained on, in words; None for runs recorded without it."""
    dataset = record.get("dataset")
    fingerprint = dataset.get("fingerprint") if isinstance(dataset, dict) else None
    return describe(fingerprint) if fingerprint else None


def _popularity_columns(metrics: dict[str, Any]) -> dict[str, float]:
    """pop_valid_* / pop_test_*: the popularity ranking's metrics, where the run recorded them."""
    floor = metrics.get("popularity") or {}
    return {
        f"{POPULARITY_PREFIX}{split}_{name}": float(value)
        for split in ("valid", "test")
        for name, value in floor.get(split, {}).items()
    }


def _seen_rule(metrics: dict[str, Any], config: dict[str, Any]) -> str:
    """miss, rank or keep; runs recorded before the rule existed ranked seen targets."""
    if "seen_targets" in metrics:
        return str(metrics["seen_targets"])
    if not config.get("exclude_seen", True):
        return "keep"
    return str(config.get("seen_targets", "rank"))


def results_frame(run_dirs: list[Path]) -> pl.DataFrame:
    """(runs, columns) frame sorted by dataset, model, loss, seed; missing metrics are null."""
    rows = [run_row(run_dir) for run_dir in run_dirs]
    frame = pl.from_dicts(rows, infer_schema_length=None)
    return frame.sort(KEY_COLUMNS, maintain_order=True)


def write_results(frame: pl.DataFrame, out_dir: Path) -> list[Path]:
    parquet, csv = out_dir / RESULTS_PARQUET, out_dir / RESULTS_CSV
    write_with(parquet, frame.write_parquet)
    write_with(csv, frame.write_csv)
    return [parquet, csv]


def read_ranks(run_dir: Path) -> pl.DataFrame:
    """`user`, `target`, `rank` of every test user of one run."""
    return _read(run_dir / RANKS_FILE, pl.read_parquet, ("user", "target", "rank"))


def read_history(run_dir: Path) -> pl.DataFrame:
    """One row per epoch: loss, validation metrics, seconds, peak memory."""
    return _read(run_dir / HISTORY_FILE, pl.read_csv, ("epoch",))


def _read(
    path: Path, reader: Callable[[Path], pl.DataFrame], columns: tuple[str, ...]
) -> pl.DataFrame:
    """`reader(path)`; a missing, cut or overwritten file is a LossbenchError naming it."""
    try:
        frame = reader(path)
    except FileNotFoundError:
        raise LossbenchError(f"{path} is missing; {DAMAGED_FIX}") from None
    except (OSError, pl.exceptions.PolarsError) as error:
        kind = type(error).__name__
        raise LossbenchError(f"{path} is damaged ({kind}); {DAMAGED_FIX}") from None
    if missing := [name for name in columns if name not in frame.columns]:
        raise LossbenchError(f"{path} is damaged (no {', '.join(missing)} column); {DAMAGED_FIX}")
    return frame
