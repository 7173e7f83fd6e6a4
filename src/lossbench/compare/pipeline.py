"""A comparison end to end: plan the grid, train what is missing, then report."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from lossbench.compare.execute.runner import execute_plan
from lossbench.compare.execute.types import Executor, PrepareFn
from lossbench.compare.plan.build import build_plan
from lossbench.compare.plan.grid import Grid
from lossbench.compare.report.render import render_report
from lossbench.compare.report.summary import SummaryOptions


def compare_losses(
    grid: Grid,
    settings: dict[str, object],
    out_dir: Path,
    prepare: PrepareFn,
    options: SummaryOptions,
    console: Console | None = None,
    retrain_changed: bool = False,
    executor: Executor | None = None,
    markdown_file: Path | None = None,
    memory_budget: int | None = None,
) -> list[Path]:
    """Plan the grid, train what is missing, then render tables, files and figures."""
    console = console or Console(quiet=True)
    plan = build_plan(grid, dict(settings), out_dir)
    execute_plan(plan, prepare, console, retrain_changed, executor, memory_budget)
    return render_report(out_dir, options, console, markdown_file=markdown_file)
