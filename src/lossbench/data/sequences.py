"""Prepared splits become padded tensors once, before training.

Every matrix is left-padded with 0 (the most recent item in the last column), so a batch can be
trimmed to its longest row by slicing off leading columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lossbench.data.prepared import PreparedDataset


@dataclass(frozen=True)
class EvaluationSet:
    """Histories, targets and seen items for validation or test (row i is user i + 1)."""

    inputs: Tensor  # (U, max_len) int64 left-padded histories
    lengths: Tensor  # (U,) int64 number of real items in `inputs`
    targets: Tensor  # (U,) int64
    seen_offsets: Tensor  # (U + 1,) int64 CSR offsets into seen_items (whole history)
    seen_items: Tensor  # (S,) int64


@dataclass(frozen=True)
class SequenceTensors:
    """The training windows and the two evaluation sets of one prepared dataset."""

    n_items: int
    max_len: int
    train_windows: Tensor  # (U, max_len + 1) int64: last max_len + 1 training items
    train_lengths: Tensor  # (U,) int64 real items in each window
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


def build_sequence_tensors(dataset: PreparedDataset, max_len: int) -> SequenceTensors:
    offsets = dataset.train_offsets.astype(np.int64)
    items = dataset.train_items.astype(np.int64)
    windows, window_lengths = last_items(offsets, items, max_len + 1)
    counts = np.bincount(items, minlength=dataset.n_items + 1)

    valid_inputs, valid_lengths = last_items(offsets, items, max_len)
    valid = EvaluationSet(
        inputs=torch.from_numpy(valid_inputs),
        lengths=torch.from_numpy(valid_lengths),
        targets=torch.from_numpy(dataset.valid_items.astype(np.int64)),
        seen_offsets=torch.from_numpy(offsets),
        seen_items=torch.from_numpy(items),
    )
    test_offsets, test_items = append_column(offsets, items, dataset.valid_items.astype(np.int64))
    test_inputs, test_lengths = last_items(test_offsets, test_items, max_len)
    test = EvaluationSet(
        inputs=torch.from_numpy(test_inputs),
        lengths=torch.from_numpy(test_lengths),
        targets=torch.from_numpy(dataset.test_items.astype(np.int64)),
        seen_offsets=torch.from_numpy(test_offsets),
        seen_items=torch.from_numpy(test_items),
    )
    return SequenceTensors(
        n_items=dataset.n_items,
        max_len=max_len,
        train_windows=torch.from_numpy(windows),
        train_lengths=torch.from_numpy(window_lengths),
        item_counts=torch.from_numpy(counts.astype(np.int64)),
        valid=valid,
        test=test,
    )
