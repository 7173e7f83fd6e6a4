"""Runs that fail to train: recorded (a one-line error, the traceback in the run folder)
instead of ending the comparison, whichever executor trained them (see compare/ci/step.py);
and `RunHandling`, what a comparison asks of every run it hands an executor."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console

from lossbench.compare.execute.types import Executor, RunFailure, TrainFn
from lossbench.data.prepared import PreparedDataset
from lossbench.errors import LossbenchError, PeerLost
from lossbench.training.entry import PlanEntry
from lossbench.training.loop import RunResult
from lossbench.training.observers import RunObserver
from lossbench.training.run_labels import config_label

FAILURE_FILE = "failure.txt"  # a failed run's traceback, in its run folder


class FailedRuns:
    """The comparison's failed runs. `guard` wraps a train function so that a run that raises
    is recorded instead of ending the comparison (KeyboardInterrupt still ends it); an executor
    whose runs train elsewhere (Ray workers) records theirs with `add`."""

    def __init__(self) -> None:
        self.failures: list[RunFailure] = []

    def add(self, failure: RunFailure) -> None:
        self.failures.append(failure)

    def guard(self, train: TrainFn) -> TrainFn:
        def guarded(
            entry: PlanEntry, dataset: PreparedDataset, console: Console
        ) -> RunResult | None:
            result, failure = train_or_fail(train, entry, dataset, console)
            if failure is not None:
                self.add(failure)
                console.print(
                    failure.line, style="red", markup=False, highlight=False, soft_wrap=True
                )
            return result

        return guarded


def train_or_fail(
    train: TrainFn, entry: PlanEntry, dataset: PreparedDataset, console: Console
) -> tuple[RunResult | None, RunFailure | None]:
    """Train `entry`; an error becomes a written-down failure (the previous one is removed)."""
    (entry.run_dir / FAILURE_FILE).unlink(missing_ok=True)
    try:
        return train(entry, dataset, console), None
    except PeerLost:  # another rank died: the run did not fail, it resumes on a rerun
        raise
    except Exception as error:  # noqa: BLE001  a failed run is a result here
        message = (
            str(error) if isinstance(error, LossbenchError) else f"{type(error).__name__}: {error}"
        )
        details = "".join(traceback.format_exception(error))
        return None, record_failure(entry, message, details)


def record_failure(entry: PlanEntry, message: str, details: str) -> RunFailure:
    """The failure of `entry`, its `details` (a traceback) written to the run folder."""
    config, run_dir = entry.config, entry.run_dir
    failure = RunFailure(
        label=entry.label,
        dataset=config.dataset,
        model=config.model,
        loss=config_label(config),  # the arm, as the table names it
        seed=config.seed,
        run_dir=run_dir,
        error=" ".join(message.split()),  # one line
        details=details,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FAILURE_FILE).write_text(details)
    return failure


@dataclass(frozen=True)
class RunHandling:
    """What a comparison asks of each of its runs, whichever executor trains them."""

    checks: tuple[RunObserver, ...]  # observers that go with the run and may stop it
    watchers: tuple[RunObserver, ...]  # observers that only see it (experiment trackers)
    failed: FailedRuns  # a run that raises is recorded here; the others go on


ExecutorFactory = Callable[[RunHandling], Executor]
