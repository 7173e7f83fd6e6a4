"""The synthetic dataset: deterministic, sized as asked, with learnable sequential structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lossbench.data.prepared import PreparedDataset, load_prepared
from lossbench.data.registry import get_dataset
from lossbench.data.store import ensure_prepared, make_synthetic_prepared
from lossbench.errors import LossbenchError

SMALL = {"n_users": 400, "n_items": 120, "mean_length": 15.0, "n_attributes": 12}


def histories(dataset: PreparedDataset) -> list[np.ndarray]:
    """Per user: train items + valid item (the history the test target follows)."""
    o = dataset.train_offsets
    return [
        np.append(dataset.train_items[o[u] : o[u + 1]], dataset.valid_items[u])
        for u in range(dataset.n_users)
    ]


def test_deterministic_per_seed() -> None:
    first, again = (
        make_synthetic_prepared(**SMALL, seed=3),
        make_synthetic_prepared(**SMALL, seed=3),
    )
    other = make_synthetic_prepared(**SMALL, seed=4)
    for field in ("train_offsets", "train_items", "valid_items", "test_items", "attribute_ids"):
        assert np.array_equal(getattr(first, field), getattr(again, field))
    assert not np.array_equal(first.train_items, other.train_items)


def test_sizes_and_invariants() -> None:
    dataset = make_synthetic_prepared(**SMALL, min_length=5)
    assert dataset.n_users == 400
    assert dataset.n_items <= 120
    assert dataset.train_lengths.min() >= 3  # min_length 5 minus valid and test
    assert 10 < dataset.meta["mean_length"] < 20
    for history, test in zip(histories(dataset), dataset.test_items, strict=True):
        sequence = np.append(history, test)
        assert len(np.unique(sequence)) == len(sequence)  # no repeats within a user
        assert sequence.min() >= 1 and sequence.max() <= dataset.n_items
    assert dataset.attribute_offsets is not None and dataset.attribute_ids is not None
    assert len(dataset.attribute_offsets) == dataset.n_items + 2
    assert dataset.attribute_offsets[1] == 0  # row 0 is padding: no attributes
    assert 1 <= dataset.attribute_ids.min() and dataset.attribute_ids.max() == dataset.n_attributes
    assert dataset.n_attributes <= 12


def test_last_item_predicts_the_next_far_better_than_popularity() -> None:
    dataset = make_synthetic_prepared(**SMALL)
    n = dataset.n_items + 1
    transitions, popularity = np.zeros((n, n)), np.zeros(n)
    for history in histories(dataset):
        np.add.at(transitions, (history[:-1], history[1:]), 1)
        np.add.at(popularity, history, 1)
    bigram_hits = popular_hits = 0
    for history, test in zip(histories(dataset), dataset.test_items, strict=True):
        for scores, is_bigram in (
            (transitions[history[-1]] + 1e-6 * popularity, True),
            (popularity.copy(), False),
        ):
            scores[history], scores[0] = -1, -1  # seen items and padding are excluded
            hit = test in np.argsort(-scores)[:10]
            bigram_hits += hit and is_bigram
            popular_hits += hit and not is_bigram
    assert bigram_hits / dataset.n_users > 0.5
    assert popular_hits / dataset.n_users < 0.3
    assert bigram_hits > 2 * popular_hits


def test_attributes_follow_topics() -> None:
    dataset = make_synthetic_prepared(**SMALL)
    assert dataset.attribute_offsets is not None and dataset.attribute_ids is not None

    # Consecutive items in sequences share a topic mostly, so they share attributes often.
    def attributes(item: int) -> set[int]:
        o = dataset.attribute_offsets
        return set(dataset.attribute_ids[o[item] : o[item + 1]].tolist())  # type: ignore[index]

    pairs = [(h[i], h[i + 1]) for h in histories(dataset) for i in range(len(h) - 1)]
    shared = np.mean([bool(attributes(a) & attributes(b)) for a, b in pairs])
    rng = np.random.default_rng(0)
    random_pairs = rng.integers(1, dataset.n_items + 1, size=(len(pairs), 2))
    baseline = np.mean([bool(attributes(a) & attributes(b)) for a, b in random_pairs])
    assert shared > 2 * baseline


def test_ensure_prepared_writes_synthetic_like_the_in_memory_one(tmp_path: Path) -> None:
    dataset = ensure_prepared(tmp_path, "synthetic")
    assert (tmp_path / "synthetic" / "prepared" / "meta.json").is_file()
    generator = get_dataset("synthetic").generator
    assert generator is not None
    in_memory = make_synthetic_prepared(**generator.model_dump())
    for field in ("train_offsets", "train_items", "valid_items", "test_items", "attribute_offsets"):
        assert np.array_equal(getattr(dataset, field), getattr(in_memory, field))
    assert dataset.n_items == in_memory.n_items and dataset.n_attributes == in_memory.n_attributes
    assert load_prepared(tmp_path, "synthetic").meta["n_users"] == generator.n_users


def test_ensure_prepared_of_a_real_dataset_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(
        LossbenchError, match=r"run `lossbench download lastfm` \(it is prepared on first use\)"
    ):
        ensure_prepared(tmp_path, "lastfm")
    with pytest.raises(LossbenchError, match="run `lossbench preprocess lastfm`"):
        load_prepared(tmp_path, "lastfm")
