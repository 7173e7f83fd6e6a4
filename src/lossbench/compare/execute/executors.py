"""Where a comparison's runs train: one after another in this process, or as Ray tasks.

Every executor trains the plan entries still to train with the same run function
(`train_entry`, a plain function of plan entry and dataset) through the runner's
`train_unless_finished`, under the run folder's lock. A run's metrics therefore depend on its
entry only (seed, settings, thread count), never on the executor, the worker or the order.

- `local` (the default): `run_locally` (runner.py), one run at a time here, `--threads` each.
- `ray`: `RayExecutor` (`ray_executor.py`), each run one Ray task reserving `--cpus-per-run`
  CPUs (its torch threads) and `--gpus-per-run` GPUs, on a local Ray instance or a cluster.

The comparison (compare/ci/step.py) hands the chosen executor's factory what it asks of every run
(`RunHandling`): checks that go with the run, trackers that watch it, and where a run that
fails is recorded; either way the others go on and the command exits 1.

The executor comes from `--executor` or a grid file's `[executor]` table, not from
`[settings]`: settings are what a run computes and are recorded in its `config.json`; how runs
are spread over cores and machines changes neither.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from lossbench.compare.execute.failures import ExecutorFactory, RunHandling
from lossbench.compare.execute.runner import run_locally
from lossbench.compare.execute.types import Executor, ExecutorSettings
from lossbench.errors import LossbenchError, validation_failure
from lossbench.training.config import read_toml

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

    pass


def local_executor(handling: RunHandling) -> Executor:
    """`run_locally` with the run's observers in the loop and its failures recorded."""
    from lossbench.training.loop import train_entry

    observers = [*handling.watchers, *handling.checks]  # a tracker sees the epoch a check stops
    train = handling.failed.guard(partial(train_entry, observers=observers))
    return partial(run_locally, train=train)


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

        def describe(where: str, message: str, detail: ErrorDetails) -> str:
            if detail["type"] == "extra_forbidden":
                fields = ", ".join(ExecutorSettings.model_fields)
                message = f"unknown field; valid fields are: {fields}"
            return f"invalid executor.{where} in {source}: {message}"

        raise validation_failure(error, describe) from None


def make_executor(
    settings: ExecutorSettings, training: dict[str, Any], out_dir: Path
) -> tuple[ExecutorFactory, dict[str, Any]]:
    """The executor's factory, and the training settings with what it implies (Ray:
    `threads`). Checked now, before anything is planned."""
    return EXECUTORS[settings.kind](settings, training, out_dir)


def _local(
    settings: ExecutorSettings, training: dict[str, Any], out_dir: Path
) -> tuple[ExecutorFactory, dict[str, Any]]:
    given = {
        "--ray-address": settings.ray_address,
        "--cpus-per-run": settings.cpus_per_run,
        "--gpus-per-run": settings.gpus_per_run,
        "--workers-per-run": settings.workers_per_run,
        "--max-retries": settings.max_retries,
    }
    ray_only = [flag for flag, value in given.items() if value is not None]
    if ray_only:
        raise LossbenchError(
            f"{', '.join(ray_only)} apply to --executor ray; the local executor trains one run "
            "at a time, with --threads torch threads"
        )
    return local_executor, training


def _ray(
    settings: ExecutorSettings, training: dict[str, Any], out_dir: Path
) -> tuple[ExecutorFactory, dict[str, Any]]:
    from lossbench.compare.execute.ray_executor import ray_executor

    return ray_executor(settings, training, out_dir)


ExecutorBuilder = Callable[
    [ExecutorSettings, dict[str, Any], Path], tuple[ExecutorFactory, dict[str, Any]]
]
EXECUTORS: dict[str, ExecutorBuilder] = {"local": _local, "ray": _ray}
