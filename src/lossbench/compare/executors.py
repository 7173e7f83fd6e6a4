"""How a comparison's runs execute: one after another in this process, or as Ray tasks.

An executor takes the plan entries still to train (none is finished) and trains each with
the same run function (`train_entry`, a plain function of plan entry and dataset) through
`train_unless_finished`, under the run folder's lock. A run's metrics therefore depend on its
entry only (seed, settings, thread count), never on the executor, the worker or the order.

- `local` (the default): `run_locally`, one run at a time in this process, `--threads` each.
- `ray`: `RayExecutor`, each run one Ray task reserving `--cpus-per-run` CPUs (its torch
  threads) and `--gpus-per-run` GPUs, on a local Ray instance or a cluster (`ray_cluster.py`).

The executor comes from `--executor` or a grid file's `[executor]` table, not from
`[settings]`: settings are what a run computes and are recorded in its `config.json`; how runs
are spread over cores and machines changes neither.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lossbench.compare.resume import run_status
from lossbench.compare.runs_progress import RunsProgress
from lossbench.errors import LossbenchError
from lossbench.training.config import read_toml
from lossbench.training.run_lock import lock_holder, run_lock

if TYPE_CHECKING:
    from lossbench.data.prepared import PreparedDataset
    from lossbench.training.entry import PlanEntry
    from lossbench.training.loop import RunResult

TrainFn = Callable[["PlanEntry", "PreparedDataset", Console], "RunResult"]
PrepareFn = Callable[[str], "PreparedDataset"]


class Executor(Protocol):
    """Trains the given entries (none is finished); returns the run folders it trained."""

    def __call__(
        self, entries: Sequence[PlanEntry], prepare: PrepareFn, console: Console
    ) -> list[Path]: ...


class ExecutorSettings(BaseModel):
    """`--executor` and its options, or a grid file's `[executor]` table (same names)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = "local"  # a key of EXECUTORS
    # The options below apply to `ray` only; None: not given.
    ray_address: str | None = None  # None: start a local Ray instance sized to this machine
    cpus_per_run: int | None = Field(default=None, ge=1)  # None: --threads if given, else 1
    gpus_per_run: float | None = Field(default=None, ge=0.0)  # fractions share a GPU
    max_retries: int | None = Field(default=None, ge=0)  # re-runs of a run whose worker died

    @field_validator("kind")
    @classmethod
    def _known_executor(cls, name: str) -> str:
        if name not in EXECUTORS:
            raise ValueError(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")
        return name


def read_executor_table(path: Path) -> dict[str, Any]:
    """The `[executor]` table of a grid file (none: empty)."""
    table = read_toml(path).get("executor", {})
    if not isinstance(table, dict):
        raise LossbenchError(f'invalid executor in {path}: give a table, [executor] kind = "ray"')
    return dict(table)


def executor_settings(values: dict[str, Any], source: str) -> ExecutorSettings:
    try:
        return ExecutorSettings.model_validate(values)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = f"unknown field; valid fields are: {', '.join(ExecutorSettings.model_fields)}"
        raise LossbenchError(f"invalid executor.{where} in {source}: {message}") from None


def make_executor(
    settings: ExecutorSettings, training: dict[str, Any], out_dir: Path
) -> tuple[Executor, dict[str, Any]]:
    """The executor, and the training settings with what it implies (Ray: `threads`)."""
    return EXECUTORS[settings.kind](settings, training, out_dir)


def train_unless_finished(
    entry: PlanEntry, dataset: PreparedDataset, console: Console, train: TrainFn | None
) -> bool:
    """Train `entry` (its lock held) unless another process finished it meanwhile."""
    if run_status(entry).state == "finished":
        console.print(f"{entry.run_dir} was finished by another process")
        return False
    console.print(f"[bold]{entry.label}[/] -> {entry.run_dir}")
    if train is None:
        from lossbench.training.loop import train_entry

        train = train_entry
    train(entry, dataset, console)
    return True


# --- local: one run after another in this process ----------------------------------------


def run_locally(
    entries: Sequence[PlanEntry],
    prepare: PrepareFn,
    console: Console,
    train: TrainFn | None = None,
) -> list[Path]:
    """Train `entries` one after another in this process, each under its folder's lock; a
    run another process is training is left for last, then waited for."""
    trained: list[Path] = []
    waiting: list[PlanEntry] = []
    progress = Progress(
        TextColumn("[bold]comparison"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        disable=console.quiet or not entries,
    )
    with progress:
        task = progress.add_task("", total=len(entries))
        for entry in entries:
            progress.update(task, description=entry.label)
            with run_lock(entry.run_dir, wait=False) as held:
                if held:
                    dataset = prepare(entry.config.dataset)
                    if train_unless_finished(entry, dataset, console, train):
                        trained.append(entry.run_dir)
                    progress.advance(task)
                    continue
            console.print(
                f"{entry.run_dir} is being trained by process "
                f"{lock_holder(entry.run_dir) or '?'}: leaving it for later"
            )
            waiting.append(entry)
        for entry in waiting:
            console.print(f"waiting for the other process to finish {entry.run_dir}")
            with run_lock(entry.run_dir, wait=True):
                dataset = prepare(entry.config.dataset)
                if train_unless_finished(entry, dataset, console, train):
                    trained.append(entry.run_dir)
            progress.advance(task)
    return trained


def _local(
    settings: ExecutorSettings, training: dict[str, Any], out_dir: Path
) -> tuple[Executor, dict[str, Any]]:
    given = {
        "--ray-address": settings.ray_address,
        "--cpus-per-run": settings.cpus_per_run,
        "--gpus-per-run": settings.gpus_per_run,
        "--max-retries": settings.max_retries,
    }
    ray_only = [flag for flag, value in given.items() if value is not None]
    if ray_only:
        raise LossbenchError(
            f"{', '.join(ray_only)} apply to --executor ray; the local executor trains one run "
            "at a time, with --threads torch threads"
        )
    return run_locally, training


# --- ray: each run one Ray task -----------------------------------------------------------


@dataclass(frozen=True)
class RunResources:
    """What every run's Ray task reserves, and where the Ray cluster is."""

    address: str | None  # None: start a local instance sized to this machine
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
    """Each run one Ray task; the driver (this process) shows progress and collects outcomes.

    The driver prepares each dataset once and puts it in Ray's object store (workers only
    read it), checks that every node sees the out folder, then submits every run at once;
    Ray runs as many side by side as the cluster's CPUs and GPUs allow.
    """

    resources: RunResources
    out_dir: Path
    train: TrainFn | None = None  # None: train_entry

    def __call__(
        self, entries: Sequence[PlanEntry], prepare: PrepareFn, console: Console
    ) -> list[Path]:
        if not entries:
            return []  # nothing to train: no Ray instance is started
        from lossbench.compare import ray_cluster

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
            )(train_on_worker)
            cwd = str(Path.cwd())
            submitted = {
                task.remote(
                    replace(entry, run_dir=entry.run_dir.absolute()),
                    datasets[entry.config.dataset],
                    cwd,
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
    from lossbench.compare.ray_cluster import POLL_SECONDS, cancel_tasks, one_line

    outcomes: list[tuple[PlanEntry, RunOutcome]] = []
    waiting = list(submitted)
    with progress:
        try:
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1, timeout=POLL_SECONDS)
                for ref in done:
                    entry = submitted[ref]
                    try:
                        outcome: RunOutcome = ray.get(ref)
                    except ray.exceptions.RayError as error:  # its worker died
                        died = f"{one_line(error)} (--max-retries K re-runs such a run)"
                        outcome = RunOutcome(trained=False, error=died)
                    outcomes.append((entry, outcome))
                    progress.run_ended(entry.label, outcome, left=len(waiting))
                progress.show(left=len(waiting))
        except KeyboardInterrupt:
            progress.stop()
            cancel_tasks(ray, waiting, progress.console)
            raise
    return outcomes


def train_on_worker(
    entry: PlanEntry, dataset: PreparedDataset, cwd: str, train: TrainFn | None
) -> RunOutcome:
    """One run, in a Ray worker: the same `train_unless_finished` as the local executor."""
    from lossbench.compare.ray_cluster import one_line
    from lossbench.training.run_files import read_metrics
    from lossbench.training.setup import run_device

    started = time.perf_counter()
    if os.path.isdir(cwd):
        os.chdir(cwd)  # relative paths in the settings (--init) mean what they do on the driver
    try:
        # This worker's device: the GPUs Ray reserved for the task are the only ones it sees.
        entry = replace(entry, device=run_device(entry.config.device, entry.config.precision))
        with run_lock(entry.run_dir, wait=True):
            if not train_unless_finished(entry, dataset, Console(quiet=True), train):
                return RunOutcome(trained=False)
        metrics = read_metrics(entry.run_dir)
    except Exception as error:  # a run that raised is a failed run, reported by the driver
        return RunOutcome(trained=False, error=one_line(error))
    metric = entry.config.validation_metric
    return RunOutcome(
        trained=True,
        metric=metric,
        test_value=metrics.get("test", {}).get(metric),
        epochs=int(metrics.get("epochs", 0)),
        seconds=time.perf_counter() - started,
    )


def _ray(
    settings: ExecutorSettings, training: dict[str, Any], out_dir: Path
) -> tuple[Executor, dict[str, Any]]:
    """Check the Ray options against the training settings; a run's threads are its CPUs."""
    from lossbench.compare.ray_cluster import import_ray

    import_ray()  # a missing extra says so now, before anything is planned
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


ExecutorBuilder = Callable[
    [ExecutorSettings, dict[str, Any], Path], tuple[Executor, dict[str, Any]]
]
EXECUTORS: dict[str, ExecutorBuilder] = {"local": _local, "ray": _ray}
