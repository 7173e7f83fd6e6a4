"""`compare`'s executor options: where its runs train (see `compare/execute/executors.py`, imported
when the command runs: it needs pydantic, and Ray itself only under `--executor ray`)."""

from __future__ import annotations

from dataclasses import astuple, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from lossbench.cli.options import in_panel

if TYPE_CHECKING:
    from lossbench.api.requests import ExecutorRequest
    from lossbench.compare.execute.types import ExecutorSettings

EXECUTOR = "Executor"
executor_option = in_panel(EXECUTOR)

ExecutorName = Annotated[
    str | None,
    executor_option(
        "--executor",
        help="Where the runs train: local (one after another here, the default) or ray "
        "(side by side as Ray tasks; pip install 'lossbench\\[ray]').",
    ),
]
RayAddress = Annotated[
    str | None,
    executor_option(
        help="Ray cluster to join: auto (the one started on this host) or ray://host:port "
        "(default: start a local Ray instance sized to the local machine)."
    ),
]
CpusPerRun = Annotated[
    int | None,
    executor_option(
        min=1,
        help="CPUs each Ray task reserves, also its torch threads (default: --threads, else 1).",
    ),
]
GpusPerRun = Annotated[
    float | None,
    executor_option(
        min=0.0, help="GPUs each Ray task reserves; 0.5 puts two runs on one GPU (default 0)."
    ),
]
WorkersPerRun = Annotated[
    int | None,
    executor_option(
        min=1,
        help="Processes each run trains on, data-parallel through Ray Train, each reserving "
        "--cpus-per-run CPUs and --gpus-per-run GPUs (default 1).",
    ),
]
MaxRetries = Annotated[
    int | None,
    executor_option(
        min=0,
        help="Times a run is re-run when its Ray worker dies (a run that raised an error "
        "is not re-run; default 0).",
    ),
]


@dataclass(frozen=True)
class ExecutorOptions:
    """The executor options (an option group; None: not given, a grid file's `[executor]`
    table decides)."""

    executor: ExecutorName = None
    ray_address: RayAddress = None
    cpus_per_run: CpusPerRun = None
    gpus_per_run: GpusPerRun = None
    workers_per_run: WorkersPerRun = None
    max_retries: MaxRetries = None

    def request(self) -> ExecutorRequest:
        from lossbench.api.requests import ExecutorRequest

        return ExecutorRequest(*astuple(self))  # the same fields, `executor` as `kind`


def settings_from(options: ExecutorOptions, config_file: Path | None) -> ExecutorSettings:
    """The grid file's `[executor]` table under the options given."""
    from lossbench.api.plan import executor_settings_of

    return executor_settings_of(options.request(), config_file)
