"""Compare losses: plan a grid of runs, train the missing ones, then tables, files, figures.

grid (what to run, where) -> runner (train what is not finished) -> results (one row per run)
-> summary (mean +- std, change, paired test) -> tables / figures, orchestrated by report.
"""

from lossbench.compare.grid import Grid, PlannedRun, make_grid, plan_runs, read_grid_file
from lossbench.compare.report import render_report
from lossbench.compare.runner import compare_losses, run_missing
from lossbench.compare.summary import SummaryOptions, summarize

__all__ = [
    "Grid",
    "PlannedRun",
    "SummaryOptions",
    "compare_losses",
    "make_grid",
    "plan_runs",
    "read_grid_file",
    "render_report",
    "run_missing",
    "summarize",
]
