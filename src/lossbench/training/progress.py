"""The live display of a training run: epochs, loss, validation metric, elapsed, ETA.

On a terminal, two live bars (epochs, batches in the epoch). Anywhere else (a log file, a
pipe, `nohup`), a live bar can only show its last frame, cut to 80 columns: one plain line
per epoch is printed instead, so the log holds the whole run.
"""

from __future__ import annotations

import time
from datetime import timedelta
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainingProgress:
    def __init__(
        self, console: Console, max_epochs: int, batches: int, metric: str, done: int = 0
    ) -> None:
        """`done`: epochs a resumed run has already trained."""
        self.console = console
        self.metric = metric
        self.batches = batches
        self.max_epochs = max_epochs
        self.lines = not console.is_terminal and not console.quiet  # one line per epoch
        self.started = time.perf_counter()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            disable=console.quiet or self.lines,
        )
        self.epochs = self.progress.add_task("epochs", total=max_epochs, completed=done, status="")
        self.batch_task = self.progress.add_task("batches", total=batches, status="")

    def __enter__(self) -> TrainingProgress:
        self.started = time.perf_counter()
        self.progress.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        # The batch bar was reset for an epoch that never comes: the final display keeps
        # the epochs line only.
        self.progress.remove_task(self.batch_task)
        self.progress.__exit__(kind, error, trace)

    def advance_batch(self) -> None:
        self.progress.advance(self.batch_task)

    def end_epoch(self, epoch: int, loss: float, value: float, best: float) -> None:
        status = f"loss {loss:.4f}  {self.metric} {value:.4f} (best {best:.4f})"
        self.progress.update(self.epochs, completed=epoch, status=status)
        self.progress.reset(self.batch_task, total=self.batches)
        if self.lines:
            elapsed = timedelta(seconds=round(time.perf_counter() - self.started))
            self.console.print(
                f"epoch {epoch}/{self.max_epochs}  {status}  {elapsed}", highlight=False
            )
