"""`compare` and `report`: request -> plan -> validate -> prepare -> execute -> report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

import polars as pl
from rich.console import Console

from lossbench.api.folders import check_output_file, check_output_folder
from lossbench.api.plan import ComparePlan, resolve, summary_options
from lossbench.api.requests import CompareRequest, ReportRequest
from lossbench.api.results import CompareResult, MetricSummary, ReportResult, SummaryRow
from lossbench.compare.ci.step import Publishing, compare_and_judge
from lossbench.compare.report.render import load_comparison, present_report
from lossbench.data.prepared import PreparedDataset
from lossbench.data.splits import SplitSpec
from lossbench.data.store import ensure_prepared, prepare_on_first_use

Announce = Callable[[str], None]  # a line about work done on the way (preparing a dataset)
PrepareFn = Callable[[str, SplitSpec], PreparedDataset]


def compare(request: CompareRequest, console: Console, announce: Announce) -> CompareResult:
    """Plan the grid (every name resolved once, every run validated), prepare its datasets,
    train what is missing, judge the expectations and report."""
    plan = resolve(request)
    prepare = dataset_preparer(request.data_dir, announce)
    print_repeat_notices(plan, prepare, console)
    outcome = compare_and_judge(
        plan.comparison,
        prepare,
        plan.options,
        plan.expectations,
        Publishing(request.json_output, request.junit, request.track),
        console,
        retrain_changed=request.retrain_changed,
        markdown_file=request.markdown_file,
        executor_factory=plan.executor_factory,
        allow_collapsed=request.allow_collapsed,
        memory_budget=plan.memory_budget,
    )
    return CompareResult(
        plan.comparison.out_dir,
        outcome.run_dirs,
        summary_rows(outcome.summary, outcome.metrics),
        outcome.summary,
        outcome.verdicts,
        outcome.failures,
    )


def report(request: ReportRequest, console: Console) -> ReportResult:
    """Re-render tables, summary.md, results files and figures from a comparison folder."""
    options = summary_options(request.summary)
    directory = request.directory
    if directory.is_dir() and not request.print_only:
        hint = "`--print-only` prints the tables and writes nothing"
        check_output_folder(directory, "report", hint)
    check_output_file(request.markdown_file, "--markdown")
    comparison = load_comparison(directory, options, request.baseline, request.allow_mixed)
    written = present_report(
        comparison,
        directory,
        options,
        console,
        print_only=request.print_only,
        markdown_file=request.markdown_file,
    )
    run_dirs = [Path(run_dir) for run_dir in comparison.runs["run_dir"]]
    rows = summary_rows(comparison.summary, options.metrics)
    return ReportResult(run_dirs, rows, comparison.summary, comparison.warning, written)


def dataset_preparer(data_dir: Path, announce: Announce) -> PrepareFn:
    """(name, split) -> the prepared dataset in `data_dir`, prepared on first use, each
    loaded once."""

    @cache
    def prepare(name: str, split: SplitSpec) -> PreparedDataset:
        prepare_on_first_use(data_dir, name, split, announce)
        return ensure_prepared(data_dir, name, split)

    return prepare


def print_repeat_notices(plan: ComparePlan, prepare: PrepareFn, display: Console) -> None:
    """One line per dataset whose validation or test targets repeat the history."""
    from lossbench.data.repeats import repeat_notice, stored_or_computed
    from lossbench.evaluation.seen import SEEN_RULE_EFFECTS

    first = plan.entries[0].config  # the split and seen rule every run of the grid shares
    for name in plan.grid.datasets:
        entry = stored_or_computed(
            plan.request.data_dir,
            name,
            lambda name: prepare(name, first.split_spec),
            first.split_spec,
        )
        notice = repeat_notice(name, entry, SEEN_RULE_EFFECTS[first.seen_rule])
        if notice:
            display.print(notice, highlight=False)


def summary_rows(summary: pl.DataFrame, metrics: Sequence[str]) -> list[SummaryRow]:
    """The summary frame's rows as typed rows (the popularity floor's included)."""
    from lossbench.compare.report.outputs import row_document

    rows: list[SummaryRow] = []
    for row in summary.iter_rows(named=True):
        document = row_document(row, metrics)
        rows.append(
            SummaryRow(
                dataset=str(document["dataset"]),
                model=str(document["model"]),
                loss=str(document["loss"]),
                baseline=str(document["baseline"]),
                seeds=int(document["seeds"] or 0),
                metrics={
                    name: MetricSummary(values["mean"], values["std"], values["change_percent"])
                    for name, values in document["metrics"].items()
                },
                p=document["p"],
                significant=document["significant"],
            )
        )
    return rows
