"""A comparison as a pipeline step: a run that fails is recorded (the others still train),
expectations are judged on the summary, and the outcome is published as PASS / FAIL lines,
`verdict.json` beside `summary.md` (the `--json` document), `--junit` and the CI step summary,
with an exit code (0: all held, 1: not).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
from rich.console import Console

from lossbench.compare.ci.expectations import (
    Expectation,
    Verdict,
    evaluate_expectations,
    needed_metrics,
)
from lossbench.compare.execute.executors import local_executor
from lossbench.compare.execute.failures import (
    FAILURE_FILE,
    ExecutorFactory,
    FailedRuns,
    RunHandling,
)
from lossbench.compare.execute.types import PrepareFn
from lossbench.compare.pipeline import run_plan
from lossbench.compare.plan.build import ComparisonPlan, SavedPlan, load_saved_plan
from lossbench.compare.report.outputs import (
    RunFailure,
    append_step_summary,
    comparison_document,
    step_summary,
    write_junit,
)
from lossbench.compare.report.render import SUMMARY_FILE, write_text
from lossbench.compare.report.results import results_frame
from lossbench.compare.report.summary import SummaryOptions, summarize
from lossbench.errors import LossbenchError
from lossbench.training.run_files import is_finished

if TYPE_CHECKING:
    from lossbench.training.observers import RunObserver

VERDICT_FILE = "verdict.json"  # the --json document, written beside summary.md

__all__ = ["FAILURE_FILE", "FailedRuns", "Outcome", "Publishing", "compare_and_judge"]


@dataclass(frozen=True)
class Publishing:
    """Where the outcome goes besides the display."""

    json_output: bool = False  # the JSON document on standard output
    junit: Path | None = None  # a JUnit XML report
    track: str | None = None  # an experiment tracker (lossbench.training.tracking)


@dataclass(frozen=True)
class Outcome:
    run_dirs: list[Path]  # finished runs of the comparison
    summary: pl.DataFrame  # one row per (dataset, model, loss); empty when nothing finished
    metrics: list[str]  # the summary's metrics: shown, then the significance and expected ones
    verdicts: list[Verdict]
    failures: list[RunFailure]

    @property
    def passed(self) -> bool:
        return not self.failures and all(verdict.passed for verdict in self.verdicts)


def compare_and_judge(
    plan: ComparisonPlan,
    prepare: PrepareFn,
    options: SummaryOptions,
    expectations: Sequence[Expectation],
    publishing: Publishing,
    display: Console,
    retrain_changed: bool = False,
    markdown_file: Path | None = None,
    executor_factory: ExecutorFactory = local_executor,
    *,
    allow_collapsed: bool = False,
    memory_budget: int | None = None,
) -> Outcome:
    """Run the planned comparison, judge it, publish the outcome (`Outcome.passed`: exit 0).

    `executor_factory` (compare/execute/executors.py) trains the runs: here, or as Ray tasks.
    `allow_collapsed`: judge expectations on a loss's runs that did not collapse instead of
    failing them; `memory_budget` (bytes): refuse runs estimated to need more."""
    from lossbench.training.observers import FiniteLoss
    from lossbench.training.tracking import open_tracker

    out_dir = plan.out_dir
    started = time.perf_counter()
    tracker = open_tracker(publishing.track, out_dir, out_dir.name) if publishing.track else None
    watchers: tuple[RunObserver, ...] = (tracker,) if tracker else ()
    failed = FailedRuns()
    handling = RunHandling(checks=(FiniteLoss(),), watchers=watchers, failed=failed)
    executor = executor_factory(handling)
    try:
        written = run_plan(
            plan,
            prepare,
            options,
            display,
            retrain_changed,
            executor,
            markdown_file=markdown_file,
            memory_budget=memory_budget,
        )
    except BaseException as error:
        # Every run failed ("no finished runs") is an outcome; anything else ends here.
        if not (isinstance(error, LossbenchError) and failed.failures):
            if tracker is not None:
                tracker.close(failed=True)
            raise
        written = []
    saved = plan.saved()
    outcome = judge(out_dir, expectations, options, failed.failures, allow_collapsed, saved)
    if tracker is not None:
        tracker.log_comparison(written)
        tracker.close(failed=not outcome.passed)
    publish(outcome, out_dir, options, publishing, display, time.perf_counter() - started)
    return outcome


def judge(
    out_dir: Path,
    expectations: Sequence[Expectation],
    options: SummaryOptions,
    failures: Sequence[RunFailure],
    allow_collapsed: bool = False,
    saved: SavedPlan | None = None,
) -> Outcome:
    """Summarize the comparison's finished runs (with every metric an expectation reads) and
    judge the expectations on each of its (dataset, model) pairs. `saved`: the plan in hand
    (else `comparison.json` is read)."""
    plan = saved if saved is not None else load_saved_plan(out_dir)
    if plan is None:
        raise LossbenchError(f"{out_dir} holds no comparison; run `lossbench compare` first")
    run_dirs = [run_dir for run_dir in plan.run_dirs if is_finished(run_dir)]
    metrics = list(
        dict.fromkeys(
            [
                *options.metrics,
                options.significance_metric,
                *needed_metrics(expectations, options.significance_metric),
            ]
        )
    )
    summary = pl.DataFrame()
    if run_dirs:
        wider = dataclasses.replace(options, metrics=metrics)
        summary = summarize(results_frame(run_dirs), plan.baselines, wider, plan.loss_order)
    verdicts = evaluate_expectations(
        expectations,
        summary,
        plan.baselines,
        options.significance_metric,
        options.alpha,
        allow_collapsed,
    )
    return Outcome(run_dirs, summary, metrics, verdicts, list(failures))


def publish(
    outcome: Outcome,
    out_dir: Path,
    options: SummaryOptions,
    publishing: Publishing,
    display: Console,
    seconds: float,
) -> int:
    """Verdict lines on the display, then JSON, JUnit and the step summary where asked."""
    for verdict in outcome.verdicts:
        style = "green" if verdict.passed else "red"
        display.print(verdict.line, style=style, markup=False, highlight=False, soft_wrap=True)
    for failure in outcome.failures:
        display.print(
            f"{failure.line} (traceback in {failure.run_dir / FAILURE_FILE})",
            style="red",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    document = comparison_document(
        outcome.run_dirs,
        outcome.summary,
        outcome.metrics,
        options.significance_metric,
        outcome.verdicts,
        outcome.failures,
    )
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    write_text(out_dir / VERDICT_FILE, text)  # the verdict stays beside summary.md
    if publishing.json_output:
        sys.stdout.write(text)
        sys.stdout.flush()
    if publishing.junit is not None:
        write_junit(publishing.junit, outcome.verdicts, outcome.failures, seconds)
        display.print(f"JUnit report in {publishing.junit}", highlight=False)
    tables = out_dir / SUMMARY_FILE
    markdown = tables.read_text() if outcome.run_dirs and tables.is_file() else ""
    append_step_summary(step_summary(markdown, outcome.verdicts, outcome.failures))
    return 0 if outcome.passed else 1
