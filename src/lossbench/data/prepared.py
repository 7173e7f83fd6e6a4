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
  the validation and test targets already in the user's history (`repeated_targets`, see
  `repeats.py`), the protocol used, the source files with their sha256, `format_version`.

Item ids are 1..n_items; 0 is padding and never a real item. Models may add special ids above
n_items (BERT4Rec's mask token), which are never scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lossbench.errors import LossbenchError

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


def prepared_dir(data_dir: Path, name: str) -> Path:
    return data_dir / name / "prepared"


def read_meta(folder: Path) -> dict[str, Any] | None:
    """The `meta.json` of a prepared folder, or None when it is missing or unreadable."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def is_prepared(data_dir: Path, name: str) -> bool:
    return read_meta(prepared_dir(data_dir, name)) is not None


def prepared_from_frames(
    name: str,
    split: pl.DataFrame,
    meta: dict[str, Any],
    item_attributes: pl.DataFrame | None = None,
) -> PreparedDataset:
    """Flat numpy arrays from the `split` (and `item_attributes`) tables of the format."""
    lengths = split["train_items"].list.len().to_numpy().astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    train_items = split["train_items"].explode().drop_nulls().to_numpy().astype(np.int64)
    n_items = int(meta["n_items"])
    attribute_offsets = attribute_ids = None
    if item_attributes is not None:
        # Row i of the CSR is item i; row 0 (padding) is empty. (n_items + 2,) offsets.
        counts = np.zeros(n_items + 1, dtype=np.int64)
        items = item_attributes["item"].to_numpy().astype(np.int64)
        counts[items] = item_attributes["attributes"].list.len().to_numpy()
        attribute_offsets = np.zeros(n_items + 2, dtype=np.int64)
        np.cumsum(counts, out=attribute_offsets[1:])
        ordered = item_attributes.sort("item")["attributes"].explode().drop_nulls()
        attribute_ids = ordered.to_numpy().astype(np.int64)
    return PreparedDataset(
        name=name,
        n_items=n_items,
        train_offsets=offsets,
        train_items=train_items,
        valid_items=split["valid_item"].to_numpy().astype(np.int64),
        test_items=split["test_item"].to_numpy().astype(np.int64),
        meta=meta,
        attribute_offsets=attribute_offsets,
        attribute_ids=attribute_ids,
        n_attributes=int(meta.get("n_attributes", 0)),
    )


def load_prepared(data_dir: Path, name: str) -> PreparedDataset:
    """Read `<data_dir>/<name>/prepared` (written by `lossbench preprocess`)."""
    folder = prepared_dir(data_dir, name)
    meta = read_meta(folder)
    if meta is None:
        raise LossbenchError(
            f"dataset {name} is not prepared in {data_dir}: run `lossbench preprocess {name}`"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise LossbenchError(
            f"dataset {name} was prepared by another lossbench version: "
            f"run `lossbench preprocess {name} --force`"
        )
    try:
        split = pl.read_parquet(folder / "split.parquet").sort("user")
        attributes_file = folder / "item_attributes.parquet"
        attributes = pl.read_parquet(attributes_file) if attributes_file.exists() else None
    except (OSError, pl.exceptions.PolarsError) as error:
        raise LossbenchError(
            f"prepared files of {name} are unreadable ({error}); "
            f"run `lossbench preprocess {name} --force`"
        ) from None
    return prepared_from_frames(name, split, meta, attributes)


def ensure_prepared(data_dir: Path, name: str) -> PreparedDataset:
    """Load `name`, preparing `synthetic` on the fly (it needs no download)."""
    if not is_prepared(data_dir, name):
        from lossbench.data.download import is_downloaded
        from lossbench.data.preprocess import preprocess_dataset
        from lossbench.data.registry import get_dataset

        entry = get_dataset(name)
        if entry.generator is not None:
            preprocess_dataset(data_dir, name)
        elif not is_downloaded(data_dir, entry):
            raise LossbenchError(
                f"dataset {name} is not downloaded or prepared: run `lossbench download {name}` "
                f"then `lossbench preprocess {name}`"
            )
        else:
            raise LossbenchError(
                f"dataset {name} is not prepared: run `lossbench preprocess {name}`"
            )
    return load_prepared(data_dir, name)
