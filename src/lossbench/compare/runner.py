"""Train the runs of a comparison that are not finished yet, one after another.

A run whose folder holds `metrics.json` and the same config is reused, so an interrupted
comparison resumes where it stopped; a folder trained with another config, or with another
version of a plugin loss or model's source file, is retrained.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lossbench.compare.grid import Grid, PlannedRun, plan_runs, run_state
from lossbench.compare.report import render_report, save_plan
from lossbench.compare.summary import SummaryOptions
from lossbench.data.prepared import PreparedDataset
from lossbench.data.splits import SplitSpec
from lossbench.training.config import TrainConfig
from lossbench.training.loop import RunResult

# May return None: a run that failed and was recorded as such (see compare/ci.py).
TrainFn = Callable[[TrainConfig, PreparedDataset, Path, Console], RunResult | None]
PrepareFn = Callable[[str, SplitSpec], PreparedDataset]  # (dataset name, split) -> data


def run_missing(
    runs: list[PlannedRun],
    prepare: PrepareFn,
    train: TrainFn | None = None,
    console: Console | None = None,
) -> list[Path]:
    """Train every run that is not finished with its config; return the trained folders."""
    if train is None:
        from lossbench.training.loop import train_run

        train = train_run
    console = console or Console(quiet=True)
    states = [run_state(run) for run in runs]
    reused = states.count("finished")
    if reused:
        console.print(f"reusing {reused} finished run(s) of {len(runs)}")
    for run, state in zip(runs, states, strict=True):
        if state == "changed":
            console.print(
                f"[yellow]{run.run_dir} was trained with another config or code: retraining it[/]"
            )
    todo = [run for run, state in zip(runs, states, strict=True) if state != "finished"]
    datasets: dict[tuple[str, SplitSpec], PreparedDataset] = {}
    trained: list[Path] = []
    progress = Progress(
        TextColumn("[bold]comparison"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        disable=console.quiet or not todo,
    )
    with progress:
        task = progress.add_task("", total=len(runs), completed=reused)
        for run in todo:
            progress.update(task, description=run.label)
            key = (run.config.dataset, run.config.split_spec)
            if key not in datasets:
                datasets[key] = prepare(*key)
            console.print(f"[bold]{run.label}[/] -> {run.run_dir}")
            reset_process_peak_memory()
            train(run.config, datasets[key], run.run_dir, console)
            trained.append(run.run_dir)
            progress.advance(task)
    return trained


def reset_process_peak_memory() -> None:
    """Reset the process's peak RSS (Linux), so each CPU run reports its own peak.

    Without it `ru_maxrss` only grows, and every run of a sequential comparison would
    inherit the peak of the runs before it. Best effort: elsewhere nothing happens.
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def compare_losses(
    grid: Grid,
    settings: dict[str, Any],
    out_dir: Path,
    prepare: PrepareFn,
    options: SummaryOptions,
    console: Console | None = None,
    train: TrainFn | None = None,
) -> list[Path]:
    """Plan the grid, train what is missing, then render tables, files and figures."""
    console = console or Console(quiet=True)
    runs = plan_runs(grid, settings, out_dir)
    baselines = {(d, m): grid.baseline_for(m) for d in grid.datasets for m in grid.models}
    order = list(dict.fromkeys(loss for m in grid.models for loss in grid.losses_for(m)))
    save_plan(out_dir, runs, baselines, order)
    run_missing(runs, prepare, train, console)
    return render_report(out_dir, options, console)
