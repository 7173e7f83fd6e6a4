"""Expectations on a comparison's results, which set a CI job's exit code (`--expect`).

One expectation per string:

    expectation := side OP side ["significant"]
    side        := NUMBER | [NUMBER "*"] term
    term        := LOSS | METRIC "(" LOSS ")"          e.g. improved, hr@10(./my_loss.py:fn)
    OP          := ">" | ">=" | "<" | "<="

A LOSS is a compared loss or arm label as the table shows it; one with spaces
("improved shuffled") is quoted, or written inside METRIC(...), where spaces are allowed.

A term is the loss's test METRIC averaged over the comparison's seeds; a bare LOSS means the
comparison's significance metric (NDCG@10 unless `--significance-metric` says otherwise).
`significant` also asks the comparison's own paired test (Holm-adjusted, one of the two losses
being the baseline) to reject at alpha in the stated direction.

Expectations are parsed and checked against the comparison's losses before anything trains;
each is then judged once per (dataset, model) of the comparison.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from lossbench.errors import LossbenchError
from lossbench.evaluation.metrics import per_user_metric
from lossbench.training.config import read_toml

Operator = Literal[">", ">=", "<", "<="]
Rows = Mapping[str, Mapping[str, object]]  # one (dataset, model)'s summary rows by loss
SIGNIFICANT = "significant"
_HOLDS = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<op>>=|<=|>|<)
      | (?P<star>\*)
      | (?P<call>[^\s()<>=*"']+\([^()]*\))
      | (?P<quoted>"[^"]*"|'[^']*')
      | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![^\s()<>=*])
      | (?P<word>[^\s()<>=*"']+)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Term:
    """The mean over seeds of one loss's test metric (`metric` None: the default metric)."""

    loss: str
    metric: str | None = None

    def resolved(self, default_metric: str) -> str:
        return self.metric or default_metric


@dataclass(frozen=True)
class Side:
    """`factor * term`, or the constant `factor` when there is no term."""

    factor: float | None = None  # None: no number written
    term: Term | None = None


@dataclass(frozen=True)
class Expectation:
    text: str
    left: Side
    operator: Operator
    right: Side
    significant: bool = False

    @property
    def terms(self) -> list[Term]:
        return [side.term for side in (self.left, self.right) if side.term is not None]


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


def parse_expectation(text: str) -> Expectation:
    """Parse one expectation; a malformed one raises a `LossbenchError` saying where."""
    parser = _Parser(text)
    left = parser.side()
    operator = parser.take("op", "a comparison operator (>, >=, <, <=)")
    right = parser.side()
    significant = parser.keyword(SIGNIFICANT)
    parser.end()
    expectation = Expectation(text.strip(), left, operator, right, significant)  # type: ignore[arg-type]
    if not expectation.terms:
        raise parser.error("it compares two numbers; name a loss, e.g. 'improved > bce'")
    if significant and not _plain_pair(expectation):
        raise parser.error(
            "'significant' compares two losses on one metric with > or <, "
            "e.g. 'improved > bce significant'"
        )
    return expectation


def parse_expectations(texts: Iterable[str]) -> list[Expectation]:
    return [parse_expectation(text) for text in texts]


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


def _plain_pair(expectation: Expectation) -> bool:
    """Two unscaled terms compared strictly (their metric is checked against the test's)."""
    sides = (expectation.left, expectation.right)
    unscaled = all(side.term is not None and side.factor is None for side in sides)
    return unscaled and expectation.operator in (">", "<")


class _Parser:
    """Recursive descent over the tokens of one expectation."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, column)
        position = 0
        while text[position:].strip():
            match = _TOKEN.match(text, position)
            if match is None or match.lastgroup is None:
                column = position + len(text[position:]) - len(text[position:].lstrip())
                raise self.error(f"unexpected {text[column : column + 1]!r} at column {column + 1}")
            self.tokens.append(
                (match.lastgroup, match.group(match.lastgroup), match.start(match.lastgroup))
            )
            position = match.end()
        self.index = 0

    def error(self, reason: str) -> LossbenchError:
        return LossbenchError(
            f"malformed expectation {self.text!r}: {reason} (forms: 'improved > bce', "
            "'improved > bce significant', 'ndcg@10(improved) >= 0.05', "
            "'hr@10(a) >= 0.9 * hr@10(b)')"
        )

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self, kind: str, wanted: str) -> str:
        token = self.peek()
        if token is None or token[0] != kind:
            found = "the end" if token is None else f"{token[1]!r} at column {token[2] + 1}"
            raise self.error(f"expected {wanted}, found {found}")
        self.index += 1
        return token[1]

    def side(self) -> Side:
        token = self.peek()
        if token is not None and token[0] == "number":
            factor = float(self.take("number", "a number"))
            next_token = self.peek()
            if next_token is None or next_token[0] != "star":
                return Side(factor, None)
            self.take("star", "'*'")
            return Side(factor, self.term())
        return Side(None, self.term())

    def term(self) -> Term:
        token = self.peek()
        if token is not None and token[0] == "call":  # METRIC(loss label)
            self.index += 1
            metric, _, rest = token[1].partition("(")
            loss = rest[:-1].strip()
            if not loss:
                raise self.error(f"{token[1]!r} names no loss")
            try:
                per_user_metric(np.ones(1), metric)
            except LossbenchError as error:
                raise self.error(str(error)) from None
            return Term(loss, metric)
        if token is not None and token[0] == "quoted":
            self.index += 1
            return Term(token[1][1:-1].strip())
        return Term(self.take("word", "a loss or METRIC(loss)"))

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token[0] == "word" and token[1].lower() == word:
            self.index += 1
            return True
        return False

    def end(self) -> None:
        token = self.peek()
        if token is not None:
            raise self.error(f"unexpected {token[1]!r} at column {token[2] + 1}")
