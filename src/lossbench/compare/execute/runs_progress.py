"""The driver's display of runs trained side by side: one live bar (finished, running, left,
ETA) and one line per run as it ends.

"Running" is what the cluster can hold at once (its run slots) out of the runs not yet ended;
the ETA is the time left at the rate runs have ended so far. Off a terminal (a log file) the
bar is not drawn and each run's line carries the counts instead.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from lossbench.training.progress import TimedProgress, counted_bar

if TYPE_CHECKING:
    from lossbench.compare.execute.types import RunOutcome


class RunsProgress(TimedProgress):
    def __init__(self, console: Console, total: int, slots: int) -> None:
        self.console = console
        self.total = total
        self.slots = max(1, slots)
        self.ended = 0
        self.started = time.perf_counter()
        self.progress = Progress(
            *counted_bar("runs", "state"),
            console=console,
            disable=console.quiet or not console.is_terminal,
        )
        self.task = self.progress.add_task("", total=total, state=self._state(total))

    def stop(self) -> None:
        self.progress.stop()

    def show(self, left: int) -> None:
        self.progress.update(self.task, completed=self.ended, state=self._state(left))

    def run_ended(self, label: str, outcome: RunOutcome, left: int) -> None:
        self.ended += 1
        counts = f"[{self.ended}/{self.total}]"
        if outcome.error is not None:
            line = f"[red]failed[/] {escape(label)}: {escape(outcome.error)} {counts}"
        elif not outcome.trained:
            line = f"[dim]done[/] {escape(label)}: finished by another process {counts}"
        else:
            value = "-" if outcome.test_value is None else f"{outcome.test_value:.4f}"
            line = (
                f"[green]done[/] {escape(label)}: test {outcome.metric} {value}, "
                f"{outcome.epochs} epochs, {outcome.seconds:.0f} s {counts}"
            )
        self.console.print(line, highlight=False, soft_wrap=True)
        self.show(left)

    def _state(self, left: int) -> str:
        running = min(left, self.slots)
        text = f"finished, {running} running, {left - running} left"
        if self.ended and left:
            elapsed = time.perf_counter() - self.started
            eta = timedelta(seconds=round(elapsed / self.ended * left))
            text += f", eta {eta}"
        return text
