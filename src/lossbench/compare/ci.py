"""A comparison as a pipeline step: a run that fails is recorded (the others still train),
expectations are judged on the summary, and the outcome is published as PASS / FAIL lines,
`--json`, `--junit` and the CI step summary, with an exit code (0: all held, 1: not).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console

from lossbench.compare.arms import config_label
from lossbench.compare.expectations import (
    Expectation,
    Verdict,
    evaluate_expectations,
    needed_metrics,
)
from lossbench.compare.grid import Grid
from lossbench.compare.outputs import (
    RunFailure,
    append_step_summary,
    comparison_document,
    step_summary,
    write_junit,
)
from lossbench.compare.plan import load_saved_plan
from lossbench.compare.report import SUMMARY_FILE
from lossbench.compare.results import results_frame
from lossbench.compare.runner import PrepareFn, TrainFn, compare_losses, run_locally
from lossbench.compare.summary import SummaryOptions, summarize
from lossbench.data.prepared import PreparedDataset
from lossbench.errors import LossbenchError
from lossbench.training.entry import PlanEntry
from lossbench.training.loop import RunResult
from lossbench.training.run_files import is_finished

FAILURE_FILE = "failure.txt"  # a failed run's traceback, in its run folder


@dataclass(frozen=True)
class Publishing:
    """Where the outcome goes besides the display."""

    json_output: bool = False  # the JSON document on standard output
    junit: Path | None = None  # a JUnit XML report
    track: str | None = None  # an experiment tracker (lossbench.tracking)


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


class FailedRuns:
    """Wraps a train function so that a run that raises is recorded instead of ending the
    comparison (KeyboardInterrupt still ends it); the traceback goes to the run folder."""

    def __init__(self) -> None:
        self.failures: list[RunFailure] = []

    def guard(self, train: TrainFn) -> TrainFn:
        def guarded(
            entry: PlanEntry, dataset: PreparedDataset, console: Console
        ) -> RunResult | None:
            (entry.run_dir / FAILURE_FILE).unlink(missing_ok=True)
            try:
                return train(entry, dataset, console)
            except Exception as error:  # noqa: BLE001  a failed run is a result here
                failure = _failure(entry, error)
                entry.run_dir.mkdir(parents=True, exist_ok=True)
                (entry.run_dir / FAILURE_FILE).write_text(failure.details)
                self.failures.append(failure)
                console.print(
                    failure.line, style="red", markup=False, highlight=False, soft_wrap=True
                )
                return None

        return guarded


def _failure(entry: PlanEntry, error: Exception) -> RunFailure:
    config, run_dir = entry.config, entry.run_dir
    message = (
        str(error) if isinstance(error, LossbenchError) else f"{type(error).__name__}: {error}"
    )
    return RunFailure(
        label=entry.label,
        dataset=config.dataset,
        model=config.model,
        loss=config_label(config),  # the arm, as the table names it
        seed=config.seed,
        run_dir=run_dir,
        error=" ".join(message.split()),  # one line
        details="".join(traceback.format_exception(error)),
    )


def compare_and_judge(
    grid: Grid,
    settings: dict[str, Any],
    out_dir: Path,
    prepare: PrepareFn,
    options: SummaryOptions,
    expectations: Sequence[Expectation],
    publishing: Publishing,
    display: Console,
    retrain_changed: bool = False,
    markdown_file: Path | None = None,
) -> int:
    """Run the comparison, judge it, publish the outcome; return the exit code."""
    from lossbench.tracking import open_tracker
    from lossbench.training.loop import train_entry
    from lossbench.training.observers import FiniteLoss, RunObserver

    started = time.perf_counter()
    tracker = open_tracker(publishing.track, out_dir, out_dir.name) if publishing.track else None
    observers: list[RunObserver] = [*([tracker] if tracker else []), FiniteLoss()]
    failed = FailedRuns()
    train = failed.guard(partial(train_entry, observers=observers))
    executor = partial(run_locally, train=train)
    try:
        written = compare_losses(
            grid,
            settings,
            out_dir,
            prepare,
            options,
            display,
            retrain_changed,
            executor,
            markdown_file=markdown_file,
        )
    except BaseException as error:
        # Every run failed ("no finished runs") is an outcome; anything else ends here.
        if not (isinstance(error, LossbenchError) and failed.failures):
            if tracker is not None:
                tracker.close(failed=True)
            raise
        written = []
    outcome = judge(out_dir, expectations, options, failed.failures)
    if tracker is not None:
        tracker.log_comparison(written)
        tracker.close(failed=not outcome.passed)
    return publish(outcome, out_dir, options, publishing, display, time.perf_counter() - started)


def judge(
    out_dir: Path,
    expectations: Sequence[Expectation],
    options: SummaryOptions,
    failures: Sequence[RunFailure],
) -> Outcome:
    """Summarize the comparison's finished runs (with every metric an expectation reads) and
    judge the expectations on each of its (dataset, model) pairs."""
    plan = load_saved_plan(out_dir)
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
        expectations, summary, plan.baselines, options.significance_metric, options.alpha
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
    if publishing.json_output:
        document = comparison_document(
            outcome.run_dirs,
            outcome.summary,
            outcome.metrics,
            options.significance_metric,
            outcome.verdicts,
            outcome.failures,
        )
        sys.stdout.write(json.dumps(document, indent=2, allow_nan=False) + "\n")
        sys.stdout.flush()
    if publishing.junit is not None:
        write_junit(publishing.junit, outcome.verdicts, outcome.failures, seconds)
        display.print(f"JUnit report in {publishing.junit}", highlight=False)
    tables = out_dir / SUMMARY_FILE
    markdown = tables.read_text() if outcome.run_dirs and tables.is_file() else ""
    append_step_summary(step_summary(markdown, outcome.verdicts, outcome.failures))
    return 0 if outcome.passed else 1
