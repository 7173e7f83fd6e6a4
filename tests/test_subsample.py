"""`--sample-users N`: whole users, their own splits, items re-indexed, always the same sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lossbench.data.prepared import PreparedDataset
from lossbench.data.store import make_synthetic_prepared
from lossbench.data.subsample import sample_users
from lossbench.training.config import build_config
from lossbench.training.loop import train_run


@pytest.fixture(scope="module")
def tiny() -> PreparedDataset:
    return make_synthetic_prepared(n_users=150, n_items=80, mean_length=10.0, seed=3)


def sequences(dataset: PreparedDataset) -> list[list[int]]:
    """Each user's whole chronological sequence: train items, then valid, then test."""
    offsets = dataset.train_offsets
    return [
        [*dataset.train_items[offsets[u] : offsets[u + 1]].tolist(), v, t]
        for u, (v, t) in enumerate(
            zip(dataset.valid_items.tolist(), dataset.test_items.tolist(), strict=True)
        )
    ]


def attributes(dataset: PreparedDataset, item: int) -> list[int]:
    assert dataset.attribute_offsets is not None and dataset.attribute_ids is not None
    start, stop = dataset.attribute_offsets[item], dataset.attribute_offsets[item + 1]
    return dataset.attribute_ids[start:stop].tolist()


def test_kept_users_keep_their_own_split_and_items_are_reindexed(tiny: PreparedDataset) -> None:
    sample = sample_users(tiny, 40)
    assert sample.n_users == 40 and sample.meta["n_users"] == 40
    assert sample.meta["sample"] == {"users": 40, "of_users": 150, "seed": 20240101}
    items = np.concatenate([sample.train_items, sample.valid_items, sample.test_items])
    assert set(items.tolist()) == set(range(1, sample.n_items + 1))  # contiguous 1..n_items
    assert sample.n_items < tiny.n_items
    original = sequences(tiny)
    old_of_new = _old_ids(tiny, sample)  # new id i is the i-th smallest old id kept users touch
    mapped = [[int(old_of_new[i]) for i in seq] for seq in sequences(sample)]
    positions = [original.index(seq) for seq in mapped]  # each kept user is an original user
    assert positions == sorted(positions) and len(set(positions)) == 40  # in their order
    for new_item in (1, sample.n_items // 2, sample.n_items):
        assert attributes(sample, new_item) == attributes(tiny, int(old_of_new[new_item]))
    assert attributes(sample, 0) == []  # padding has none


def _old_ids(full: PreparedDataset, sample: PreparedDataset) -> np.ndarray:
    """(n_items' + 1,) old id of each new id, from the same draw as sample_users makes."""
    rng = np.random.default_rng(sample.meta["sample"]["seed"])
    kept = np.sort(rng.choice(full.n_users, size=sample.n_users, replace=False))
    old = sequences(full)
    used = np.unique(np.concatenate([np.array(old[u]) for u in kept]))
    return np.concatenate([[0], used])


def test_the_same_n_gives_the_same_users_and_all_users_is_a_no_op(tiny: PreparedDataset) -> None:
    first, second = sample_users(tiny, 25), sample_users(tiny, 25)
    assert sequences(first) == sequences(second)
    assert sample_users(tiny, 150) is tiny and sample_users(tiny, 10_000) is tiny
    assert sequences(sample_users(tiny, 25, seed=1)) != sequences(first)


def rows(offsets: np.ndarray, items: np.ndarray, row: int) -> list[int]:
    return items[offsets[row] : offsets[row + 1]].tolist()


def test_gaps_and_missing_targets_of_a_temporal_split_are_kept() -> None:
    """Four hand-made users; 0 means no target (users 2 and 4 have no test target)."""
    dataset = PreparedDataset(
        name="toy",
        n_items=9,
        train_offsets=np.array([0, 2, 3, 5, 6]),
        train_items=np.array([1, 2, 3, 4, 5, 9]),
        valid_items=np.array([6, 0, 7, 8]),
        test_items=np.array([7, 0, 8, 0]),
        gap_offsets=np.array([0, 1, 1, 3, 4]),
        gap_items=np.array([6, 7, 6, 8]),
    )
    kept = np.sort(np.random.default_rng(5).choice(4, size=2, replace=False))
    sample = sample_users(dataset, 2, seed=5)
    touched = [
        item
        for user in kept
        for item in [
            *rows(dataset.train_offsets, dataset.train_items, user),
            *rows(dataset.gap_offsets, dataset.gap_items, user),  # type: ignore[arg-type]
            int(dataset.valid_items[user]),
            int(dataset.test_items[user]),
        ]
        if item > 0
    ]
    new_of_old = {old: new for new, old in enumerate(sorted(set(touched)), start=1)} | {0: 0}
    assert sample.n_items == len(set(touched))
    for row, user in enumerate(kept):
        for offsets, items in (("train_offsets", "train_items"), ("gap_offsets", "gap_items")):
            before = rows(getattr(dataset, offsets), getattr(dataset, items), user)
            after = rows(getattr(sample, offsets), getattr(sample, items), row)
            assert after == [new_of_old[item] for item in before]
        assert sample.valid_items[row] == new_of_old[int(dataset.valid_items[user])]
        assert sample.test_items[row] == new_of_old[int(dataset.test_items[user])]
    assert sample.meta["n_interactions"] == len(sample.train_items) + len(sample.gap_items) + int(
        (sample.test_items > 0).sum()
    )


def test_a_run_trains_on_the_sample(tiny: PreparedDataset, tmp_path: Path) -> None:
    config = build_config(
        overrides={
            "sample_users": 30,
            "max_epochs": 1,
            "batch_size": 16,
            "model_settings": {"hidden_size": 8, "max_len": 10},
        }
    )
    result = train_run(config, tiny, tmp_path)
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["dataset"]["n_users"] == 30 and record["config"]["sample_users"] == 30
    assert record["dataset"]["n_items"] == sample_users(tiny, 30).n_items
    assert 0.0 <= result.metrics["test"]["ndcg@10"] <= 1.0
