"""The prepared format: what `preprocess` writes and what training reads.

Layout of `<data_dir>/<name>/prepared/` (written atomically by `preprocess`):

- `split.parquet`: one row per user, columns
  `user` (int32, 1..n_users, contiguous, sorted), `train_items` (list[int32], chronological,
  every item but the last two), `valid_item` (int32, second-to-last), `test_item` (int32, last).
- `interactions.parquet`: the cleaned long table `user`, `item`, `timestamp` (int64), chronological
  per user (stable tie-break), after the protocol's filters.
- `users.parquet` / `items.parquet`: id maps `user`/`item` (int32) -> `original_id` (utf8).
- `item_attributes.parquet` (only for datasets with attributes): `item` (int32),
  `attributes` (list[int32], ids 1..n_attributes).
- `meta.json`: counts (`n_users`, `n_items`, `n_interactions`, `n_attributes`), statistics,
  the protocol used, the source files with their sha256, `format_version`.

Item ids are 1..n_items; 0 is padding and never a real item. Models may add special ids above
n_items (BERT4Rec's mask token), which are never scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORMAT_VERSION = 1


@dataclass(frozen=True)
class PreparedDataset:
    """A leave-one-out split held as flat numpy arrays (CSR style, row u-1 is user u)."""

    name: str
    n_items: int
    train_offsets: np.ndarray  # (U + 1,) int64: user u's train items are train_items[o[u-1]:o[u]]
    train_items: np.ndarray  # (T,) int64, chronological within each user
    valid_items: np.ndarray  # (U,) int64
    test_items: np.ndarray  # (U,) int64
    meta: dict[str, Any] = field(default_factory=dict)
    # Item attributes (S3Rec): CSR indexed by item id 0..n_items, attribute ids 1..n_attributes.
    attribute_offsets: np.ndarray | None = None  # (n_items + 2,) int64
    attribute_ids: np.ndarray | None = None  # (A,) int64
    n_attributes: int = 0

    @property
    def n_users(self) -> int:
        return len(self.valid_items)

    @property
    def train_lengths(self) -> np.ndarray:
        """(U,) number of training items per user."""
        return np.diff(self.train_offsets)
