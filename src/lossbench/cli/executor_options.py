"""`compare`'s executor options: where its runs train (see `compare/execute/executors.py`, imported
when the command runs: it needs pydantic, and Ray itself only under `--executor ray`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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

# The command's flags that are executor settings, not TrainConfig fields.
NOT_CONFIG = (
    "executor",
    "ray_address",
    "cpus_per_run",
    "gpus_per_run",
    "workers_per_run",
    "max_retries",
)


def executor_request(flags: Mapping[str, Any]) -> ExecutorRequest:
    """The executor options of a command (pass its `locals()`); None: not given."""
    from lossbench.api.requests import ExecutorRequest

    return ExecutorRequest(flags["executor"], *(flags.get(name) for name in NOT_CONFIG[1:]))


def settings_from(flags: Mapping[str, Any], config_file: Path | None) -> ExecutorSettings:
    """The grid file's `[executor]` table under the flags given (None: not given)."""
    from lossbench.api.plan import executor_settings_of

    return executor_settings_of(executor_request(flags), config_file)
