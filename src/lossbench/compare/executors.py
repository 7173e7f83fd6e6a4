"""How a comparison's runs execute: one after another in this process, or as Ray tasks.

An executor takes the plan entries still to train (none is finished) and trains each with
the same run function (`train_entry`, a plain function of plan entry and dataset) through
`train_unless_finished`, under the run folder's lock. A run's metrics therefore depend on its
entry only (seed, settings, thread count), never on the executor, the worker or the order.

- `local` (the default): `run_locally`, one run at a time in this process, `--threads` each.
- `ray`: `RayExecutor` (`ray_executor.py`), each run one Ray task reserving `--cpus-per-run`
  CPUs (its torch threads) and `--gpus-per-run` GPUs, on a local Ray instance or a cluster.

The executor comes from `--executor` or a grid file's `[executor]` table, not from
`[settings]`: settings are what a run computes and are recorded in its `config.json`; how runs
are spread over cores and machines changes neither.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lossbench.compare.resume import run_status
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
    ray_address: str | None = None  # None: start a local Ray instance sized to the local machine
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


def _ray(
    settings: ExecutorSettings, training: dict[str, Any], out_dir: Path
) -> tuple[Executor, dict[str, Any]]:
    from lossbench.compare.ray_executor import ray_executor

    return ray_executor(settings, training, out_dir)


ExecutorBuilder = Callable[
    [ExecutorSettings, dict[str, Any], Path], tuple[Executor, dict[str, Any]]
]
EXECUTORS: dict[str, ExecutorBuilder] = {"local": _local, "ray": _ray}
