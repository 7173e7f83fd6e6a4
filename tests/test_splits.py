"""The temporal split: exact counts on a hand-made fixture, no training after any target's
time, the evaluation sets of users with and without targets, refusals, and coexistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lossbench.data.prepared import load_prepared, prepared_from_frames
from lossbench.data.preprocess import build_tables, preprocess_dataset
from lossbench.data.registry import Protocol
from lossbench.data.sequences import build_sequence_tensors
from lossbench.data.splits import LOO, SplitSpec, split_spec
from lossbench.errors import LossbenchError

TEMPORAL = SplitSpec(kind="temporal", valid_quantile=0.5, test_quantile=0.75)

# 22 interactions at distinct times 1..22 (user, item, time). Thresholds: the times at sorted
# positions floor(0.5 * 21) = 10 and floor(0.75 * 21) = 15, i.e. times 11 and 16.
ROWS = [
    (1, "A", 1), (1, "B", 2), (1, "C", 3), (1, "D", 12), (1, "E", 17),  # train, valid, test
    (2, "A", 4), (2, "B", 5), (2, "C", 18),  # nothing in the validation period: test only
    (3, "B", 6), (3, "C", 7), (3, "D", 8),  # training only
    (4, "A", 13), (4, "E", 14), (4, "F", 19),  # new in the validation period: test only
    (5, "C", 9), (5, "D", 10), (5, "E", 11), (5, "F", 15), (5, "A", 16),  # 11 trains
    (6, "A", 20), (6, "B", 21), (6, "D", 22),  # new in the test period: never evaluated
]  # fmt: skip


def fixture_frame(rows: list[tuple[object, object, int]] = ROWS) -> pl.DataFrame:
    users, items, times = zip(*rows, strict=True)
    return pl.DataFrame(
        {"user": users, "item": items, "timestamp": times, "rating": [None] * len(rows)},
        schema_overrides={"timestamp": pl.Int64, "rating": pl.Float64},
    )


def test_temporal_split_of_the_fixture_is_exact() -> None:
    tables = build_tables(fixture_frame(), Protocol(), split_by=TEMPORAL)
    # Items A..F are ids 1..6.
    assert tables.split.rows() == [
        (1, [1, 2, 3], 4, 5, [4]),
        (2, [1, 2], None, 3, []),
        (3, [2, 3, 4], None, None, []),
        (4, [], None, 6, [1, 5]),
        (5, [3, 4, 5], 6, None, [6, 1]),
        (6, [], None, None, []),
    ]
    report = tables.report
    assert {key: report[key] for key in list(report)[6:]} == {
        "first_time": 1,
        "last_time": 22,
        "valid_threshold": 11,
        "test_threshold": 16,
        "train_interactions": 11,
        "train_users": 4,
        "valid_users": 2,
        "test_users": 3,
        "valid_cold_users": 1,  # user 4
        "test_cold_users": 1,  # user 6
        "valid_cold_items": 1,  # F, user 5's validation target, is never trained on
        "test_cold_items": 1,  # F again (user 4)
    }
    assert tables.interactions.height == len(ROWS)  # the split drops nothing


def test_evaluation_sets_hold_only_users_with_a_target() -> None:
    tables = build_tables(fixture_frame(), Protocol(), split_by=TEMPORAL)
    dataset = prepared_from_frames("fixture", tables.split, {"n_items": 6})
    assert dataset.valid_items.tolist() == [4, 0, 0, 0, 6, 0]  # 0: no target
    tensors = build_sequence_tensors(dataset, max_len=3)
    valid, test = tensors.valid, tensors.test
    assert valid.rows().tolist() == [0, 4]
    assert valid.targets.tolist() == [4, 6]
    assert valid.inputs.tolist() == [[1, 2, 3], [3, 4, 5]]
    assert test.rows().tolist() == [0, 1, 3]
    assert test.targets.tolist() == [5, 3, 6]
    # Test histories: training items, then everything up to the test threshold.
    assert test.inputs.tolist() == [[2, 3, 4], [0, 1, 2], [0, 1, 5]]
    assert test.seen_offsets.tolist() == [0, 4, 6, 8]
    assert test.seen_items.tolist() == [1, 2, 3, 4, 1, 2, 1, 5]
    assert tensors.train_lengths.tolist() == [3, 2, 3, 0, 3, 0]
    assert tensors.item_counts.tolist() == [0, 2, 3, 3, 2, 1, 0]  # A..E in training


def no_training_after_targets(tables_split: pl.DataFrame, interactions: pl.DataFrame) -> None:
    """Every training interaction is earlier than every validation and test target."""
    per_user = interactions.group_by("user", maintain_order=True).agg("item", "timestamp")
    joined = per_user.join(tables_split, on="user")
    n_train = pl.col("train_items").list.len()
    n_gap = pl.col("gap_items").list.len()
    times = joined.select(
        # The split keeps each user's chronological order: training is a prefix.
        prefix=pl.col("item").list.head(n_train) == pl.col("train_items"),
        last_train=pl.col("timestamp").list.head(n_train).list.max(),
        valid_time=pl.when(pl.col("valid_item").is_not_null()).then(
            pl.col("timestamp").list.get(n_train, null_on_oob=True)
        ),
        test_time=pl.when(pl.col("test_item").is_not_null()).then(
            pl.col("timestamp").list.get(n_train + n_gap, null_on_oob=True)
        ),
        valid_is_first_after=pl.col("valid_item").is_null()
        | (pl.col("item").list.get(n_train, null_on_oob=True) == pl.col("valid_item")),
        test_is_after_gap=pl.col("test_item").is_null()
        | (pl.col("item").list.get(n_train + n_gap, null_on_oob=True) == pl.col("test_item")),
    )
    assert times["prefix"].all()
    assert times["valid_is_first_after"].all() and times["test_is_after_gap"].all()
    latest_training = times["last_train"].max()
    assert latest_training < times["valid_time"].min()  # type: ignore[operator]
    assert latest_training < times["test_time"].min()  # type: ignore[operator]


def test_no_training_interaction_is_later_than_any_target() -> None:
    rng = np.random.default_rng(0)
    n = 5000
    raw = pl.DataFrame(
        {
            "user": rng.integers(1, 300, n),
            "item": rng.integers(1, 400, n),
            "timestamp": rng.integers(0, 1000, n),  # many ties across and within users
            "rating": [None] * n,
        },
        schema_overrides={"rating": pl.Float64},
    )
    for spec in (TEMPORAL, SplitSpec(kind="temporal")):
        tables = build_tables(raw, Protocol(), split_by=spec)
        assert tables.report["valid_users"] > 20 and tables.report["test_users"] > 20
        no_training_after_targets(tables.split, tables.interactions)


def test_leave_one_out_is_unchanged_and_every_user_has_both_targets() -> None:
    tables = build_tables(fixture_frame(), Protocol(), split_by=LOO)
    assert tables.split.row(0) == (1, [1, 2, 3], 4, 5, [4])
    assert tables.split["valid_item"].null_count() == 0
    assert tables.split["test_item"].null_count() == 0
    assert "valid_threshold" not in tables.report


def test_bad_quantiles_and_empty_periods_are_one_line() -> None:
    with pytest.raises(LossbenchError, match="must be below --test-quantile"):
        split_spec("temporal", 0.9, 0.8)
    with pytest.raises(LossbenchError, match="invalid split"):
        split_spec("random", 0.8, 0.9)
    rows = [(1, "A", 1), (1, "B", 1), (1, "C", 1), (2, "A", 1), (2, "B", 1), (2, "C", 2)]
    with pytest.raises(LossbenchError, match="no valid target.*--valid-quantile"):
        build_tables(fixture_frame(rows), Protocol(), split_by=TEMPORAL)


def test_untimed_datasets_are_refused(tmp_path: Path) -> None:
    for name in ("lastfm", "synthetic", "beauty"):
        with pytest.raises(LossbenchError, match=f"dataset {name} has no timestamps"):
            preprocess_dataset(tmp_path, name, split=TEMPORAL)


def test_both_splits_coexist_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A timed dataset prepared both ways: two folders, each loaded by its own split."""
    from lossbench.data import preprocess
    from lossbench.data.registry import DatasetEntry, RemoteFile

    entry = DatasetEntry(
        name="fixture",
        source="test",
        format="movielens-csv",
        file=RemoteFile(url="https://example.org/ratings.csv", sha256="0" * 64),
    )
    monkeypatch.setattr(preprocess, "is_downloaded", lambda data_dir, entry: True)
    sources = {"sha256": {"r": "0"}, "read": {"raw/r": "0"}}
    monkeypatch.setattr(preprocess, "verified_sources", lambda data_dir, entry: sources)
    monkeypatch.setattr(preprocess, "read_interactions", lambda path, format: fixture_frame())
    monkeypatch.setattr(preprocess, "is_streamed", lambda format: False)  # read the frame above
    monkeypatch.setattr(preprocess, "interactions_path", lambda data_dir, entry: tmp_path)
    registry = {"fixture": entry}
    loo = preprocess_dataset(tmp_path, "fixture", registry=registry)
    temporal = preprocess_dataset(tmp_path, "fixture", registry=registry, split=TEMPORAL)
    assert loo.path.name == "prepared"
    assert temporal.path.name == "prepared-temporal-v0.5-t0.75"
    assert preprocess_dataset(tmp_path, "fixture", registry=registry).skipped
    assert load_prepared(tmp_path, "fixture").test_items.tolist() == [5, 3, 4, 6, 1, 4]
    assert load_prepared(tmp_path, "fixture", TEMPORAL).test_items.tolist() == [5, 3, 0, 6, 0, 0]
    assert temporal.meta["split"] == TEMPORAL.model_dump()
    assert loo.meta["split"] == {"kind": "loo"}
    with pytest.raises(LossbenchError, match="--split temporal --valid-quantile 0.8"):
        load_prepared(tmp_path, "fixture", SplitSpec(kind="temporal"))


def timed_raw(n: int = 6000, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "user": rng.integers(1, 200, n),
            "item": rng.integers(1, 80, n),
            "timestamp": rng.integers(0, 10_000, n),
            "rating": [None] * n,
        },
        schema_overrides={"rating": pl.Float64},
    )


def test_a_temporal_run_evaluates_and_records_only_users_with_targets(tmp_path: Path) -> None:
    import json

    from lossbench.compare.report.results import run_row
    from lossbench.training.config import build_config
    from lossbench.training.loop import train_run

    spec = SplitSpec(kind="temporal")
    tables = build_tables(timed_raw(), Protocol(), split_by=spec)
    meta = {"n_items": tables.items.height, "split": spec.identity()}
    dataset = prepared_from_frames("timed", tables.split, meta)
    overrides = {
        "loss": "bce",
        "split": "temporal",
        "max_epochs": 2,
        "batch_size": 64,
        "negatives_unseen": False,
        "model_settings": {"hidden_size": 16, "max_len": 20},
    }
    result = train_run(build_config(overrides=overrides), dataset, tmp_path)
    ranks = pl.read_parquet(tmp_path / "test_ranks.parquet")
    with_test = tables.split.filter(pl.col("test_item").is_not_null())
    assert ranks["user"].to_list() == with_test["user"].to_list()
    assert ranks["target"].to_list() == with_test["test_item"].to_list()
    assert 0 < ranks.height < dataset.n_users
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["dataset"]["split"] == spec.model_dump()
    assert record["dataset"]["test_users"] == ranks.height
    assert result.metrics["split"] == "temporal 0.8/0.9"
    assert run_row(tmp_path)["split"] == "temporal 0.8/0.9"
    with pytest.raises(LossbenchError, match="was prepared with split"):
        train_run(build_config(overrides={**overrides, "split": "loo"}), dataset, tmp_path)


def test_repeated_target_shares_count_only_users_with_a_target() -> None:
    from lossbench.data.repeats import repeated_targets

    rows = [
        (2, "A", 18) if (user, time) == (2, 18) else (user, item, time) for user, item, time in ROWS
    ]
    tables = build_tables(fixture_frame(rows), Protocol(dedup=False), split_by=TEMPORAL)
    dataset = prepared_from_frames("fixture", tables.split, {"n_items": 6})
    # User 2's test target A is in its history; 1 of the 3 test users, none of the 2 valid.
    assert repeated_targets(dataset) == {
        "valid": {"users": 0, "share": 0.0},
        "test": {"users": 1, "share": 1 / 3},
    }
