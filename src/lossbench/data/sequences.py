"""Prepared splits become the tensors a run reads, once, before training.

The training windows are a matrix left-padded with 0 (the most recent item in the last
column), so a batch can be trimmed to its longest row by slicing off leading columns. An
evaluation set holds only the users with a target (every user under leave-one-out; a subset
under the temporal split) as a CSR of their histories, and builds the padded inputs of a
block of users when that block is ranked: one (U, max_len) matrix per split would be the
largest thing a run holds at scale.

Item ids stay int32 (as prepared) in everything held for the whole run, and CSR arrays of
the prepared folder are used in place (memory-mapped) where no row is dropped; batches and
evaluation blocks are int64, as torch's embedding lookups and losses take them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lossbench.data.prepared import ID_DTYPE, OFFSET_DTYPE, PreparedDataset, csr_offsets

# Rows of a padded matrix built at a time: bounds the (rows, width) int64 index temporaries.
PAD_BLOCK_ROWS = 1 << 15


@dataclass(frozen=True)
class EvaluationSet:
    """Histories, targets and seen items for validation or test, one row per evaluated user.
    The model's inputs of row u are the last `lengths[u]` items of its seen items."""

    lengths: Tensor  # (U,) int64 history items the model reads: min(history, max_len)
    targets: Tensor  # (U,) int64
    seen_offsets: Tensor  # (U + 1,) int64 CSR offsets into seen_items (whole history)
    seen_items: Tensor  # (S,) int32 (any integer type): the items before the target
    user_rows: Tensor | None = None  # (U,) int64 user row (id - 1) of each row; None: row i

    def rows(self) -> Tensor:
        """(U,) int64 the user row (user id - 1) of each row."""
        if self.user_rows is not None:
            return self.user_rows
        return torch.arange(len(self.targets))

    def histories(self, rows: Tensor, width: int) -> Tensor:
        """(B, width) int64 left-padded last `width` seen items of rows `rows` (B,), cut to
        `lengths` (the model's max_len)."""
        ends = self.seen_offsets[rows + 1]  # (B,) one past each row's last item
        source = ends[:, None] - width + torch.arange(width)  # (B, width) item indices
        inside = source >= (ends - self.lengths[rows])[:, None]
        if len(self.seen_items) == 0:
            return torch.zeros(source.shape, dtype=torch.int64)
        picked = self.seen_items[source.clamp(0, len(self.seen_items) - 1)].long()
        return picked.masked_fill_(~inside, 0)

    @property
    def inputs(self) -> Tensor:
        """(U, longest) int64 every row's padded inputs (a whole-set view, for inspection)."""
        width = int(self.lengths.max()) if len(self.lengths) else 0
        return self.histories(torch.arange(len(self.targets)), width)


@dataclass(frozen=True)
class SequenceTensors:
    """The training windows and the two evaluation sets of one prepared dataset."""

    n_items: int
    max_len: int
    train_windows: Tensor  # (U, max_len + 1) int32: last max_len + 1 training items
    train_lengths: Tensor  # (U,) int64 real items in each window
    train_offsets: Tensor  # (U + 1,) int64 CSR of every user's whole training sequence
    train_items: Tensor  # (T,) int32
    item_counts: Tensor  # (n_items + 1,) int64 training occurrences (popularity)
    valid: EvaluationSet
    test: EvaluationSet


def last_items(offsets: np.ndarray, items: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(U, width) left-padded matrix of each CSR row's last `width` items (the items' dtype),
    and row lengths (int64). Built `PAD_BLOCK_ROWS` rows at a time."""
    lengths = np.minimum(np.diff(offsets), width).astype(np.int64)
    matrix = np.zeros((len(lengths), width), dtype=items.dtype)
    columns = np.arange(width)
    for first in range(0, len(lengths), PAD_BLOCK_ROWS):
        ends = offsets[first + 1 : first + 1 + PAD_BLOCK_ROWS]  # (R,)
        # Column c of row u holds items[end_u - width + c] when that index is inside row u.
        source = ends[:, None] - width + columns[None, :]  # (R, width)
        inside = source >= (ends - lengths[first : first + len(ends)])[:, None]
        block = items[np.clip(source, 0, max(len(items) - 1, 0))] if len(items) else 0
        matrix[first : first + len(ends)] = np.where(inside, block, 0)
    return matrix, lengths


def append_column(
    offsets: np.ndarray, items: np.ndarray, extra: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """CSR rows with one more item appended to each (train + valid item for the test set)."""
    new_offsets = csr_offsets(np.diff(offsets) + 1)
    new_items = np.empty(new_offsets[-1], dtype=np.result_type(items, extra))
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
    new_offsets = csr_offsets(lengths + more_lengths)
    new_items = np.empty(new_offsets[-1], dtype=np.result_type(items, more_items))
    # Row u's items from the first CSR land at new_offsets[u]; the second's right after them.
    # Row blocks bound the int64 position temporaries.
    for first in range(0, len(lengths), PAD_BLOCK_ROWS):
        last = min(first + PAD_BLOCK_ROWS, len(lengths))
        for source_offsets, source_items, after in (
            (offsets, items, None),
            (more_offsets, more_items, lengths),
        ):
            low, high = source_offsets[first], source_offsets[last]
            row_lengths = np.diff(source_offsets[first : last + 1])
            starts = new_offsets[first:last] + (0 if after is None else after[first:last])
            shift = np.repeat(starts - source_offsets[first:last], row_lengths)  # (n,)
            new_items[np.arange(low, high) + shift] = source_items[low:high]
    return new_offsets, new_items


def select_rows(
    offsets: np.ndarray, items: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The CSR of rows `rows` (in that order) of a CSR."""
    lengths = np.diff(offsets)[rows]
    new_offsets = csr_offsets(lengths)
    within = np.arange(new_offsets[-1]) - np.repeat(new_offsets[:-1], lengths)
    return new_offsets, items[np.repeat(offsets[:-1][rows], lengths) + within]


def evaluation_set(
    offsets: np.ndarray, items: np.ndarray, targets: np.ndarray, max_len: int
) -> EvaluationSet:
    """The users with a target (> 0), each with its history row of the CSR as seen items.
    When every user has one, the CSR is used as it is (no copy)."""
    rows = np.flatnonzero(targets > 0)
    if len(rows) == len(targets):
        seen_offsets, seen_items = offsets, items
    else:
        seen_offsets, seen_items = select_rows(offsets, items, rows)
    lengths = np.minimum(np.diff(seen_offsets), max_len)
    return EvaluationSet(
        user_rows=torch.from_numpy(rows.astype(np.int64)),
        lengths=torch.from_numpy(lengths.astype(np.int64)),
        targets=torch.from_numpy(targets[rows].astype(np.int64)),
        seen_offsets=torch.from_numpy(np.asarray(seen_offsets, dtype=OFFSET_DTYPE)),
        seen_items=torch.from_numpy(_ids(seen_items)),
    )


def _ids(items: np.ndarray) -> np.ndarray:
    """`items` as int32 ids, without a copy when they already are (a mapped array stays
    mapped)."""
    return items if items.dtype == ID_DTYPE else items.astype(ID_DTYPE)


def build_sequence_tensors(dataset: PreparedDataset, max_len: int) -> SequenceTensors:
    offsets = np.asarray(dataset.train_offsets, dtype=OFFSET_DTYPE)
    items = _ids(dataset.train_items)  # (T,) int32, memory-mapped when read from a folder
    windows, window_lengths = last_items(offsets, items, max_len + 1)
    counts = np.bincount(items, minlength=dataset.n_items + 1)
    gap_offsets, gap_items = dataset.gap()
    test_offsets, test_items = concat_rows(offsets, items, gap_offsets, _ids(gap_items))
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
