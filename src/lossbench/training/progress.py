"""The live display of a training run: epochs, loss, validation metric, elapsed, ETA.

On a terminal, two live bars (epochs, batches in the epoch). Anywhere else (a log file, a
pipe, `nohup`), a live bar can only show its last frame, cut to 80 columns: plain lines are
printed instead, so the log holds the whole run. One per epoch, and within a long epoch one
every `$LOSSBENCH_PROGRESS_SECONDS` (default 60) with the batches done of the total, the rate
and the time the epoch has left (`BatchLines`).
"""

from __future__ import annotations

import math
import os
import time
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from lossbench.errors import LossbenchError

if TYPE_CHECKING:
    from typing_extensions import Self  # typing's own from Python 3.11

PROGRESS_SECONDS_ENV = "LOSSBENCH_PROGRESS_SECONDS"
PROGRESS_SECONDS = 60.0  # a log shows a long epoch moving at least once a minute


def progress_seconds() -> float:
    """Seconds between two batch lines off a terminal: `$LOSSBENCH_PROGRESS_SECONDS`, else 60."""
    text = os.environ.get(PROGRESS_SECONDS_ENV, "").strip()
    if not text:
        return PROGRESS_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise LossbenchError(
            f"{PROGRESS_SECONDS_ENV}={text!r} is not a number of seconds >= 0; "
            f"set it to one (0: a line per batch), or unset it for {PROGRESS_SECONDS:g}"
        )
    return seconds


class BatchLines:
    """Off a terminal, a line within an epoch every `every` seconds: the epoch, the batches
    done of the total, the rate and the time the epoch has left. It reads the clock only,
    never a tensor, so it adds no device sync to a training step."""

    def __init__(
        self, console: Console, epochs: int, batches: int, enabled: bool, every: float | None = None
    ) -> None:
        self.console = console
        self.epochs = epochs
        self.batches = batches
        self.enabled = enabled
        self.every = progress_seconds() if every is None else every
        self.epoch = 0
        self.done = 0
        self.started = self.printed = time.perf_counter()

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.done = epoch, 0
        self.started = self.printed = time.perf_counter()

    def batch_done(self) -> None:
        if not self.enabled:
            return
        self.done += 1
        now = time.perf_counter()
        if now - self.printed < self.every or self.done >= self.batches:
            return  # the last batch: the epoch's own line follows
        self.printed = now
        rate = self.done / max(now - self.started, 1e-9)  # batches per second
        left = timedelta(seconds=round((self.batches - self.done) / rate))
        self.console.print(
            f"epoch {self.epoch}/{self.epochs}  batch {self.done}/{self.batches}  "
            f"{rate:.3g} batches/s  {left} left in the epoch",
            highlight=False,
        )


def counted_bar(label: str, field: str) -> list[ProgressColumn]:
    """Bold `label`, the bar, done/total, the task's `field` and the time elapsed."""
    return [
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(f"{{task.fields[{field}]}}"),
        TimeElapsedColumn(),
    ]


class TimedProgress:
    """A rich `Progress` as a context manager that notes when it was entered (for rates and
    elapsed times); subclasses build `self.progress`."""

    progress: Progress
    started: float

    def __enter__(self) -> Self:
        self.started = time.perf_counter()
        self.progress.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.before_exit()
        self.progress.__exit__(kind, error, trace)

    def before_exit(self) -> None:
        """What the final display drops before it is drawn the last time (nothing here)."""


class TrainingProgress(TimedProgress):
    def __init__(
        self, console: Console, max_epochs: int, batches: int, metric: str, done: int = 0
    ) -> None:
        """`done`: epochs a resumed run has already trained."""
        self.console = console
        self.metric = metric
        self.batches = batches
        self.max_epochs = max_epochs
        self.lines = not console.is_terminal and not console.quiet  # one line per epoch
        self.batch_lines = BatchLines(console, max_epochs, batches, self.lines)
        self.done = done
        self.started = time.perf_counter()
        self.progress = Progress(
            *counted_bar("{task.description}", "status"),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            disable=console.quiet or self.lines,
        )
        self.epochs = self.progress.add_task("epochs", total=max_epochs, completed=done, status="")
        self.batch_task = self.progress.add_task("batches", total=batches, status="")

    def __enter__(self) -> Self:
        self.batch_lines.start_epoch(self.done + 1)
        return super().__enter__()

    def before_exit(self) -> None:
        # The batch bar was reset for an epoch that never comes: the final display keeps
        # the epochs line only.
        self.progress.remove_task(self.batch_task)

    def advance_batch(self) -> None:
        self.progress.advance(self.batch_task)
        self.batch_lines.batch_done()

    def end_epoch(self, epoch: int, loss: float, value: float, best: float) -> None:
        status = f"loss {loss:.4f}  {self.metric} {value:.4f} (best {best:.4f})"
        self.progress.update(self.epochs, completed=epoch, status=status)
        self.progress.reset(self.batch_task, total=self.batches)
        self.batch_lines.start_epoch(epoch + 1)
        if self.lines:
            elapsed = timedelta(seconds=round(time.perf_counter() - self.started))
            self.console.print(
                f"epoch {epoch}/{self.max_epochs}  {status}  {elapsed}", highlight=False
            )
