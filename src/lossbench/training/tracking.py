"""Experiment tracking (`--track mlflow|tensorboard`): each run's settings, per-epoch loss and
validation metrics, test metrics, and the comparison's figures, as the tracker stores them.

A tracker is a run observer (training/observers.py) plus `log_comparison` and `close`. Both
are optional extras, imported only when asked for:

- MLflow: a local store under the output folder (`mlflow.db`, artifacts in `mlartifacts/`),
  or any server or store that `MLFLOW_TRACKING_URI` names; experiment `MLFLOW_EXPERIMENT_NAME`
  (default "lossbench"). A comparison is a parent run, each training run a child of it.
- TensorBoard: event files under `<out>/tensorboard/`, one folder per run (its run folder's
  path) and `comparison/` for the figures.

Metric names: `train/loss`, `valid/ndcg_at_10`, `test/hr_at_10`, ... ("@" is not allowed in
MLflow keys, and both trackers use the same names).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from lossbench.errors import LossbenchError
from lossbench.training.observers import RunObserver

EXPERIMENT = "lossbench"
RUN_ARTIFACTS = ("config.json", "metrics.json", "history.csv")
EPOCH_FIELDS = {
    "loss": "train/loss",
    "train_seconds": "time/train_seconds",
    "eval_seconds": "time/eval_seconds",
    "elapsed_seconds": "time/elapsed_seconds",
    "peak_memory_mb": "memory/peak_mb",
}


class Tracker(RunObserver, Protocol):
    def log_comparison(self, files: Sequence[Path]) -> None:
        """The comparison's report files (figures, summary.md, results.csv)."""

    def close(self, failed: bool = False) -> None:
        """End what is still open; a run that never finished is marked failed."""


def metric_key(prefix: str, name: str) -> str:
    return f"{prefix}/{name.replace('@', '_at_')}"


def run_label(record: dict[str, Any]) -> str:
    """'synthetic sasrec + bce, seed 0', with the arm's label as the table shows it."""
    from lossbench.training.run_labels import record_label

    config = record["config"]
    loss = record_label(record["loss_settings"]["loss"], config)
    return f"{config['dataset']} {config['model']} + {loss}, seed {config['seed']}"


def flat_settings(record: dict[str, Any]) -> dict[str, str]:
    """The run's settings as flat string parameters: config fields, model.*, loss.*."""
    config = {k: v for k, v in record["config"].items() if k != "model_settings"}
    model = {f"model.{k}": v for k, v in record["model_settings"].items()}
    loss = {f"loss.{k}": v for k, v in record["loss_settings"].items()}
    return {key: str(value) for key, value in {**config, **model, **loss}.items()}


class MlflowTracker:
    """Logs through `MlflowClient` (no global active run): safe beside other MLflow users."""

    def __init__(self, root: Path, comparison: str | None) -> None:
        for name in ("mlflow", "alembic"):  # their INFO lines would interleave the display
            logging.getLogger(name).setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SQLAlchemy deprecations inside MLflow's store
            from mlflow.tracking import MlflowClient

            uri = os.environ.get("MLFLOW_TRACKING_URI")
            local = not uri
            if local:
                root.mkdir(parents=True, exist_ok=True)
                uri = f"sqlite:///{(root / 'mlflow.db').resolve()}"
            self.client = MlflowClient(tracking_uri=uri)
            self.experiment_id = self._experiment(
                (root / "mlartifacts").resolve().as_uri() if local else None
            )
        self.root = root
        self.parent: str | None = None
        if comparison is not None:
            tags = {"lossbench.kind": "comparison", "lossbench.out": str(root)}
            run = self.client.create_run(self.experiment_id, run_name=comparison, tags=tags)
            self.parent = run.info.run_id
        self.run_id: str | None = None
        self.run_dir: Path | None = None

    def _experiment(self, artifact_location: str | None) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        existing = self.client.get_experiment_by_name(name)
        if existing is not None:
            return str(existing.experiment_id)
        return str(self.client.create_experiment(name, artifact_location=artifact_location))

    def on_start(self, run_dir: Path, record: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self._end_open("FAILED")
        config = record["config"]
        tags = {
            "lossbench.kind": "run",
            "lossbench.dataset": str(config["dataset"]),
            "lossbench.model": str(config["model"]),
            "lossbench.loss": str(record["loss_settings"]["loss"]),
            "lossbench.label": run_label(record),
            "lossbench.seed": str(config["seed"]),
            "lossbench.run_dir": str(run_dir),
        }
        if self.parent is not None:
            tags["mlflow.parentRunId"] = self.parent
        run = self.client.create_run(self.experiment_id, run_name=run_label(record), tags=tags)
        self.run_id, self.run_dir = run.info.run_id, run_dir
        params = [Param(key, value) for key, value in flat_settings(record).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def on_epoch(self, row: dict[str, Any]) -> None:
        values = {EPOCH_FIELDS[k]: v for k, v in row.items() if k in EPOCH_FIELDS}
        values.update(
            {
                metric_key("valid", k.removeprefix("valid_")): v
                for k, v in row.items()
                if k.startswith("valid_")
            }
        )
        self._log(values, step=int(row["epoch"]))

    def on_finish(self, metrics: dict[str, Any]) -> None:
        values = {metric_key("test", name): value for name, value in metrics["test"].items()}
        values.update(
            {metric_key("best_valid", name): value for name, value in metrics["valid"].items()}
        )
        values.update({name: metrics[name] for name in ("best_epoch", "epochs", "train_seconds")})
        self._log(values, step=int(metrics["best_epoch"]))
        assert self.run_id is not None and self.run_dir is not None
        for name in RUN_ARTIFACTS:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        self._end_open("FINISHED")

    def log_comparison(self, files: Sequence[Path]) -> None:
        if self.parent is None:
            return
        for path in files:
            if path.is_file():
                self.client.log_artifact(self.parent, str(path))

    def close(self, failed: bool = False) -> None:
        self._end_open("FAILED")
        if self.parent is not None:
            self.client.set_terminated(self.parent, "FAILED" if failed else "FINISHED")
            self.parent = None

    def _log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        assert self.run_id is not None
        stamp = int(time.time() * 1000)
        batch = [Metric(key, float(value), stamp, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def _end_open(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)
        self.run_id = self.run_dir = None


class TensorBoardTracker:
    """Event files through torch's `SummaryWriter`, one writer per run."""

    def __init__(self, root: Path, comparison: str | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer_class = SummaryWriter
        self.root = root
        self.logs = root / "tensorboard"
        self.writer: Any = None

    def on_start(self, run_dir: Path, record: dict[str, Any]) -> None:
        self._close_writer()
        log_dir = self.logs / _relative(run_dir, self.root)
        for stale in log_dir.glob("events.out.tfevents.*"):  # a retrained run starts afresh
            stale.unlink()
        self.writer = self.writer_class(log_dir=str(log_dir))
        settings = json.dumps(record, indent=2, default=str)
        self.writer.add_text("settings", f"{run_label(record)}\n\n```\n{settings}\n```")

    def on_epoch(self, row: dict[str, Any]) -> None:
        step = int(row["epoch"])
        for key, value in row.items():
            if key in EPOCH_FIELDS:
                self.writer.add_scalar(EPOCH_FIELDS[key], value, step)
            elif key.startswith("valid_"):
                self.writer.add_scalar(metric_key("valid", key.removeprefix("valid_")), value, step)

    def on_finish(self, metrics: dict[str, Any]) -> None:
        step = int(metrics["best_epoch"])
        for name, value in metrics["test"].items():
            self.writer.add_scalar(metric_key("test", name), value, step)
        self._close_writer()

    def log_comparison(self, files: Sequence[Path]) -> None:
        from matplotlib.image import imread

        writer = self.writer_class(log_dir=str(self.logs / "comparison"))
        for path in files:
            if path.suffix == ".png" and path.is_file():
                image = imread(path)[..., :3]  # (H, W, 3) floats in [0, 1]
                writer.add_image(f"figures/{path.stem}", image, 0, dataformats="HWC")
            elif path.suffix == ".md" and path.is_file():
                writer.add_text(path.stem, path.read_text())
        writer.close()

    def close(self, failed: bool = False) -> None:
        self._close_writer()

    def _close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = None


def _relative(run_dir: Path, root: Path) -> Path:
    try:
        return run_dir.resolve().relative_to(root.resolve())
    except ValueError:
        return Path(run_dir.name)


# name -> (the package its extra installs, the tracker's constructor)
TRACKERS: dict[str, tuple[str, Callable[[Path, str | None], Tracker]]] = {
    "mlflow": ("mlflow", MlflowTracker),
    "tensorboard": ("tensorboard", TensorBoardTracker),
}


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def open_tracker(name: str, root: Path, comparison: str | None = None) -> Tracker:
    """The tracker `name`, storing under `root`; `comparison` names a comparison's parent run."""
    if name not in TRACKERS:
        raise LossbenchError(f"unknown tracker {name!r}; choose one of {', '.join(TRACKERS)}")
    package, make = TRACKERS[name]
    if not installed(package):
        raise LossbenchError(
            f"--track {name} needs the {package} package: pip install 'lossbench[{name}]'"
        )
    return make(root, comparison)
