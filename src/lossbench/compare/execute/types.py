"""The types every executor shares: what trains a run, what a run's outcome and failure are,
and the `--executor` settings. Executors (executors.py, ray_executor.py) build on these and not
on each other."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator
from rich.console import Console

from lossbench.data.prepared import PreparedDataset
from lossbench.data.splits import SplitSpec
from lossbench.errors import one_of
from lossbench.training.entry import PlanEntry
from lossbench.training.loop import RunResult

if TYPE_CHECKING:
    pass

EXECUTOR_NAMES = ("local", "ray")  # `--executor` values, built by executors.EXECUTORS

# May return None: a run that failed and was recorded as such (see compare/ci/step.py).
TrainFn = Callable[[PlanEntry, PreparedDataset, Console], RunResult | None]
PrepareFn = Callable[[str, SplitSpec], PreparedDataset]  # (dataset name, split) -> data


class Executor(Protocol):
    """Trains the given entries (none is finished); returns the run folders it trained."""

    def __call__(
        self, entries: Sequence[PlanEntry], prepare: PrepareFn, console: Console
    ) -> list[Path]: ...


@dataclass(frozen=True)
class RunFailure:
    """A run that raised instead of finishing."""

    label: str  # "synthetic sasrec + bce, seed 0"
    dataset: str
    model: str
    loss: str
    seed: int
    run_dir: Path
    error: str  # one line: "ValueError: ..."
    details: str  # the traceback

    @property
    def line(self) -> str:
        return f"FAIL training {self.label}: {self.error}"


@dataclass(frozen=True)
class RunOutcome:
    """What a worker sends back for one run (its files are in the run folder)."""

    trained: bool  # False: another process had finished it, or it failed
    failure: RunFailure | None = None  # None: the run did not fail
    metric: str = ""  # the validation metric, reported on the test split
    test_value: float | None = None
    epochs: int = 0
    seconds: float = 0.0

    @property
    def error(self) -> str | None:
        return None if self.failure is None else self.failure.error


class ExecutorSettings(BaseModel):
    """`--executor` and its options, or a grid file's `[executor]` table (same names)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = "local"  # one of EXECUTOR_NAMES
    # The options below apply to `ray` only; None: not given.
    ray_address: str | None = None  # None: start a local Ray instance sized to the local machine
    cpus_per_run: int | None = Field(default=None, ge=1)  # None: --threads if given, else 1
    gpus_per_run: float | None = Field(default=None, ge=0.0)  # fractions share a GPU
    workers_per_run: int | None = Field(default=None, ge=1)  # data-parallel processes per run
    max_retries: int | None = Field(default=None, ge=0)  # re-runs of a run whose worker died

    @field_validator("kind")
    @classmethod
    def _known_executor(cls, name: str) -> str:
        return one_of(name, EXECUTOR_NAMES, "unknown executor {value!r}; choose from {names}")
