"""Splitting cleaned, chronological interactions into training, validation and test.

Both splits produce the same table, one row per user (every user of the cleaned data):

- `train_items` (list[int32], chronological): what the model trains on; the validation history.
- `valid_item`, `test_item` (int32, null when the user has no such target).
- `gap_items` (list[int32]): what happened after the training items and before the test
  target; the test history is `train_items + gap_items`.

`loo` (leave-one-out, the study's): per user the last item is the test target, the one before
it the validation target (so `gap_items` is that validation item); every user has both.

`temporal` (one global time threshold per split, chosen by quantile of all interaction times):
a user with an interaction after the test threshold has the first of them as test target and
everything before the threshold as history; validation likewise, between the two thresholds;
training keeps only interactions up to the validation threshold. So nothing after any target's
time is ever trained on. A user needs a history of at least one item to get a target.
"""

from __future__ import annotations

from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lossbench.errors import LossbenchError, validation_failure

SplitName = Literal["loo", "temporal"]

# Raw formats whose `timestamp` column is a real time; the others hold a position in the
# user's line or the file (see `readers.py`), which says nothing across users. A user's own
# csv / tsv / parquet file has a numeric time column (`local_files.py`).
TIMED_FORMATS = frozenset(
    {"movielens-dat", "movielens-csv", "movielens-tsv", "steam", "amazon-csv"}
    | {"amazon23-csv", "yambda-parquet"}
    | {"csv", "tsv", "parquet"}
)


class SplitSpec(BaseModel):
    """Which split, and for `temporal` the two quantiles of interaction time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: SplitName = "loo"
    valid_quantile: float = Field(default=0.8, gt=0.0, lt=1.0)
    test_quantile: float = Field(default=0.9, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> SplitSpec:
        check_quantiles(self.kind, self.valid_quantile, self.test_quantile)
        return self

    def identity(self) -> dict[str, Any]:
        """What defines the split (the quantiles mean nothing to leave-one-out)."""
        if self.kind == "loo":
            return {"kind": "loo"}
        return self.model_dump()

    @property
    def folder_suffix(self) -> str:
        """'' for loo (the `prepared` folder), else e.g. '-temporal-v0.8-t0.9'."""
        if self.kind == "loo":
            return ""
        return f"-temporal-v{self.valid_quantile:g}-t{self.test_quantile:g}"

    @property
    def label(self) -> str:
        """Short words for tables: 'loo' or 'temporal 0.8/0.9'."""
        if self.kind == "loo":
            return "loo"
        return f"temporal {self.valid_quantile:g}/{self.test_quantile:g}"


def check_quantiles(kind: str, valid_quantile: float, test_quantile: float) -> None:
    """ValueError unless a temporal split validates before it tests."""
    if kind == "temporal" and valid_quantile >= test_quantile:
        raise ValueError(
            f"--valid-quantile ({valid_quantile:g}) must be below --test-quantile "
            f"({test_quantile:g}): validation comes before test"
        )


LOO = SplitSpec()


def split_spec(kind: str, valid_quantile: float, test_quantile: float) -> SplitSpec:
    """A validated spec; a bad combination is one line of LossbenchError."""
    values = {"kind": kind, "valid_quantile": valid_quantile, "test_quantile": test_quantile}
    try:
        return SplitSpec.model_validate(values)
    except ValidationError as error:
        raise validation_failure(
            error,
            lambda where, message, _: f"invalid split{' ' + where if where else ''}: {message}",
        ) from None


def check_timed(name: str, format: str, spec: SplitSpec) -> None:
    """Refuse a temporal split of a dataset whose file has no interaction times."""
    if spec.kind == "temporal" and format not in TIMED_FORMATS:
        raise LossbenchError(
            f"dataset {name} has no timestamps (its {format} file holds only the order of "
            "each user's items), so it cannot be split by time; use --split loo"
        )


def split_interactions(
    interactions: pl.DataFrame, spec: SplitSpec
) -> tuple[pl.DataFrame, dict[str, int]]:
    """(the split table described above, counts for the report).

    `interactions`: `user` (1..n, every user present), `item`, `timestamp`, sorted by user
    and chronological within each user.
    """
    if spec.kind == "loo":
        return leave_one_out(interactions), {}
    return temporal(interactions, spec.valid_quantile, spec.test_quantile)


def leave_one_out(interactions: pl.DataFrame) -> pl.DataFrame:
    sequences = interactions.group_by("user", maintain_order=True).agg(pl.col("item"))
    length = pl.col("item").list.len()
    return sequences.select(
        "user",
        train_items=pl.col("item").list.slice(0, length - 2),
        valid_item=pl.col("item").list.get(-2),
        test_item=pl.col("item").list.get(-1),
        gap_items=pl.col("item").list.slice(length - 2, 1),
    )


def time_threshold(timestamps: pl.Series, quantile: float) -> int:
    """The timestamp at 0-based position floor(quantile * (N - 1)) of the N sorted times."""
    value = timestamps.quantile(quantile, interpolation="lower")
    assert value is not None  # the cleaned data is never empty
    return int(value)


def temporal(
    interactions: pl.DataFrame, valid_quantile: float, test_quantile: float
) -> tuple[pl.DataFrame, dict[str, int]]:
    """The global temporal split; see the module docstring."""
    valid_at = time_threshold(interactions["timestamp"], valid_quantile)
    test_at = time_threshold(interactions["timestamp"], test_quantile)
    time = pl.col("timestamp")
    # 0: up to the validation threshold (training), 1: up to the test threshold, 2: after.
    period = pl.when(time <= valid_at).then(0).when(time <= test_at).then(1).otherwise(2)
    item, in_period = pl.col("item"), pl.col("period")
    per_user = (
        interactions.with_columns(period=period)
        .group_by("user", maintain_order=True)
        .agg(
            train_items=item.filter(in_period == 0),
            gap_items=item.filter(in_period == 1),
            first_after=item.filter(in_period == 2).first(),
        )
    )
    n_train, n_gap = pl.col("train_items").list.len(), pl.col("gap_items").list.len()
    split = per_user.select(
        "user",
        "train_items",
        valid_item=pl.when(n_train > 0).then(pl.col("gap_items").list.first()),
        test_item=pl.when(n_train + n_gap > 0).then(pl.col("first_after")),
        gap_items="gap_items",
    )
    times = interactions["timestamp"]
    report = {
        "first_time": int(times.min()),  # type: ignore[arg-type]
        "last_time": int(times.max()),  # type: ignore[arg-type]
        "valid_threshold": valid_at,
        "test_threshold": test_at,
        **temporal_counts(split, per_user["first_after"]),
    }
    for kind, flag in (("valid", "--valid-quantile"), ("test", "--test-quantile")):
        if report[f"{kind}_users"] == 0:
            raise LossbenchError(
                f"the temporal split leaves no {kind} target (threshold "
                f"{report[f'{kind}_threshold']} in times {report['first_time']}.."
                f"{report['last_time']}); change {flag}"
            )
    return split, report


def temporal_counts(split: pl.DataFrame, first_after: pl.Series) -> dict[str, int]:
    """Counts of a temporal split (what `preprocess` prints)."""
    n_train = split["train_items"].list.len()
    n_gap = split["gap_items"].list.len()
    trained = split["train_items"].explode().drop_nulls().unique()
    valid_targets = split["valid_item"].drop_nulls()
    test_targets = split["test_item"].drop_nulls()
    return {
        "train_interactions": int(n_train.sum()),
        "train_users": int((n_train >= 2).sum()),  # users with at least one training position
        "valid_users": len(valid_targets),
        "test_users": len(test_targets),
        # Users with interactions in a period but none before it: no history, not evaluated.
        "valid_cold_users": int(((n_gap > 0) & (n_train == 0)).sum()),
        "test_cold_users": int((first_after.is_not_null() & (n_train + n_gap == 0)).sum()),
        # Targets whose item never occurs in training (its embedding is never trained).
        "valid_cold_items": int((~valid_targets.is_in(trained.implode())).sum()),
        "test_cold_items": int((~test_targets.is_in(trained.implode())).sum()),
    }
