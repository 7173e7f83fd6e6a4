"""The prepared arrays: int32 ids in `.npy` files, memory-mapped on load, equal to the split
table; a folder of the previous format still reads; evaluation inputs built per block equal
the padded matrix they replace."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from lossbench.data import sequences
from lossbench.data.prepared import (
    ARRAY_FILES,
    FORMAT_VERSION,
    PreparedDataset,
    load_prepared,
    prepared_dir,
    prepared_from_frames,
)
from lossbench.data.preprocess import preprocess_dataset
from lossbench.data.sequences import (
    build_sequence_tensors,
    concat_rows,
    evaluation_set,
    last_items,
)


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    preprocess_dataset(tmp_path, "synthetic")
    return tmp_path


def from_table(data_dir: Path) -> PreparedDataset:
    """The dataset as the split table says, in memory (the reference)."""
    folder = prepared_dir(data_dir, "synthetic")
    meta = json.loads((folder / "meta.json").read_text())
    return prepared_from_frames("synthetic", pl.read_parquet(folder / "split.parquet"), meta)


def test_arrays_are_int32_ids_memory_mapped_and_equal_the_split_table(prepared: Path) -> None:
    dataset = load_prepared(prepared, "synthetic")
    reference = from_table(prepared)
    assert dataset.meta["format_version"] == FORMAT_VERSION == 4
    for name, dtype in ARRAY_FILES.items():
        array = getattr(dataset, name)
        assert isinstance(array, np.memmap), name
        assert array.dtype == dtype, name
        assert np.array_equal(array, getattr(reference, name)), name
    assert dataset.train_items.dtype == np.int32 and dataset.train_offsets.dtype == np.int64
    assert set(dataset.meta["files"]) >= {f"{name}.npy" for name in ARRAY_FILES}


def test_a_folder_of_format_3_reads_from_its_split_table(prepared: Path) -> None:
    folder = prepared_dir(prepared, "synthetic")
    mapped = load_prepared(prepared, "synthetic")
    meta = json.loads((folder / "meta.json").read_text())
    for name in ARRAY_FILES:  # what format 3 wrote: no arrays
        (folder / f"{name}.npy").unlink()
        del meta["files"][f"{name}.npy"]
    (folder / "meta.json").write_text(json.dumps({**meta, "format_version": 3}))
    old = load_prepared(prepared, "synthetic")
    for name in ARRAY_FILES:
        assert not isinstance(getattr(old, name), np.memmap)
        assert np.array_equal(getattr(old, name), getattr(mapped, name)), name
    assert (old.n_users, old.n_items) == (mapped.n_users, mapped.n_items)
    # ... and the run's tensors are the same bits as those of the mapped folder
    for split in ("valid", "test"):
        a = getattr(build_sequence_tensors(old, 20), split)
        b = getattr(build_sequence_tensors(mapped, 20), split)
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.seen_items, b.seen_items)


def test_sequence_tensors_of_mapped_int32_arrays_equal_those_of_int64_arrays(
    prepared: Path,
) -> None:
    mapped = load_prepared(prepared, "synthetic")
    wide = PreparedDataset(
        name="synthetic",
        n_items=mapped.n_items,
        train_offsets=np.array(mapped.train_offsets),
        train_items=np.array(mapped.train_items, dtype=np.int64),
        valid_items=np.array(mapped.valid_items, dtype=np.int64),
        test_items=np.array(mapped.test_items, dtype=np.int64),
        gap_offsets=np.array(mapped.gap_offsets),
        gap_items=np.array(mapped.gap_items, dtype=np.int64),
    )
    narrow, reference = build_sequence_tensors(mapped, 12), build_sequence_tensors(wide, 12)
    assert narrow.train_windows.dtype == torch.int32
    assert torch.equal(narrow.train_windows.long(), reference.train_windows.long())
    assert torch.equal(narrow.item_counts, reference.item_counts)
    for split in ("valid", "test"):
        a, b = getattr(narrow, split), getattr(reference, split)
        assert a.seen_items.dtype == torch.int32
        assert torch.equal(a.seen_items.long(), b.seen_items.long())
        assert torch.equal(a.seen_offsets, b.seen_offsets) and torch.equal(a.inputs, b.inputs)


def test_block_histories_equal_the_padded_matrix_with_users_missing_targets() -> None:
    rng = np.random.default_rng(3)
    lengths = rng.integers(0, 30, 50)  # some users have no history at all
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(1, 99, int(offsets[-1])).astype(np.int32)
    targets = np.where(rng.random(50) < 0.3, 0, rng.integers(1, 99, 50)).astype(np.int32)
    max_len = 7
    evaluated = evaluation_set(offsets, items, targets, max_len)
    rows = np.flatnonzero(targets > 0)
    assert evaluated.rows().tolist() == rows.tolist()
    # The matrix the evaluator used to hold: last max_len items of each evaluated user.
    full, full_lengths = last_items(offsets, items, max_len)
    expected = full[rows]
    assert evaluated.lengths.tolist() == full_lengths[rows].tolist()
    assert evaluated.inputs.tolist() == expected[:, -evaluated.inputs.shape[1] :].tolist()
    some = torch.tensor([4, 0, 2])
    width = int(evaluated.lengths[some].max())
    assert evaluated.histories(some, width).tolist() == expected[[4, 0, 2], -width:].tolist()
    assert evaluated.histories(some, width).dtype == torch.int64


def test_row_blocks_change_no_padded_matrix_and_no_concatenation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(5)
    lengths, more = rng.integers(0, 9, 40), rng.integers(0, 3, 40)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    more_offsets = np.concatenate([[0], np.cumsum(more)]).astype(np.int64)
    items = rng.integers(1, 50, int(offsets[-1])).astype(np.int32)
    more_items = rng.integers(1, 50, int(more_offsets[-1])).astype(np.int32)
    whole = last_items(offsets, items, 6), concat_rows(offsets, items, more_offsets, more_items)
    monkeypatch.setattr(sequences, "PAD_BLOCK_ROWS", 3)
    blocked = last_items(offsets, items, 6), concat_rows(offsets, items, more_offsets, more_items)
    for a, b in zip(whole, blocked, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    new_offsets, new_items = whole[1]
    for user in range(40):  # row u: its own items, then the second CSR's
        row = new_items[new_offsets[user] : new_offsets[user + 1]].tolist()
        first = items[offsets[user] : offsets[user + 1]].tolist()
        assert row == first + more_items[more_offsets[user] : more_offsets[user + 1]].tolist()
