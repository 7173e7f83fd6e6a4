"""The `--expect` language: one expectation per string, parsed into a typed `Expectation`.

    expectation := side OP side ["significant"]
    side        := NUMBER | [NUMBER "*"] term
    term        := LOSS | METRIC "(" LOSS ")"          e.g. improved, hr@10(./my_loss.py:fn)
    OP          := ">" | ">=" | "<" | "<="

A LOSS is a compared loss or arm label as the table shows it; one with spaces
("improved shuffled") is quoted, or written inside METRIC(...), where spaces are allowed.
`expectations.py` judges parsed expectations against a comparison's results.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lossbench.errors import LossbenchError
from lossbench.evaluation.metrics import per_user_metric

Operator = Literal[">", ">=", "<", "<="]
SIGNIFICANT = "significant"
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
