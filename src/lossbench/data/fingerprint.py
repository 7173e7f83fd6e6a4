"""What a prepared dataset is, in a few numbers: users, items, interactions and a hash of the
split, so two papers' "Beauty" (22,363 or 40,226 users) can never be taken for one another.

`meta.json` holds it under `dataset_fingerprint`; every run's `config.json` records it, reports
show it, and `reproduce` refuses a dataset whose counts differ from the published variant's.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import polars as pl

META_KEY = "dataset_fingerprint"
# How interactions with equal timestamps are ordered (see docs/protocol.md): the file's own
# row order decides, and the item id decides what the file does not order.
TIE_RULE = "file order, then item id"


def split_sha256(split: pl.DataFrame) -> str:
    """sha256 of the split's content: per user (sorted), the train items, gap items and the
    two targets, as little-endian int64 (independent of the parquet writer's bytes)."""
    table = split.sort("user")
    digest = hashlib.sha256()
    for column in ("train_items", "gap_items"):
        lengths = table[column].list.len().fill_null(0).to_numpy().astype("<i8")
        values = table[column].explode().drop_nulls().to_numpy().astype("<i8")
        digest.update(column.encode())
        digest.update(np.ascontiguousarray(lengths).tobytes())
        digest.update(np.ascontiguousarray(values).tobytes())
    for column in ("user", "valid_item", "test_item"):
        digest.update(column.encode())
        digest.update(table[column].fill_null(0).to_numpy().astype("<i8").tobytes())
    return digest.hexdigest()


def fingerprint(
    n_users: int, n_items: int, n_interactions: int, split: pl.DataFrame
) -> dict[str, Any]:
    return {
        "users": n_users,
        "items": n_items,
        "interactions": n_interactions,
        "split_sha256": split_sha256(split),
    }


def describe(record: dict[str, Any] | None) -> str:
    """'22,363 users, 12,101 items, 198,502 interactions, split 1a2b3c4d' (or 'unknown')."""
    if not record:
        return "unknown (prepared before fingerprints: run `lossbench preprocess NAME --force`)"
    return (
        f"{record['users']:,} users, {record['items']:,} items, "
        f"{record['interactions']:,} interactions, split {str(record['split_sha256'])[:8]}"
    )
