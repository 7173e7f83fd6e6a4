"""Prepared splits become padded tensors once, before training.

Every matrix is left-padded with 0 (the most recent item in the last column), so a batch can be
trimmed to its longest row by slicing off leading columns. An evaluation set holds only the
users with a target (every user under leave-one-out; a subset under the temporal split).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lossbench.data.prepared import PreparedDataset


@dataclass(frozen=True)
class EvaluationSet:
    """Histories, targets and seen items for validation or test, one row per evaluated user."""

    inputs: Tensor  # (U, max_len) int64 left-padded histories
    lengths: Tensor  # (U,) int64 number of real items in `inputs`
    targets: Tensor  # (U,) int64
    seen_offsets: Tensor  # (U + 1,) int64 CSR offsets into seen_items (whole history)
    seen_items: Tensor  # (S,) int64: the items before the target
    user_rows: Tensor | None = None  # (U,) int64 user row (id - 1) of each row; None: row i

    def rows(self) -> Tensor:
        """(U,) int64 the user row (user id - 1) of each row."""
        if self.user_rows is not None:
            return self.user_rows
        return torch.arange(len(self.targets))


@dataclass(frozen=True)
class SequenceTensors:
    """The training windows and the two evaluation sets of one prepared dataset."""

    n_items: int
    max_len: int
    train_windows: Tensor  # (U, max_len + 1) int64: last max_len + 1 training items
    train_lengths: Tensor  # (U,) int64 real items in each window
    train_offsets: Tensor  # (U + 1,) int64 CSR of every user's whole training sequence
    train_items: Tensor  # (T,) int64
    item_counts: Tensor  # (n_items + 1,) int64 training occurrences (popularity)
    valid: EvaluationSet
    test: EvaluationSet


def last_items(offsets: np.ndarray, items: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(U, width) left-padded matrix of each CSR row's last `width` items, and row lengths."""
    lengths = np.minimum(np.diff(offsets), width)
    # Column c of row u holds items[end_u - width + c] when that index is inside row u.
    source = offsets[1:, None] - width + np.arange(width)[None, :]  # (U, width)
    inside = source >= (offsets[1:] - lengths)[:, None]
    matrix = np.where(inside, items[np.clip(source, 0, max(len(items) - 1, 0))], 0)
    return matrix.astype(np.int64), lengths.astype(np.int64)


def append_column(
    offsets: np.ndarray, items: np.ndarray, extra: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """CSR rows with one more item appended to each (train + valid item for the test set)."""
    lengths = np.diff(offsets) + 1
    new_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    new_items = np.empty(new_offsets[-1], dtype=np.int64)
    last_slots = new_offsets[1:] - 1
    keep = np.ones(len(new_items), dtype=bool)
    keep[last_slots] = False
    new_items[keep] = items
    new_items[last_slots] = extra
    return new_offsets, new_items


def concat_rows(
    offsets: np.ndarray, items: np.ndarray, more_offsets: np.ndarray, more_items: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """CSR rows of the first CSR each followed by the same row of the second (same row count)."""
    lengths, more_lengths = np.diff(offsets), np.diff(more_offsets)
    new_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths + more_lengths, out=new_offsets[1:])
    # The first CSR's items land at their offset shifted by the second's items of earlier rows.
    shift = np.repeat(new_offsets[:-1] - offsets[:-1], lengths)  # (T,)
    more_shift = np.repeat(new_offsets[:-1] + lengths - more_offsets[:-1], more_lengths)
    new_items = np.empty(new_offsets[-1], dtype=np.int64)
    new_items[np.arange(len(items)) + shift] = items
    new_items[np.arange(len(more_items)) + more_shift] = more_items
    return new_offsets, new_items


def select_rows(
    offsets: np.ndarray, items: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The CSR of rows `rows` (in that order) of a CSR."""
    lengths = np.diff(offsets)[rows]
    new_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    within = np.arange(new_offsets[-1]) - np.repeat(new_offsets[:-1], lengths)
    return new_offsets, items[np.repeat(offsets[:-1][rows], lengths) + within]


def evaluation_set(
    offsets: np.ndarray, items: np.ndarray, targets: np.ndarray, max_len: int
) -> EvaluationSet:
    """The users with a target (> 0), each with its history row of the CSR as seen items."""
    rows = np.flatnonzero(targets > 0)
    seen_offsets, seen_items = select_rows(offsets, items, rows)
    inputs, lengths = last_items(seen_offsets, seen_items, max_len)
    return EvaluationSet(
        user_rows=torch.from_numpy(rows.astype(np.int64)),
        inputs=torch.from_numpy(inputs),
        lengths=torch.from_numpy(lengths),
        targets=torch.from_numpy(targets[rows].astype(np.int64)),
        seen_offsets=torch.from_numpy(seen_offsets),
        seen_items=torch.from_numpy(seen_items.astype(np.int64)),
    )


def build_sequence_tensors(dataset: PreparedDataset, max_len: int) -> SequenceTensors:
    offsets = dataset.train_offsets.astype(np.int64)
    items = dataset.train_items.astype(np.int64)
    windows, window_lengths = last_items(offsets, items, max_len + 1)
    counts = np.bincount(items, minlength=dataset.n_items + 1)
    gap_offsets, gap_items = dataset.gap()
    test_offsets, test_items = concat_rows(offsets, items, gap_offsets, gap_items)
    return SequenceTensors(
        n_items=dataset.n_items,
        max_len=max_len,
        train_windows=torch.from_numpy(windows),
        train_lengths=torch.from_numpy(window_lengths),
        train_offsets=torch.from_numpy(offsets),
        train_items=torch.from_numpy(items),
        item_counts=torch.from_numpy(counts.astype(np.int64)),
        valid=evaluation_set(offsets, items, dataset.valid_items, max_len),
        test=evaluation_set(test_offsets, test_items, dataset.test_items, max_len),
    )


def shuffled_windows(windows: Tensor, generator: torch.Generator) -> Tensor:
    """(U, W) windows with each row's real items in a random order, padding still in front.

    The order control of "is this dataset sequential?": the same items train, only their
    order within each user's window is lost. One sort of random keys, padding keyed first.
    """
    keys = torch.rand(windows.shape, generator=generator, dtype=torch.float64)  # [0, 1)
    keys = keys.masked_fill(windows == 0, -1.0)
    return torch.gather(windows, 1, torch.argsort(keys, dim=1))
