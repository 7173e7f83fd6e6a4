"""The `ray` executor: each run one Ray task, the driver (this process) showing progress.

A task reserves `--cpus-per-run` CPUs, which are also the run's torch threads, and
`--gpus-per-run` GPUs (fractions let runs share one); Ray runs as many side by side as the
cluster holds. The driver prepares each dataset once and puts it in Ray's object store
(workers only read it), checks that every node sees the out folder (`ray_cluster.py`), then
submits every run. A worker trains its run with the same `train_unless_finished` as the local
executor, under the run folder's lock, from the same plan entry: the metrics are the local
loop's to the last digit at the same thread count.

A run that raised is reported with its error and not re-run; a run whose worker process died
is re-run up to `--max-retries` times. The others go on; the comparison then fails naming the
failed runs. Ctrl-C cancels the runs still out (`ray_cluster.cancel_tasks`); run folders are
only ever written atomically, so a rerun reuses the finished runs and retrains the rest.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from lossbench.compare import ray_cluster
from lossbench.compare.executors import ExecutorSettings, PrepareFn, TrainFn, train_unless_finished
from lossbench.compare.runs_progress import RunsProgress
from lossbench.errors import LossbenchError
from lossbench.training.run_files import read_metrics
from lossbench.training.run_lock import run_lock

if TYPE_CHECKING:
    from lossbench.data.prepared import PreparedDataset
    from lossbench.training.entry import PlanEntry


@dataclass(frozen=True)
class RunResources:
    """What every run's Ray task reserves, and where the Ray cluster is."""

    address: str | None  # None: start a local instance sized to the local machine
    cpus: int  # also the run's torch threads
    gpus: float
    max_retries: int  # re-runs after its worker process died; a run that raised is not re-run


@dataclass(frozen=True)
class RunOutcome:
    """What a worker sends back for one run (its files are in the run folder)."""

    trained: bool  # False: another process had finished it
    error: str | None = None  # one line; None: the run finished
    metric: str = ""  # the validation metric, reported on the test split
    test_value: float | None = None
    epochs: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class RayExecutor:
    """Trains the entries as Ray tasks (see the module's docstring); `train` for tests."""

    resources: RunResources
    out_dir: Path
    train: TrainFn | None = None  # None: train_entry

    def __call__(
        self, entries: Sequence[PlanEntry], prepare: PrepareFn, console: Console
    ) -> list[Path]:
        if not entries:
            return []  # nothing to train: no Ray instance is started
        ray = ray_cluster.import_ray()
        with ray_cluster.ray_session(ray, self.resources.address, console):
            nodes = ray_cluster.check_resources(ray, self.resources.cpus, self.resources.gpus)
            ray_cluster.check_out_folder(ray, self.out_dir)
            names = dict.fromkeys(entry.config.dataset for entry in entries)
            datasets = {name: ray.put(prepare(name)) for name in names}
            task = ray.remote(
                num_cpus=self.resources.cpus,
                num_gpus=self.resources.gpus,
                max_retries=self.resources.max_retries,
                retry_exceptions=False,
                # A fresh worker process per run: nothing of one run (its memory caches, an
                # import a cancel interrupted) reaches the next; a run takes minutes, a worker's
                # start seconds.
                max_calls=1,
            )(train_on_worker)
            cwd = str(Path.cwd())
            submitted = {
                task.remote(
                    replace(entry, run_dir=entry.run_dir.absolute()),
                    datasets[entry.config.dataset],
                    cwd,
                    self.resources.gpus,
                    self.train,
                ): entry
                for entry in entries
            }
            slots = ray_cluster.run_slots(nodes, self.resources.cpus, self.resources.gpus)
            outcomes = _collect(ray, submitted, RunsProgress(console, len(entries), slots))
        failed = [(entry, outcome.error) for entry, outcome in outcomes if outcome.error]
        if failed:
            raise LossbenchError(
                f"{len(failed)} of {len(entries)} run(s) failed: "
                + "; ".join(f"{entry.label} ({error})" for entry, error in failed)
                + ". The others finished; rerun the command to retry the failed ones"
            )
        return [entry.run_dir for entry, outcome in outcomes if outcome.trained]


def _collect(
    ray: Any, submitted: dict[Any, PlanEntry], progress: RunsProgress
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
                        outcome = RunOutcome(
                            trained=False, error=ray_cluster.task_failure(ray, error)
                        )
                    outcomes.append((entry, outcome))
                    progress.run_ended(entry.label, outcome, left=len(waiting))
                progress.show(left=len(waiting))
        except KeyboardInterrupt:
            progress.stop()
            ray_cluster.cancel_tasks(ray, waiting, progress.console)
            raise
    return outcomes


def train_on_worker(
    entry: PlanEntry, dataset: PreparedDataset, cwd: str, gpus: float, train: TrainFn | None
) -> RunOutcome:
    """One run, in a Ray worker: the same `train_unless_finished` as the local executor."""
    from lossbench.training.setup import run_device

    started = time.perf_counter()
    if os.path.isdir(cwd):
        os.chdir(cwd)  # relative paths in the settings (--init) mean what they do on the driver
    try:
        # This worker's device: a GPU only when the task reserved one (`cuda` without one is
        # refused before the plan), so a run never trains on a GPU Ray gave to another task.
        device = entry.config.device if gpus else "cpu"
        entry = replace(entry, device=run_device(device, entry.config.precision))
        with run_lock(entry.run_dir, wait=True):
            if not train_unless_finished(entry, dataset, Console(quiet=True), train):
                return RunOutcome(trained=False)
        metrics = read_metrics(entry.run_dir)
    except Exception as error:  # a run that raised is a failed run, reported by the driver
        return RunOutcome(trained=False, error=ray_cluster.one_line(error))
    metric = entry.config.validation_metric
    return RunOutcome(
        trained=True,
        metric=metric,
        test_value=metrics.get("test", {}).get(metric),
        epochs=int(metrics.get("epochs", 0)),
        seconds=time.perf_counter() - started,
    )


def ray_executor(
    settings: ExecutorSettings, training: dict[str, Any], out_dir: Path
) -> tuple[RayExecutor, dict[str, Any]]:
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
    resources = RunResources(settings.ray_address, cpus, gpus, settings.max_retries or 0)
    return RayExecutor(resources, out_dir), {**training, "threads": cpus}
