"""The `ray` executor: each run one Ray task, the driver (this process) showing progress.

A task reserves `--cpus-per-run` CPUs, which are also the run's torch threads, and
`--gpus-per-run` GPUs (fractions let runs share one); Ray runs as many side by side as the
cluster holds. The driver prepares each dataset once and puts it in Ray's object store
(workers only read it), checks that every node sees the out folder (`ray_cluster.py`), then
submits every run. A worker trains its run with the runner's `train_unless_finished`, as the
local executor does, under the run folder's lock, from the same plan entry and with the same
checks (a non-finite loss stops it): the metrics are the local loop's to the last digit at
the same thread count. Trackers watch from the driver: each run's files are shown to them
when it ends, as the local loop would have shown them its epochs.

A run that raised is recorded as failed (its traceback in the run folder's failure.txt) and
not re-run; a run whose worker process died is re-run up to `--max-retries` times, then
recorded the same way. The others go on; the comparison then exits 1 listing the failed runs
(compare/ci/step.py), as with the local executor. Ctrl-C cancels the runs still out
(`ray_cluster.cancel_tasks`); run folders are only ever written atomically, so a rerun reuses
the finished runs and retrains the rest.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from lossbench.compare.execute import ray_cluster
from lossbench.compare.execute.failures import FailedRuns, record_failure
from lossbench.compare.execute.runner import train_unless_finished
from lossbench.compare.execute.runs_progress import RunsProgress
from lossbench.compare.execute.types import PrepareFn, RunOutcome, TrainFn
from lossbench.errors import LossbenchError
from lossbench.training.run_files import is_finished, read_metrics, read_record
from lossbench.training.run_lock import run_lock

if TYPE_CHECKING:
    from lossbench.compare.execute.failures import ExecutorFactory, RunHandling
    from lossbench.compare.execute.types import ExecutorSettings
    from lossbench.data.prepared import PreparedDataset
    from lossbench.training.entry import PlanEntry
    from lossbench.training.observers import RunObserver


@dataclass(frozen=True)
class RunResources:
    """What every run's Ray task reserves, and where the Ray cluster is."""

    address: str | None  # None: start a local instance sized to the local machine
    cpus: int  # also the run's torch threads
    gpus: float
    max_retries: int  # re-runs after its worker process died; a run that raised is not re-run
    workers: int = 1  # data-parallel processes per run (Ray Train), each with `cpus` and `gpus`


@dataclass(frozen=True)
class RayExecutor:
    """Trains the entries as Ray tasks (see the module's docstring).

    `failed` None: a run that fails ends the comparison, after the others, with an error
    naming it (as a bare `run_locally` does at once)."""

    resources: RunResources
    out_dir: Path
    train: TrainFn | None = None  # runs in the workers; None: train_entry
    watchers: tuple[RunObserver, ...] = ()  # on the driver, shown each run as it ends
    failed: FailedRuns | None = field(default=None, compare=False)

    @classmethod
    def handling(cls, resources: RunResources, out_dir: Path, handling: RunHandling) -> RayExecutor:
        """The executor of a comparison (compare/ci/step.py): its checks go with every run."""
        from lossbench.training.loop import train_entry

        train = partial(train_entry, observers=list(handling.checks))
        return cls(resources, out_dir, train, handling.watchers, handling.failed)

    def __call__(
        self, entries: Sequence[PlanEntry], prepare: PrepareFn, console: Console
    ) -> list[Path]:
        if not entries:
            return []  # nothing to train: no Ray instance is started
        ray = ray_cluster.import_ray()
        with ray_cluster.ray_session(ray, self.resources.address, console):
            nodes = ray_cluster.check_resources(ray, self.resources.cpus, self.resources.gpus)
            ray_cluster.check_out_folder(ray, self.out_dir)
            ray_cluster.send_file_plugins(ray)
            keys = dict.fromkeys((e.config.dataset, e.config.split_spec) for e in entries)
            datasets = {key: ray.put(prepare(*key)) for key in keys}
            several = self.resources.workers > 1  # a run's task only starts its workers
            task = ray.remote(
                num_cpus=0 if several else self.resources.cpus,
                num_gpus=0 if several else self.resources.gpus,
                max_retries=self.resources.max_retries,
                retry_exceptions=False,
                # A fresh worker process per run: nothing of one run (its memory caches, an
                # import a cancel interrupted) reaches the next; a run takes minutes, a worker's
                # start seconds.
                max_calls=1,
            )(train_with_workers if several else train_on_worker)
            cwd = str(Path.cwd())
            submitted = {
                task.remote(
                    replace(entry, run_dir=entry.run_dir.absolute()),
                    # Ray Train's workers fetch the dataset themselves: its reference, wrapped
                    # so that Ray does not resolve it for the task.
                    [datasets[entry.config.dataset, entry.config.split_spec]]
                    if several
                    else datasets[entry.config.dataset, entry.config.split_spec],
                    cwd,
                    self.resources,
                    self.train,
                ): entry
                for entry in entries
            }
            slots = ray_cluster.run_slots(nodes, self.resources.cpus, self.resources.gpus)
            slots = max(1, slots // self.resources.workers)
            progress = RunsProgress(console, len(entries), slots)
            outcomes = _collect(ray, submitted, progress, self._ended)
        failures = [outcome.failure for _, outcome in outcomes if outcome.failure]
        if failures and self.failed is None:
            raise LossbenchError(
                f"{len(failures)} of {len(entries)} run(s) failed: "
                + "; ".join(f"{failure.label} ({failure.error})" for failure in failures)
                + ". The others finished; rerun the command to retry the failed ones"
            )
        return [entry.run_dir for entry, outcome in outcomes if outcome.trained]

    def _ended(self, entry: PlanEntry, outcome: RunOutcome) -> None:
        if outcome.failure is not None and self.failed is not None:
            self.failed.add(outcome.failure)
        if outcome.trained or outcome.failure is not None:
            show_run(self.watchers, entry.run_dir)


def _collect(
    ray: Any,
    submitted: dict[Any, PlanEntry],
    progress: RunsProgress,
    ended: Callable[[PlanEntry, RunOutcome], None],  # told of each run as it ends
) -> list[tuple[PlanEntry, RunOutcome]]:
    """Wait for every run, showing each as it ends; Ctrl-C cancels those still out."""
    outcomes: list[tuple[PlanEntry, RunOutcome]] = []
    waiting = list(submitted)
    with progress:
        try:
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1, timeout=ray_cluster.POLL_SECONDS)
                for ref in done:
                    entry = submitted[ref]
                    try:
                        outcome: RunOutcome = ray.get(ref)
                    except ray.exceptions.RayError as error:  # it did not return
                        message = ray_cluster.task_failure(ray, error)
                        details = f"{type(error).__name__}: {error}"
                        outcome = RunOutcome(False, record_failure(entry, message, details))
                    outcomes.append((entry, outcome))
                    progress.run_ended(entry.label, outcome, left=len(waiting))
                    ended(entry, outcome)
                progress.show(left=len(waiting))
        except KeyboardInterrupt:
            progress.stop()
            ray_cluster.cancel_tasks(ray, waiting, progress.console)
            raise
    return outcomes


def show_run(watchers: Sequence[RunObserver], run_dir: Path) -> None:
    """A run trained elsewhere, shown to `watchers` from its files: its start, every epoch of
    `history.csv`, and its end if it finished (a failed run stays open, then marked failed)."""
    record = read_record(run_dir) if watchers else None
    if record is None:
        return
    from lossbench.compare.report.results import read_history
    from lossbench.training.run_files import HISTORY_FILE

    rows = read_history(run_dir).to_dicts() if (run_dir / HISTORY_FILE).is_file() else []
    metrics = read_metrics(run_dir) if is_finished(run_dir) else None
    for watcher in watchers:
        watcher.on_start(run_dir, record)
        for row in rows:
            watcher.on_epoch(row)
        if metrics is not None:
            watcher.on_finish(metrics)


def train_on_worker(
    entry: PlanEntry,
    dataset: PreparedDataset,
    cwd: str,
    resources: RunResources,
    train: TrainFn | None,
) -> RunOutcome:
    """One run, in a Ray worker: the runner's `train_unless_finished`, as the local executor."""
    import traceback

    from lossbench.training.setup import run_device

    gpus = resources.gpus
    started = time.perf_counter()
    if os.path.isdir(cwd):
        os.chdir(cwd)  # relative paths in the settings (--init) mean what they do on the driver
    if train is None:
        from lossbench.training.loop import train_entry

        train = train_entry
    failed = FailedRuns()
    try:
        # This worker's device: a GPU only when the task reserved one (`cuda` without one is
        # refused before the plan), so a run never trains on a GPU Ray gave to another task.
        device = entry.config.device if gpus else "cpu"
        entry = replace(entry, device=run_device(device, entry.config.precision))
        quiet = Console(quiet=True)
        with run_lock(entry.run_dir, wait=True):
            trained = train_unless_finished(entry, dataset, quiet, failed.guard(train))
    except Exception as error:  # outside the run itself (its device, its lock)
        message = ray_cluster.one_line(error)
        failure = record_failure(entry, message, "".join(traceback.format_exception(error)))
        return RunOutcome(trained=False, failure=failure)
    if not trained:
        return RunOutcome(trained=False, failure=failed.failures[0] if failed.failures else None)
    return finished_outcome(entry, started)


def finished_outcome(entry: PlanEntry, started: float) -> RunOutcome:
    """A trained run's outcome, read from its folder."""
    metrics = read_metrics(entry.run_dir)
    metric = entry.config.validation_metric
    return RunOutcome(
        trained=True,
        metric=metric,
        test_value=metrics.get("test", {}).get(metric),
        epochs=int(metrics.get("epochs", 0)),
        seconds=time.perf_counter() - started,
    )


def train_with_workers(
    entry: PlanEntry,
    dataset_ref: list[Any],
    cwd: str,
    resources: RunResources,
    train: TrainFn | None,
) -> RunOutcome:
    """One run in `resources.workers` Ray Train workers (`ray_train.py`); the run's own Ray
    task holds its folder's lock, reuses a run finished meanwhile, and records a failure."""
    import traceback

    from lossbench.compare.execute.ray_train import fit_data_parallel

    started = time.perf_counter()
    with run_lock(entry.run_dir, wait=True):
        if is_finished(entry.run_dir):  # settled by the driver: finished by another process
            return RunOutcome(trained=False)
        try:
            fit_data_parallel(
                entry, dataset_ref, cwd, resources.cpus, resources.gpus, resources.workers, train
            )
        except Exception as error:
            message = ray_cluster.one_line(error)
            failure = record_failure(entry, message, "".join(traceback.format_exception(error)))
            return RunOutcome(trained=False, failure=failure)
    return finished_outcome(entry, started)


def ray_executor(
    settings: ExecutorSettings, training: dict[str, Any], out_dir: Path
) -> tuple[ExecutorFactory, dict[str, Any]]:
    """Check the Ray options against the training settings; a run's threads are its CPUs."""
    ray_cluster.import_ray()  # a missing extra says so now, before anything is planned
    threads = training.get("threads")
    cpus = settings.cpus_per_run or threads or 1
    if threads is not None and threads != cpus:
        raise LossbenchError(
            f"--threads {threads} and --cpus-per-run {cpus} disagree: under --executor ray a "
            "run's torch threads are the CPUs it reserves; give one of them"
        )
    gpus = settings.gpus_per_run or 0.0
    workers = settings.workers_per_run or 1
    if workers > 1:
        from lossbench.compare.execute.ray_train import check_ray_train

        check_ray_train()
    if gpus > 1 and not gpus.is_integer():
        raise LossbenchError(
            f"--gpus-per-run {gpus:g}: above 1 give whole GPUs (fractions below 1 share one)"
        )
    device = training.get("device", "auto")
    if device == "cpu" and gpus:
        raise LossbenchError("--device cpu runs use no GPU: drop --gpus-per-run, or the device")
    if device == "cuda" and not gpus:
        raise LossbenchError(
            "under --executor ray a run sees only the GPUs it reserves: "
            "add --gpus-per-run (1, or 0.5 for two runs per GPU)"
        )
    resources = RunResources(settings.ray_address, cpus, gpus, settings.max_retries or 0, workers)
    return partial(RayExecutor.handling, resources, out_dir), {**training, "threads": cpus}
