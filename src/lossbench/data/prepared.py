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
- `train_offsets.npy`, `train_items.npy`, `valid_items.npy`, `test_items.npy`,
  `gap_offsets.npy`, `gap_items.npy`: the split as flat arrays (`PreparedDataset`), item ids
  int32 and CSR offsets int64, memory-mapped when training reads them (format 4; a folder of
  format 3 lacks them and is read from `split.parquet` into memory).
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

FORMAT_VERSION = 4  # 3: `files` records each file's size and sha256; 4: the `.npy` arrays
READABLE_VERSIONS = (3, 4)  # 3 is read from split.parquet, into memory
# Item ids (1..n_items, 0 padding) fit int32 for any catalogue up to 2^31 - 1 items; offsets
# count interactions, which may not.
ID_DTYPE = np.int32
OFFSET_DTYPE = np.int64
# The `.npy` arrays of format 4: name -> dtype.
ARRAY_FILES: dict[str, type[np.integer]] = {
    "train_offsets": OFFSET_DTYPE,
    "train_items": ID_DTYPE,
    "valid_items": ID_DTYPE,
    "test_items": ID_DTYPE,
    "gap_offsets": OFFSET_DTYPE,
    "gap_items": ID_DTYPE,
}


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
    """A split held as flat numpy arrays (CSR style, row u-1 is user u). Read from a prepared
    folder, the arrays are memory-mapped (copy on write): pages are read when used and the
    system may drop them again, so a run holds what it touches, not the whole file."""

    name: str
    n_items: int
    train_offsets: np.ndarray  # (U + 1,) int64: user u's train items are train_items[o[u-1]:o[u]]
    train_items: np.ndarray  # (T,) int32 (any integer type), chronological within each user
    valid_items: np.ndarray  # (U,) int32, 0 = no validation target
    test_items: np.ndarray  # (U,) int32, 0 = no test target
    meta: dict[str, Any] = field(default_factory=dict)
    # Items between the training items and the test target (CSR like train_*); None means
    # leave-one-out's: the validation item alone.
    gap_offsets: np.ndarray | None = None  # (U + 1,) int64
    gap_items: np.ndarray | None = None  # (G,) int32
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
        return np.arange(self.n_users + 1, dtype=OFFSET_DTYPE), np.asarray(self.valid_items)


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


def csr_offsets(lengths: np.ndarray) -> np.ndarray:
    """(U + 1,) int64 offsets of CSR rows of `lengths` (U,)."""
    offsets = np.zeros(len(lengths) + 1, dtype=OFFSET_DTYPE)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def split_array(split: pl.DataFrame, name: str) -> np.ndarray:
    """One array of `ARRAY_FILES` from the `split` table (rows sorted by user)."""
    if name in ("train_offsets", "gap_offsets"):
        lists = split[name.replace("_offsets", "_items")]
        return csr_offsets(lists.list.len().to_numpy())
    if name in ("train_items", "gap_items"):
        return split[name].explode().drop_nulls().to_numpy().astype(ID_DTYPE)
    target = "valid_item" if name == "valid_items" else "test_item"
    return split[target].fill_null(0).to_numpy().astype(ID_DTYPE)


def prepared_from_frames(
    name: str,
    split: pl.DataFrame,
    meta: dict[str, Any],
    item_attributes: pl.DataFrame | None = None,
    original_ids: OriginalIds | None = None,
) -> PreparedDataset:
    """Flat numpy arrays from the `split` (and `item_attributes`) tables of the format."""
    arrays = {array: split_array(split, array) for array in ARRAY_FILES}
    return prepared_from_arrays(name, arrays, meta, item_attributes, original_ids)


def prepared_from_arrays(
    name: str,
    arrays: dict[str, np.ndarray],
    meta: dict[str, Any],
    item_attributes: pl.DataFrame | None = None,
    original_ids: OriginalIds | None = None,
) -> PreparedDataset:
    """The dataset of the arrays of `ARRAY_FILES` (and the `item_attributes` table)."""
    n_items = int(meta["n_items"])
    attribute_offsets = attribute_ids = None
    if item_attributes is not None:
        # Row i of the CSR is item i; row 0 (padding) is empty. (n_items + 2,) offsets.
        counts = np.zeros(n_items + 1, dtype=np.int64)
        items = item_attributes["item"].to_numpy().astype(np.int64)
        counts[items] = item_attributes["attributes"].list.len().to_numpy()
        attribute_offsets = csr_offsets(counts)
        ordered = item_attributes.sort("item")["attributes"].explode().drop_nulls()
        attribute_ids = ordered.to_numpy().astype(np.int64)
    return PreparedDataset(
        name=name,
        n_items=n_items,
        **arrays,
        meta=meta,
        attribute_offsets=attribute_offsets,
        attribute_ids=attribute_ids,
        n_attributes=int(meta.get("n_attributes", 0)),
        original_ids=original_ids,
    )


def write_arrays(split: pl.DataFrame, folder: Path) -> None:
    """The `.npy` files of `ARRAY_FILES`, one array built and written at a time."""
    if not split["user"].is_sorted():
        split = split.sort("user")
    for name in ARRAY_FILES:
        np.save(folder / f"{name}.npy", split_array(split, name), allow_pickle=False)


def _mapped_arrays(folder: Path) -> dict[str, np.ndarray]:
    """The `.npy` arrays of a format-4 folder, memory-mapped copy-on-write (torch can wrap
    them without a copy; nothing is ever written back)."""
    arrays = {}
    for name, dtype in ARRAY_FILES.items():
        array = np.load(folder / f"{name}.npy", mmap_mode="c", allow_pickle=False)
        if array.dtype != dtype or array.ndim != 1:
            raise ValueError(f"{name}.npy holds {array.dtype} of {array.ndim} dimensions")
        arrays[name] = array
    return arrays


def load_prepared(data_dir: Path, name: str, split: SplitSpec = LOO) -> PreparedDataset:
    """Read `name`'s prepared folder of `split` (written by `lossbench preprocess`)."""
    folder = prepared_dir(data_dir, name, split)
    meta = read_meta(folder)
    command = preprocess_command(name, split)
    if meta is None:
        raise LossbenchError(
            f"dataset {name} is not prepared ({split.label} split) in {data_dir}: run `{command}`"
        )
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise LossbenchError(
            f"dataset {name} was prepared by another lossbench version: run `{command} --force`"
        )
    if problems := prepared_problems(data_dir, name, meta, hashes=False, split=split):
        raise LossbenchError(
            f"dataset {name} is damaged: {'; '.join(problems)}; run `{command} --force`"
        )
    try:
        if meta["format_version"] == FORMAT_VERSION:
            arrays = _mapped_arrays(folder)
        else:  # format 3: no arrays, the split table in memory
            table = pl.read_parquet(folder / "split.parquet").sort("user")
            arrays = {array: split_array(table, array) for array in ARRAY_FILES}
        attributes_file = folder / "item_attributes.parquet"
        attributes = pl.read_parquet(attributes_file) if attributes_file.exists() else None
        original_ids = OriginalIds.from_maps(
            pl.read_parquet(folder / "users.parquet"), pl.read_parquet(folder / "items.parquet")
        )
    except (OSError, ValueError, pl.exceptions.PolarsError) as error:
        raise LossbenchError(
            f"prepared files of {name} are unreadable ({error}); run `{command} --force`"
        ) from None
    return prepared_from_arrays(name, arrays, meta, attributes, original_ids)
