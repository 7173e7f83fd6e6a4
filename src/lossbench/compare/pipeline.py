"""A comparison end to end: plan the grid (or take a plan), train what is missing, then report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from rich.console import Console

from lossbench.compare.execute.runner import execute_plan
from lossbench.compare.execute.types import Executor, PrepareFn
from lossbench.compare.plan.build import ComparisonPlan, build_plan
from lossbench.compare.plan.grid import Grid
from lossbench.compare.report.render import render_report
from lossbench.compare.report.summary import SummaryOptions

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing's own from Python 3.11


def compare_losses(
    grid: Grid,
    settings: dict[str, object],
    out_dir: Path,
    prepare: PrepareFn,
    options: SummaryOptions,
    **run: Unpack[RunOptions],
) -> list[Path]:
    """Plan the grid, then `run_plan` it: train what is missing, render tables, files and
    figures."""
    return run_plan(build_plan(grid, dict(settings), out_dir), prepare, options, **run)


class RunOptions(TypedDict, total=False):
    """`run_plan`'s optional settings, by name."""

    console: Console | None
    retrain_changed: bool
    executor: Executor | None
    markdown_file: Path | None
    memory_budget: int | None


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
