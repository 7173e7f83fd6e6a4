"""The prepared format: what `preprocess` writes and what training reads.

Layout of `<data_dir>/<name>/prepared/` (leave-one-out) or
`<data_dir>/<name>/prepared-temporal-v<valid quantile>-t<test quantile>/` (temporal split),
each written atomically by `preprocess`, so both splits of a dataset coexist:

- `split.parquet`: one row per user, columns
  `user` (int32, 1..n_users, contiguous, sorted), `train_items` (list[int32], chronological),
  `valid_item` and `test_item` (int32, null where the user has no such target), `gap_items`
  (list[int32]: after the training items, before the test target; see `splits.py`).
- `interactions.parquet`: the cleaned long table `user`, `item`, `timestamp` (int64), chronological
  per user (stable tie-break), after the protocol's filters.
- `users.parquet` / `items.parquet`: id maps `user`/`item` (int32) -> `original_id` (utf8).
- `item_attributes.parquet` (only for datasets with attributes): `item` (int32),
  `attributes` (list[int32], ids 1..n_attributes).
- `meta.json`: counts (`n_users`, `n_items`, `n_interactions`, `n_attributes`), statistics,
  the validation and test targets already in the user's history (`repeated_targets`, see
  `repeats.py`), the protocol and the split used, the sha256 of the source bytes read,
  `format_version`, and `files`: the size and sha256 of every other file of the folder (sizes
  are checked on every load, hashes by `preprocess` and `lossbench verify`).

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

from lossbench.data.integrity import damage
from lossbench.data.splits import LOO, SplitSpec
from lossbench.errors import LossbenchError

FORMAT_VERSION = 3  # 3: `files` records each file's size and sha256


@dataclass(frozen=True)
class OriginalIds:
    """The ids of the source file, as strings: `users[u - 1]` is user u's, `items[i - 1]` item
    i's (from `users.parquet` / `items.parquet`)."""

    users: pl.Series  # (U,) String
    items: pl.Series  # (n_items,) String

    @classmethod
    def from_maps(cls, users: pl.DataFrame, items: pl.DataFrame) -> OriginalIds:
        """From the id map tables `user`/`item` -> `original_id` (ids 1..n, any order)."""
        return cls(
            users.sort("user")["original_id"].cast(pl.String),
            items.sort("item")["original_id"].cast(pl.String),
        )


@dataclass(frozen=True)
class PreparedDataset:
    """A split held as flat numpy arrays (CSR style, row u-1 is user u)."""

    name: str
    n_items: int
    train_offsets: np.ndarray  # (U + 1,) int64: user u's train items are train_items[o[u-1]:o[u]]
    train_items: np.ndarray  # (T,) int64, chronological within each user
    valid_items: np.ndarray  # (U,) int64, 0 = no validation target
    test_items: np.ndarray  # (U,) int64, 0 = no test target
    meta: dict[str, Any] = field(default_factory=dict)
    # Items between the training items and the test target (CSR like train_*); None means
    # leave-one-out's: the validation item alone.
    gap_offsets: np.ndarray | None = None  # (U + 1,) int64
    gap_items: np.ndarray | None = None  # (G,) int64
    # Item attributes (S3Rec): CSR indexed by item id 0..n_items, attribute ids 1..n_attributes.
    attribute_offsets: np.ndarray | None = None  # (n_items + 2,) int64
    attribute_ids: np.ndarray | None = None  # (A,) int64
    n_attributes: int = 0
    original_ids: OriginalIds | None = None  # None: built in memory without id maps

    @property
    def n_users(self) -> int:
        return len(self.valid_items)

    @property
    def train_lengths(self) -> np.ndarray:
        """(U,) number of training items per user."""
        return np.diff(self.train_offsets)

    def gap(self) -> tuple[np.ndarray, np.ndarray]:
        """(U + 1,) offsets and (G,) items of the part of each test history after training."""
        if self.gap_offsets is not None and self.gap_items is not None:
            return self.gap_offsets, self.gap_items
        return np.arange(self.n_users + 1, dtype=np.int64), self.valid_items.astype(np.int64)


def prepared_dir(data_dir: Path, name: str, split: SplitSpec = LOO) -> Path:
    return data_dir / name / f"prepared{split.folder_suffix}"


def preprocess_command(name: str, split: SplitSpec = LOO) -> str:
    """The command that prepares `name` with `split`."""
    if split.kind == "loo":
        return f"lossbench preprocess {name}"
    return (
        f"lossbench preprocess {name} --split temporal --valid-quantile "
        f"{split.valid_quantile:g} --test-quantile {split.test_quantile:g}"
    )


def read_meta(folder: Path) -> dict[str, Any] | None:
    """The `meta.json` of a prepared folder, or None when it is missing or unreadable."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def is_prepared(data_dir: Path, name: str, split: SplitSpec = LOO) -> bool:
    return read_meta(prepared_dir(data_dir, name, split)) is not None


def prepared_problems(
    data_dir: Path, name: str, meta: dict[str, Any], *, hashes: bool, split: SplitSpec = LOO
) -> list[str]:
    """Which files of the prepared folder are missing or differ from `meta`'s records."""
    folder = prepared_dir(data_dir, name, split)
    records = meta.get("files")
    if not isinstance(records, dict) or not records:
        return [f"{folder / 'meta.json'} records no files (prepared by another lossbench version)"]
    problems = []
    for file_name, record in sorted(records.items()):
        path = folder / file_name
        label = str(path.relative_to(data_dir)) if path.is_relative_to(data_dir) else str(path)
        problems.append(damage(path, record["size"], record["sha256"], hashes=hashes, label=label))
    return [problem for problem in problems if problem is not None]


def prepared_from_frames(
    name: str,
    split: pl.DataFrame,
    meta: dict[str, Any],
    item_attributes: pl.DataFrame | None = None,
    original_ids: OriginalIds | None = None,
) -> PreparedDataset:
    """Flat numpy arrays from the `split` (and `item_attributes`) tables of the format."""
    lengths = split["train_items"].list.len().to_numpy().astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    train_items = split["train_items"].explode().drop_nulls().to_numpy().astype(np.int64)
    gap_lengths = split["gap_items"].list.len().to_numpy().astype(np.int64)
    gap_offsets = np.zeros(len(gap_lengths) + 1, dtype=np.int64)
    np.cumsum(gap_lengths, out=gap_offsets[1:])
    gap_items = split["gap_items"].explode().drop_nulls().to_numpy().astype(np.int64)
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
        valid_items=split["valid_item"].fill_null(0).to_numpy().astype(np.int64),
        test_items=split["test_item"].fill_null(0).to_numpy().astype(np.int64),
        meta=meta,
        gap_offsets=gap_offsets,
        gap_items=gap_items,
        attribute_offsets=attribute_offsets,
        attribute_ids=attribute_ids,
        n_attributes=int(meta.get("n_attributes", 0)),
        original_ids=original_ids,
    )


def load_prepared(data_dir: Path, name: str, split: SplitSpec = LOO) -> PreparedDataset:
    """Read `name`'s prepared folder of `split` (written by `lossbench preprocess`)."""
    folder = prepared_dir(data_dir, name, split)
    meta = read_meta(folder)
    command = preprocess_command(name, split)
    if meta is None:
        raise LossbenchError(
            f"dataset {name} is not prepared ({split.label} split) in {data_dir}: run `{command}`"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise LossbenchError(
            f"dataset {name} was prepared by another lossbench version: run `{command} --force`"
        )
    if problems := prepared_problems(data_dir, name, meta, hashes=False, split=split):
        raise LossbenchError(
            f"dataset {name} is damaged: {'; '.join(problems)}; run `{command} --force`"
        )
    try:
        table = pl.read_parquet(folder / "split.parquet").sort("user")
        attributes_file = folder / "item_attributes.parquet"
        attributes = pl.read_parquet(attributes_file) if attributes_file.exists() else None
        original_ids = OriginalIds.from_maps(
            pl.read_parquet(folder / "users.parquet"), pl.read_parquet(folder / "items.parquet")
        )
    except (OSError, pl.exceptions.PolarsError) as error:
        raise LossbenchError(
            f"prepared files of {name} are unreadable ({error}); run `{command} --force`"
        ) from None
    return prepared_from_frames(name, table, meta, attributes, original_ids)
