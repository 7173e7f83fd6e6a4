"""Compare losses: plan a grid of runs, train the missing ones, then tables, files, figures.

grid (what to run) -> plan (every run resolved and validated once) -> runner (check the run
folders, hand the runs to an executor) -> executors (one after another here, or Ray tasks) ->
results (one row per run) -> summary (mean +- std, change, paired test) -> tables / figures,
orchestrated by report.
"""

from lossbench.compare.executors import Executor, make_executor, run_locally
from lossbench.compare.grid import Grid, make_grid, read_grid_file
from lossbench.compare.plan import ComparisonPlan, build_plan
from lossbench.compare.ray_executor import RayExecutor
from lossbench.compare.report import render_report
from lossbench.compare.runner import compare_losses, execute_plan
from lossbench.compare.summary import SummaryOptions, summarize
from lossbench.training.entry import PlanEntry

__all__ = [
    "ComparisonPlan",
    "Executor",
    "Grid",
    "PlanEntry",
    "RayExecutor",
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
