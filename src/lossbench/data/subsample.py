"""A fixed, seeded subsample of a prepared dataset's users (`--sample-users N`).

Whole users are kept with their own split (training items, the items between training and
the test target, the validation and test targets), so no user's history is cut. Items are
re-indexed to those the kept users touch (1..n_items' in the original
order): an item no kept user has would be an untrained row scored against every test user.
The sample depends only on N and a fixed seed, never on a run's seed, so every loss and seed
of a comparison trains and is tested on the same users (the paired test needs that).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from lossbench.data.prepared import ID_DTYPE, OriginalIds, PreparedDataset

SAMPLE_SEED = 20240101  # fixed: the same N always keeps the same users


def sample_users(
    dataset: PreparedDataset, n_users: int, seed: int = SAMPLE_SEED
) -> PreparedDataset:
    """`dataset` restricted to `n_users` users drawn without replacement (all when it has no
    more); users keep their relative order and are numbered 1..n_users again."""
    if n_users >= dataset.n_users:
        return dataset
    rng = np.random.default_rng(seed)
    kept = np.sort(rng.choice(dataset.n_users, size=n_users, replace=False))  # (n,) row indices
    offsets, train = _kept_rows(dataset.train_offsets, dataset.train_items, kept)
    gap_offsets, gap = _kept_rows(*dataset.gap(), kept)
    valid, test = dataset.valid_items[kept], dataset.test_items[kept]  # 0: no such target
    everything = np.concatenate([train, gap, valid, test])
    used = np.unique(everything[everything > 0])  # (n_items',) sorted old ids

    def renumber(items: np.ndarray) -> np.ndarray:
        return np.where(items > 0, np.searchsorted(used, items) + 1, 0).astype(ID_DTYPE)

    attribute_offsets, attribute_ids = _kept_attributes(dataset, used)
    n_interactions = len(train) + len(gap) + int((test > 0).sum())
    meta = {
        **dataset.meta,
        "n_users": n_users,
        "n_items": len(used),
        "n_interactions": n_interactions,
        "density": n_interactions / (n_users * len(used)),
        "sample": {"users": n_users, "of_users": dataset.n_users, "seed": seed},
    }
    return replace(
        dataset,
        n_items=len(used),
        train_offsets=offsets,
        train_items=renumber(train),
        valid_items=renumber(valid),
        test_items=renumber(test),
        gap_offsets=gap_offsets,
        gap_items=renumber(gap),
        meta=meta,
        attribute_offsets=attribute_offsets,
        attribute_ids=attribute_ids,
        original_ids=_kept_ids(dataset.original_ids, kept, used),
    )


def _kept_ids(
    original: OriginalIds | None, kept: np.ndarray, used: np.ndarray
) -> OriginalIds | None:
    """The original ids of the kept users (rows `kept`) and items (old ids `used`)."""
    if original is None:
        return None
    return OriginalIds(original.users.gather(kept), original.items.gather(used - 1))


def _kept_rows(
    offsets: np.ndarray, items: np.ndarray, kept: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The CSR rows `kept` of (offsets, items) as a new CSR, in the order of `kept`."""
    starts, lengths = offsets[kept], np.diff(offsets)[kept]
    new_offsets = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    # Position j of the new flat array comes from starts[row(j)] + (j - new_offsets[row(j)]).
    rows = np.repeat(np.arange(len(kept)), lengths)
    source = starts[rows] + np.arange(new_offsets[-1]) - new_offsets[rows]
    return new_offsets, items[source]


def _kept_attributes(
    dataset: PreparedDataset, used: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The attribute CSR of the kept items in their new order; row 0 (padding) stays empty."""
    if dataset.attribute_offsets is None or dataset.attribute_ids is None:
        return None, None
    old = dataset.attribute_offsets
    counts = np.zeros(len(used) + 1, dtype=np.int64)
    counts[1:] = old[used + 1] - old[used]
    offsets = np.zeros(len(used) + 2, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    rows = np.repeat(np.arange(len(used)), counts[1:])  # (A',) new item index - 1
    source = old[used][rows] + np.arange(offsets[-1]) - offsets[1:-1][rows]
    return offsets, dataset.attribute_ids[source]
