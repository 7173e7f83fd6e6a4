"""Machine-readable results of a comparison: one JSON document, a JUnit XML report, and the
markdown a CI job shows on its summary page.

The JSON and the table come from the same summary frame (summary.py), so they hold the same
numbers; non-finite values become `null` (strict JSON parsers reject NaN).
"""

from __future__ import annotations

import math
import os
import socket
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from lossbench import __version__
from lossbench.atomic import atomic_path
from lossbench.compare.ci.expectations import Verdict
from lossbench.compare.execute.types import RunFailure
from lossbench.compare.report.results import COST_COLUMNS, KEY_COLUMNS
from lossbench.compare.report.summary import BETTER, WORSE
from lossbench.training.run_files import read_metrics

RUN_FIELDS = (*KEY_COLUMNS, "epochs", "best_epoch", *COST_COLUMNS, "validation_metric")
ROW_FIELDS = (
    "dataset",
    "model",
    "loss",
    "baseline",
    "reference",  # true for the popularity floor (`pop`): no runs, no test
    "seeds",  # runs averaged
    "collapsed",  # runs left out: no better than pop on validation, or a non-finite loss
    "mean_difference",
    "pairs",
)
TIMING_FIELDS = (
    "train_seconds",
    "train_seconds_per_epoch",
    "loss_seconds_per_epoch",
    "loss_share",
    "tokens_per_second",
    "best_epoch",
    "epochs",
)


def run_document(run_dir: Path) -> dict[str, Any]:
    """One finished run: its keys, every test and validation metric, epochs, cost, memory,
    the popularity floor's metrics and whether the run collapsed."""
    metrics = read_metrics(run_dir)
    document = {name: metrics.get(name) for name in RUN_FIELDS}
    document.update(
        test=metrics["test"],
        valid=metrics["valid"],
        collapsed=bool(metrics.get("collapsed", False)),
        popularity=metrics.get("popularity"),  # the floor on this run's users: valid, test
        run_dir=str(run_dir),
    )
    return document


def row_document(row: dict[str, Any], metrics: Sequence[str]) -> dict[str, Any]:
    """One summary row: per metric mean / std / change (%), and the paired test's result."""
    mark = row.get("mark")
    return {
        **{name: row.get(name) for name in ROW_FIELDS},
        "metrics": {
            name: {
                "mean": row.get(f"{name}_mean"),
                "std": row.get(f"{name}_std"),
                "change_percent": row.get(f"{name}_change"),
            }
            for name in metrics
        },
        "p": row.get("p_holm"),  # Holm-adjusted, as in the table
        "p_unadjusted": row.get("p_value"),
        "significant": {BETTER: "better", WORSE: "worse"}.get(mark) if mark else None,
        **{name: row.get(name) for name in (*TIMING_FIELDS, "peak_memory_mb")},
    }


def verdict_document(verdict: Verdict) -> dict[str, Any]:
    return {
        "expectation": verdict.expectation.text,
        "dataset": verdict.dataset,
        "model": verdict.model,
        "passed": verdict.passed,
        "left": verdict.left,
        "right": verdict.right,
        "p": verdict.p_holm,
        "line": verdict.line,
    }


def failure_document(failure: RunFailure) -> dict[str, Any]:
    return {
        "label": failure.label,
        "dataset": failure.dataset,
        "model": failure.model,
        "loss": failure.loss,
        "seed": failure.seed,
        "run_dir": str(failure.run_dir),
        "error": failure.error,
    }


def comparison_document(
    run_dirs: Sequence[Path],
    summary: pl.DataFrame,
    metrics: Sequence[str],
    significance_metric: str,
    verdicts: Sequence[Verdict],
    failures: Sequence[RunFailure],
) -> dict[str, Any]:
    """The whole `--json` document of a comparison."""
    document = {
        "lossbench": __version__,
        "passed": all(v.passed for v in verdicts) and not failures,
        "significance_metric": significance_metric,
        "runs": [run_document(run_dir) for run_dir in run_dirs],
        "failed_runs": [failure_document(failure) for failure in failures],
        "comparison": [row_document(row, metrics) for row in summary.iter_rows(named=True)],
        "expectations": [verdict_document(verdict) for verdict in verdicts],
    }
    return finite(document)


def report_document(
    run_dirs: Sequence[Path],
    summary: pl.DataFrame,
    metrics: Sequence[str],
    significance_metric: str,
    warning: str | None,
) -> dict[str, Any]:
    """The `--json` document of `report`: the comparison's shape without a verdict (`report`
    judges no expectation), with the warning shown when runs trained differently were split."""
    document = comparison_document(run_dirs, summary, metrics, significance_metric, [], [])
    for key in ("passed", "failed_runs", "expectations"):
        del document[key]
    return {**document, "warning": warning}


def finite(value: Any) -> Any:
    """`value` with every NaN / infinity replaced by None (recursively)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def write_junit(
    path: Path, verdicts: Sequence[Verdict], failures: Sequence[RunFailure], seconds: float
) -> None:
    """A JUnit XML report: a suite of expectations (one test case each, per dataset and model)
    and a suite of training failures (one test case per run that failed), written atomically."""
    stamp = datetime.now(timezone.utc).replace(microsecond=0, tzinfo=None).isoformat()
    root = ElementTree.Element("testsuites", name="lossbench", time=f"{seconds:.3f}")
    expectation_cases = [
        _case(
            f"{v.expectation.text} [{v.dataset}/{v.model}]",
            f"lossbench.expectations.{v.dataset}.{v.model}",
            None if v.passed else (v.explanation, "ExpectationFailed", v.line),
        )
        for v in verdicts
    ]
    failure_cases = [
        _case(
            f.label,
            f"lossbench.training.{f.dataset}.{f.model}",
            (f.error, "TrainingFailed", f.details),
        )
        for f in failures
    ]
    for index, (name, cases) in enumerate(
        (("lossbench.expectations", expectation_cases), ("lossbench.training", failure_cases))
    ):
        _suite(root, index, name, cases, stamp, seconds if index == 0 else 0.0)
    root.set("tests", str(sum(int(suite.get("tests", 0)) for suite in root)))
    root.set("failures", str(sum(int(suite.get("failures", 0)) for suite in root)))
    root.set("errors", "0")
    ElementTree.indent(root)
    with atomic_path(path) as temporary:
        ElementTree.ElementTree(root).write(temporary, encoding="utf-8", xml_declaration=True)


def _case(name: str, classname: str, failure: tuple[str, str, str] | None) -> ElementTree.Element:
    case = ElementTree.Element("testcase", name=name, classname=classname, time="0")
    if failure is not None:
        message, kind, text = failure
        element = ElementTree.SubElement(case, "failure", message=message, type=kind)
        element.text = text
    return case


def _suite(
    root: ElementTree.Element,
    index: int,
    name: str,
    cases: list[ElementTree.Element],
    stamp: str,
    seconds: float,
) -> None:
    failed = sum(1 for case in cases if case.find("failure") is not None)
    suite = ElementTree.SubElement(
        root,
        "testsuite",
        name=name,
        tests=str(len(cases)),
        failures=str(failed),
        errors="0",
        skipped="0",
        time=f"{seconds:.3f}",
        timestamp=stamp,
        hostname=socket.gethostname() or "localhost",
        id=str(index),
        package="lossbench",
    )
    properties = ElementTree.SubElement(suite, "properties")
    ElementTree.SubElement(properties, "property", name="lossbench.version", value=__version__)
    suite.extend(cases)
    ElementTree.SubElement(suite, "system-out")
    ElementTree.SubElement(suite, "system-err")


def step_summary(
    table_markdown: str, verdicts: Sequence[Verdict], failures: Sequence[RunFailure]
) -> str:
    """Markdown for a CI job's summary page: the verdicts, failed runs, then the tables."""
    lines = ["## lossbench", ""]
    for verdict in verdicts:
        lines.append(f"- {'✅' if verdict.passed else '❌'} `{verdict.line}`")
    for failure in failures:
        lines.append(f"- ❌ `{failure.line}`")
    body = table_markdown.replace("# Loss comparison", "### Loss comparison", 1)
    return "\n".join([*lines, "", body.replace("\n## ", "\n#### "), ""])


def append_step_summary(text: str, environ: dict[str, str] | None = None) -> Path | None:
    """Append to the file named by GITHUB_STEP_SUMMARY, if set (GitHub Actions renders it)."""
    target = (environ if environ is not None else dict(os.environ)).get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(text)
    return Path(target)
