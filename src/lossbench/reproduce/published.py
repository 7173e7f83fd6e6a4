"""The study's published numbers, as data: one validated row per (table, cell, metric).

`published.csv` lives beside this module: `table, dataset, model, loss, negatives, metric,
value, source`. `negatives` is empty where the loss ran with its published default; the
loss sweep's BCE rows name their count. Rows are validated on load (known table, metric
syntax, value in [0, 1], no cell given twice), so a typo fails at once, not in a report.
"""

from __future__ import annotations

import csv
from functools import cache, partial
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lossbench.errors import LossbenchError, validation_failure

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

TableName = Literal["table2", "table3", "loss-sweep"]
TABLE_TITLES: dict[str, str] = {
    "table2": "Table 2: each model with its original loss and with improved (S3Rec-code setting)",
    "table3": "Table 3: SASRec bce, BERT4Rec, SASRec improved (aprec setting)",
    "loss-sweep": "SASRec with every loss of the study's sweep",
}


class PublishedValue(BaseModel):
    """One published number: a metric of one (table, dataset, model, loss) cell."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    table: TableName
    dataset: str
    model: str
    loss: str
    negatives: int | None = Field(default=None, ge=1)
    metric: str
    value: float = Field(ge=0.0, le=1.0)
    source: str

    @field_validator("metric")
    @classmethod
    def _metric_at_k(cls, metric: str) -> str:
        head, _, k = metric.partition("@")
        if head not in {"hr", "ndcg"} or not k.isdigit():
            raise ValueError(f"metric {metric!r} is not hr@K or ndcg@K")
        return metric

    @property
    def cell(self) -> tuple[str, str, str, str, int | None]:
        return (self.table, self.dataset, self.model, self.loss, self.negatives)


@cache
def _row_problem(line_number: int, where: str, message: str, detail: ErrorDetails) -> str:
    return f"published.csv line {line_number}: {detail['loc'][0]}: {detail['msg']}"


def published_values() -> tuple[PublishedValue, ...]:
    """Every row of `published.csv`, validated."""
    text = resources.files("lossbench.reproduce").joinpath("published.csv").read_text()
    rows: list[PublishedValue] = []
    seen: set[tuple[object, ...]] = set()
    for line_number, raw in enumerate(csv.DictReader(text.splitlines()), start=2):
        values = {k: (v if v != "" else None) for k, v in raw.items()}
        try:
            row = PublishedValue.model_validate(values)
        except ValidationError as error:
            raise validation_failure(error, partial(_row_problem, line_number)) from None
        key = (*row.cell, row.metric)
        if key in seen:
            raise LossbenchError(f"published.csv line {line_number}: {key} is given twice")
        seen.add(key)
        rows.append(row)
    return tuple(rows)


def published_for(table: str, dataset: str | None = None) -> list[PublishedValue]:
    """The published values of one table, optionally of one dataset."""
    return [
        row
        for row in published_values()
        if row.table == table and (dataset is None or row.dataset == dataset)
    ]


def published_datasets(table: str) -> list[str]:
    """The datasets a table has published numbers for, in the file's order."""
    return list(dict.fromkeys(row.dataset for row in published_for(table)))


def published_value(
    table: str, dataset: str, model: str, loss: str, metric: str, negatives: int | None = None
) -> float | None:
    """The published number of one cell and metric, or None when the study gives none."""
    for row in published_for(table, dataset):
        if (row.model, row.loss, row.negatives, row.metric) == (model, loss, negatives, metric):
            return row.value
    return None


# The counts of the files the study published its numbers on (users, items, interactions),
# as their publishers state them; another variant of a dataset of the same name is refused.
PUBLISHED_COUNTS: dict[str, tuple[int, int, int]] = {
    "beauty": (40_226, 54_542, 353_962),  # BERT4Rec's beauty.txt
    "beauty-s3rec": (22_363, 12_101, 198_502),  # S3Rec's Beauty.txt
    "lastfm": (1_090, 3_646, 52_551),  # S3Rec's LastFM.txt
}


def check_published_variant(name: str, meta: dict[str, Any]) -> None:
    """Refuse a prepared dataset whose counts differ from the variant the study used."""
    expected = PUBLISHED_COUNTS.get(name)
    if expected is None:
        return
    actual = (int(meta["n_users"]), int(meta["n_items"]), int(meta["n_interactions"]))
    if actual != expected:
        raise LossbenchError(
            f"dataset {name} has {_counts(actual)}, but the study's variant has "
            f"{_counts(expected)}; prepare the published file (`lossbench download {name} "
            f"--force`, then `lossbench preprocess {name} --force`) or compare on this data "
            "with `lossbench compare`"
        )


def _counts(counts: tuple[int, int, int]) -> str:
    users, items, interactions = counts
    return f"{users:,} users, {items:,} items, {interactions:,} interactions"
