"""Execute a comparison plan: check it against the run folders, then train what is missing.

`execute_plan` does everything that must hold before the first run trains: runs trained with
other settings are refused (or, with `--retrain-changed`, moved aside and retrained; runs of
an edited plugin's code are always), every run to train is checked to fit in memory, and the
plan is saved. The runs themselves go to an executor: any function that takes the entries to
train (`Executor`; executors.py chooses one). `run_locally` trains them one after another in
this process, `RayExecutor` (ray_executor.py) as Ray tasks side by side; both train each run
with `train_unless_finished` under its run folder's lock, so two processes on one `--out`
never train the same run: the local one skips a run being trained and, after its others,
waits for it (and trains it only if the first process died before finishing it).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lossbench.compare.execute.resume import RunStatus, settle_runs
from lossbench.compare.execute.types import Executor, PrepareFn, TrainFn
from lossbench.compare.plan.build import ComparisonPlan
from lossbench.data.prepared import PreparedDataset
from lossbench.training.entry import PlanEntry
from lossbench.training.run_files import is_finished
from lossbench.training.run_lock import lock_holder, run_lock


def execute_plan(
    plan: ComparisonPlan,
    prepare: PrepareFn,
    console: Console | None = None,
    retrain_changed: bool = False,
    executor: Executor | None = None,
    memory_budget: int | None = None,
    statuses: Sequence[RunStatus] | None = None,
) -> list[Path]:
    """Refuse or set aside changed runs, check the rest fit (and, given `memory_budget` in
    bytes, print each loss's estimate and refuse any over it), save the plan, train the rest.
    `statuses`: the entries' `run_status`, when the caller has read them already."""
    from lossbench.training.fit_check import check_fits

    console = console or Console(quiet=True)
    prepare = cache(prepare)  # each dataset is loaded once

    def check(entries: list[PlanEntry]) -> None:  # every run to train, before any is moved
        for entry in entries:
            check_fits(entry, _dataset_of(entry, prepare))
        if memory_budget is not None:
            check_memory_budget(entries, prepare, memory_budget, console)

    todo = settle_runs(plan.entries, plan.out_dir, console, retrain_changed, check, statuses)
    plan.save()
    return (executor or run_locally)(todo, prepare, console)


def check_memory_budget(
    entries: Sequence[PlanEntry], prepare: PrepareFn, budget: int, console: Console
) -> None:
    """Print each (dataset, model, loss)'s estimated peak, then refuse (one line, naming the
    setting that dominates) the first over `budget` bytes; a loss's seeds share an estimate."""
    from lossbench.training.fit_check import over_budget, peak_estimate
    from lossbench.training.memory import format_size

    firsts: dict[str, PlanEntry] = {}
    for entry in entries:
        firsts.setdefault(entry.label.rsplit(", seed", 1)[0], entry)
    over = []
    for name, entry in firsts.items():
        estimate = peak_estimate(entry, _dataset_of(entry, prepare))
        console.print(
            f"plan: {escape(name)}: peak about {format_size(estimate.total_bytes)} of a "
            f"{format_size(budget)} budget (the step's largest part: {estimate.largest})",
            highlight=False,
        )
        if estimate.total_bytes > budget:
            over.append((entry, estimate))
    if over:
        raise over_budget(*over[0], budget)


def run_locally(
    entries: Sequence[PlanEntry],
    prepare: PrepareFn,
    console: Console,
    train: TrainFn | None = None,
) -> list[Path]:
    """Train `entries` one after another in this process, each under its folder's lock."""
    if train is None:
        from lossbench.training.loop import train_entry

        train = train_entry
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
                    if train_unless_finished(entry, _dataset_of(entry, prepare), console, train):
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
                if train_unless_finished(entry, _dataset_of(entry, prepare), console, train):
                    trained.append(entry.run_dir)
            progress.advance(task)
    return trained


def train_unless_finished(
    entry: PlanEntry, dataset: PreparedDataset, console: Console, train: TrainFn
) -> bool:
    """Train `entry` (its lock held) unless another process has finished it meanwhile;
    whether it trained (False also for a run that failed and was recorded by `train`)."""
    if is_finished(entry.run_dir):  # settled before: only another process can have finished it
        console.print(f"{entry.run_dir} was finished by another process")
        return False
    console.print(f"[bold]{escape(entry.label)}[/] -> {entry.run_dir}")
    return train(entry, dataset, console) is not None  # None: failed, recorded by the train


def _dataset_of(entry: PlanEntry, prepare: PrepareFn) -> PreparedDataset:
    return prepare(entry.config.dataset, entry.config.split_spec)
