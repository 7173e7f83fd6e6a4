"""Expectations on a comparison's results, which set a CI job's exit code (`--expect`).

Each expectation (parsed by `expression.py`) is a comparison of two sides. A term is the loss's
test METRIC averaged over the comparison's seeds; a bare LOSS means the comparison's
significance metric (NDCG@10 unless `--significance-metric` says otherwise). `significant`
also asks the comparison's own paired test (Holm-adjusted, one of the two losses being the
baseline) to reject at alpha in the stated direction.

Expectations are parsed and checked against the comparison's losses before anything trains;
each is then judged once per (dataset, model) of the comparison.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from lossbench.compare.ci.expression import (
    SIGNIFICANT,
    Expectation,
    Side,
    Term,
    parse_expectation,
    parse_expectations,
)
from lossbench.errors import LossbenchError
from lossbench.training.config import read_toml

Rows = Mapping[str, Mapping[str, object]]  # one (dataset, model)'s summary rows by loss
_HOLDS = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


@dataclass(frozen=True)
class Verdict:
    """One expectation judged on one (dataset, model) of the comparison."""

    expectation: Expectation
    dataset: str
    model: str
    passed: bool
    left: float | None  # the values compared (None: a loss without finished runs)
    right: float | None
    p_holm: float | None  # `significant` only
    explanation: str  # the numbers that decided it

    @property
    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{verdict} {self.expectation.text} [{self.dataset}/{self.model}]: {self.explanation}"
        )


def read_grid_expectations(path: Path) -> list[str]:
    """The top-level `expect = [...]` list of a grid file (none: empty)."""
    value = read_toml(path).get("expect", [])
    if not isinstance(value, list) or not all(isinstance(text, str) for text in value):
        raise LossbenchError(
            f'invalid expect in {path}: give a list of strings, e.g. expect = ["improved > bce"]'
        )
    return list(value)


def needed_metrics(expectations: Sequence[Expectation], default_metric: str) -> list[str]:
    """The metrics the expectations read, in order of appearance."""
    names = [term.resolved(default_metric) for e in expectations for term in e.terms]
    return list(dict.fromkeys(names))


def check_expectations(
    expectations: Sequence[Expectation],
    groups: Mapping[tuple[str, str], tuple[Sequence[str], str]],
    significance_metric: str,
) -> None:
    """Before training: every loss named is compared in every (dataset, model) of `groups`
    ((dataset, model) -> (its losses, its baseline)), and each `significant` one pairs a loss
    with the baseline on the significance metric, the only test the comparison runs."""
    for expectation in expectations:
        for (dataset, model), (losses, baseline) in groups.items():
            for term in expectation.terms:
                if term.loss not in losses:
                    raise LossbenchError(
                        f"expectation {expectation.text!r} names loss {term.loss!r}, which is "
                        f"not compared on {dataset}/{model}; compared: {', '.join(losses)}"
                    )
            if expectation.significant:
                _check_significant(expectation, baseline, significance_metric)


def _check_significant(expectation: Expectation, baseline: str, significance_metric: str) -> None:
    first, second = expectation.terms
    if any(term.resolved(significance_metric) != significance_metric for term in (first, second)):
        raise LossbenchError(
            f"expectation {expectation.text!r}: 'significant' uses the paired test on "
            f"{significance_metric} (--significance-metric); compare that metric"
        )
    if baseline not in (first.loss, second.loss) or first.loss == second.loss:
        raise LossbenchError(
            f"expectation {expectation.text!r}: the paired test compares each loss with the "
            f"baseline {baseline!r}; compare with it, or choose the baseline with --baseline"
        )


def evaluate_expectations(
    expectations: Sequence[Expectation],
    summary: pl.DataFrame,
    groups: Iterable[tuple[str, str]],
    significance_metric: str,
    alpha: float,
    allow_collapsed: bool = False,
) -> list[Verdict]:
    """Judge each expectation on each (dataset, model) from `summary` (see summary.py), whose
    rows must hold the `needed_metrics` columns; a loss without a row fails what names it, and
    so does a loss with collapsed runs unless `allow_collapsed` (then its other runs count)."""
    by_group: dict[tuple[str, str], dict[str, dict[str, object]]] = {}
    for row in summary.iter_rows(named=True):
        by_group.setdefault((row["dataset"], row["model"]), {})[row["loss"]] = row
    return [
        _judge(
            expectation,
            dataset,
            model,
            by_group.get((dataset, model), {}),
            significance_metric,
            alpha,
            allow_collapsed,
        )
        for dataset, model in groups
        for expectation in expectations
    ]


def _judge(
    expectation: Expectation,
    dataset: str,
    model: str,
    rows: Rows,
    metric: str,
    alpha: float,
    allow_collapsed: bool = False,
) -> Verdict:
    missing = [t.loss for t in expectation.terms if t.loss not in rows]
    if missing:
        explanation = f"no finished run of {', '.join(dict.fromkeys(missing))}"
        return Verdict(expectation, dataset, model, False, None, None, None, explanation)
    collapsed = _collapsed(expectation, rows)
    if collapsed and not allow_collapsed:
        explanation = (
            f"{collapsed} collapsed (no better than pop on validation, or a non-finite loss); "
            "--allow-collapsed judges the other runs"
        )
        return Verdict(expectation, dataset, model, False, None, None, None, explanation)
    left, left_text = _value(expectation.left, rows, metric)
    right, right_text = _value(expectation.right, rows, metric)
    holds = bool(_HOLDS[expectation.operator](left, right))
    actual = ">" if left > right else "<" if left < right else "="
    explanation = f"{left_text} {actual} {right_text}"
    p_holm = None
    if expectation.significant:
        holds, p_holm, test_text = _significance(expectation, rows, alpha, holds)
        explanation = f"{explanation}; {test_text}"
    return Verdict(expectation, dataset, model, holds, left, right, p_holm, explanation)


def _collapsed(expectation: Expectation, rows: Rows) -> str:
    """'2 runs of bce' for the losses of `expectation` with collapsed runs ('' for none)."""
    counts = {
        term.loss: count
        for term in expectation.terms
        if isinstance(count := rows[term.loss].get("collapsed"), int) and count > 0
    }
    return ", ".join(
        f"{count} run{'s' if count > 1 else ''} of {loss}" for loss, count in counts.items()
    )


def _value(side: Side, rows: Rows, default_metric: str) -> tuple[float, str]:
    """The side's value and how it was computed, e.g. '0.9 * hr@10(improved) 0.7400 = 0.6660'."""
    factor = 1.0 if side.factor is None else side.factor
    if side.term is None:
        return factor, f"{factor:g}"
    metric = side.term.resolved(default_metric)
    mean = rows[side.term.loss][f"{metric}_mean"]
    mean = float(mean) if isinstance(mean, (int, float)) else float("nan")
    text = f"{metric}({side.term.loss}) {mean:.4f}"
    if side.factor is None:
        return mean, text
    return factor * mean, f"{factor:g} * {text} = {factor * mean:.4f}"


def _significance(
    expectation: Expectation, rows: Rows, alpha: float, means_hold: bool
) -> tuple[bool, float | None, str]:
    """The baseline's row has no test; the other loss's row holds its test against it."""
    first, second = expectation.terms
    first_row = rows[first.loss]
    other = first if first_row["loss"] != first_row["baseline"] else second
    other_row = rows[other.loss]
    p_holm = other_row["p_holm"]
    difference = other_row["mean_difference"]  # other - baseline, over (user, seed) pairs
    if not isinstance(p_holm, float) or not isinstance(difference, float) or np.isnan(p_holm):
        return False, None, f"no paired test of {other.loss} against the baseline"
    wanted_sign = 1.0 if (other == first) == (expectation.operator == ">") else -1.0
    significant = p_holm < alpha and difference * wanted_sign > 0
    relation = "<" if p_holm < alpha else ">="
    text = f"Holm-adjusted p {_p_text(p_holm)} {relation} alpha {alpha:g}"
    return means_hold and significant, p_holm, text


def _p_text(value: float) -> str:
    return f"{value:.1e}" if value < 1e-3 else f"{value:.3f}"


__all__ = [
    "SIGNIFICANT",
    "Expectation",
    "Side",
    "Term",
    "Verdict",
    "check_expectations",
    "evaluate_expectations",
    "needed_metrics",
    "parse_expectation",
    "parse_expectations",
    "read_grid_expectations",
]
