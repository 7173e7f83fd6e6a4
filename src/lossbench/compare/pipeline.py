"""A comparison end to end: plan the grid (or take a plan), train what is missing, then report."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from lossbench.compare.execute.runner import execute_plan
from lossbench.compare.execute.types import Executor, PrepareFn
from lossbench.compare.plan.build import ComparisonPlan, build_plan
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
    plan = build_plan(grid, dict(settings), out_dir)
    return run_plan(
        plan, prepare, options, console, retrain_changed, executor, markdown_file, memory_budget
    )


def run_plan(
    plan: ComparisonPlan,
    prepare: PrepareFn,
    options: SummaryOptions,
    console: Console | None = None,
    retrain_changed: bool = False,
    executor: Executor | None = None,
    markdown_file: Path | None = None,
    memory_budget: int | None = None,
) -> list[Path]:
    """Train what the plan misses, then render tables, files and figures from its runs (the
    plan in hand: `comparison.json` is written once and not read back)."""
    console = console or Console(quiet=True)
    execute_plan(plan, prepare, console, retrain_changed, executor, memory_budget)
    return render_report(
        plan.out_dir, options, console, markdown_file=markdown_file, saved=plan.saved()
    )
