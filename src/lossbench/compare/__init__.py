"""Compare losses: plan a grid of runs, train the missing ones, then tables, files, figures.

grid (what to run) -> plan (every run resolved and validated once) -> runner (check the run
folders, hand the runs to an executor) -> executors (one after another here, or Ray tasks) ->
results (one row per run) -> summary (mean +- std, change, paired test) -> tables / figures,
orchestrated by report.
"""

from lossbench.compare.executors import make_executor
from lossbench.compare.grid import Grid, make_grid, read_grid_file
from lossbench.compare.plan import ComparisonPlan, build_plan
from lossbench.compare.report import render_report
from lossbench.compare.runner import Executor, compare_losses, execute_plan, run_locally
from lossbench.compare.summary import SummaryOptions, summarize
from lossbench.training.entry import PlanEntry

__all__ = [
    "ComparisonPlan",
    "Executor",
    "Grid",
    "PlanEntry",
    "SummaryOptions",
    "build_plan",
    "compare_losses",
    "execute_plan",
    "make_executor",
    "make_grid",
    "read_grid_file",
    "render_report",
    "run_locally",
    "summarize",
]
