"""Repeat consumption: validation and test targets that are already in the user's history.

With seen items excluded from the ranking, such a target follows the `--seen-targets` rule
(not found, or ranked among the unseen items), so their share says how much the rule matters
on a dataset. `preprocess` stores it in `meta.json` under `repeated_targets`:
`{"valid": {"users": int, "share": float}, "test": {...}}` (shares of the users with such a
target). The validation history is the training items; the test history is the training items
and the items between them and the test target (leave-one-out: the validation item).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lossbench.data.prepared import PreparedDataset, prepared_dir, read_meta
from lossbench.data.splits import LOO, SplitSpec

META_KEY = "repeated_targets"
SPLITS = ("valid", "test")


def in_history(offsets: np.ndarray, items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(U,) bool: user u's target is among items[offsets[u]:offsets[u + 1]] (CSR, no loop)."""
    owners = np.repeat(np.arange(len(targets)), np.diff(offsets))  # (T,) user of each item
    repeated = np.zeros(len(targets), dtype=bool)
    repeated[owners[items == targets[owners]]] = True
    return repeated


def repeated_target_users(dataset: PreparedDataset) -> dict[str, np.ndarray]:
    """Per split, the (U,) bool mask of users whose target is already in their history
    (never a user without a target: its 0 is no item)."""
    valid = in_history(dataset.train_offsets, dataset.train_items, dataset.valid_items)
    test = in_history(dataset.train_offsets, dataset.train_items, dataset.test_items)
    gap_offsets, gap_items = dataset.gap()
    return {"valid": valid, "test": test | in_history(gap_offsets, gap_items, dataset.test_items)}


def repeated_targets(dataset: PreparedDataset) -> dict[str, dict[str, Any]]:
    """The `repeated_targets` entry of `meta.json`: count and share of users per split."""
    with_target = {"valid": dataset.valid_items > 0, "test": dataset.test_items > 0}
    return {
        split: {
            "users": int(mask.sum()),
            "share": float(mask.sum()) / max(int(with_target[split].sum()), 1),
        }
        for split, mask in repeated_target_users(dataset).items()
    }


def stored_or_computed(
    data_dir: Path,
    name: str,
    load: Callable[[str], PreparedDataset],
    split: SplitSpec = LOO,
) -> dict[str, dict[str, Any]] | None:
    """The prepared metadata's entry; computed from the data when the preparation predates
    it. None when `name` is not prepared: a synthetic dataset is prepared by `load` first."""
    meta = read_meta(prepared_dir(data_dir, name, split))
    if meta is not None and isinstance(meta.get(META_KEY), dict):
        return dict(meta[META_KEY])
    if meta is None:
        from lossbench.data.registry import get_dataset

        if get_dataset(name, data_dir=data_dir).generator is None:
            return None
    return repeated_targets(load(name))


def share_text(entry: dict[str, dict[str, Any]] | None) -> str:
    """'valid 4.6%, test 6.7%' (shares of users), or '' when unknown."""
    if not entry:
        return ""
    return ", ".join(f"{split} {entry[split]['share']:.1%}" for split in SPLITS if split in entry)


def repeat_notice(name: str, entry: dict[str, dict[str, Any]] | None, rule_effect: str) -> str:
    """One line for a run on a dataset with repeated targets ('' when it has none)."""
    if not entry or not any(entry[split]["users"] for split in SPLITS if split in entry):
        return ""
    valid, test = entry["valid"], entry["test"]
    return (
        f"{name}: {test['users']:,} test users ({test['share']:.1%}) and {valid['users']:,} "
        f"validation users ({valid['share']:.1%}) have a target already in their history; "
        f"{rule_effect}"
    )
