"""Observers of a training run: told when it starts, after every epoch, and when it finishes.

Experiment trackers (`lossbench.training.tracking`) and checks such as `FiniteLoss` are
observers; the loop calls them in order, after the run folder has been written for the same
step, so an observer sees exactly what the run files hold. An observer that raises stops the run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

from lossbench.errors import LossbenchError


class RunObserver(Protocol):
    def on_start(self, run_dir: Path, record: dict[str, Any]) -> None:
        """`record` is what `config.json` holds: config, model / loss settings, environment."""

    def on_epoch(self, row: dict[str, Any]) -> None:
        """`row` is the epoch's `history.csv` row: epoch, loss, seconds, valid_* metrics."""

    def on_finish(self, metrics: dict[str, Any]) -> None:
        """`metrics` is what `metrics.json` holds: valid / test metrics, timings, names."""


class FiniteLoss:
    """Stops a run whose training loss is not finite: what it would go on to test is noise."""

    def on_start(self, run_dir: Path, record: dict[str, Any]) -> None:
        pass

    def on_epoch(self, row: dict[str, Any]) -> None:
        if not math.isfinite(row["loss"]):
            raise LossbenchError(f"the training loss is {row['loss']} in epoch {row['epoch']}")

    def on_finish(self, metrics: dict[str, Any]) -> None:
        pass
