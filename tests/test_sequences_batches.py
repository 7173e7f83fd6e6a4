"""Prepared splits -> padded tensors -> training batches."""

from __future__ import annotations

import numpy as np
import torch

from lossbench.data.prepared import PreparedDataset
from lossbench.data.sequences import append_column, build_sequence_tensors, last_items
from lossbench.training.batches import TrainBatcher


def tiny_dataset() -> PreparedDataset:
    # user 1: train [1, 2, 3, 4], user 2: train [5], user 3: train [2, 6, 7]
    return PreparedDataset(
        name="tiny",
        n_items=8,
        train_offsets=np.array([0, 4, 5, 8]),
        train_items=np.array([1, 2, 3, 4, 5, 2, 6, 7]),
        valid_items=np.array([5, 6, 8]),
        test_items=np.array([6, 7, 1]),
    )


def test_last_items_left_pads_and_truncates() -> None:
    dataset = tiny_dataset()
    matrix, lengths = last_items(dataset.train_offsets, dataset.train_items, 3)
    assert matrix.tolist() == [[2, 3, 4], [0, 0, 5], [2, 6, 7]]
    assert lengths.tolist() == [3, 1, 3]


def test_append_column_adds_the_validation_item() -> None:
    dataset = tiny_dataset()
    offsets, items = append_column(dataset.train_offsets, dataset.train_items, dataset.valid_items)
    assert offsets.tolist() == [0, 5, 7, 11]
    assert items.tolist() == [1, 2, 3, 4, 5, 5, 6, 2, 6, 7, 8]


def test_sequence_tensors_hold_the_leave_one_out_split() -> None:
    tensors = build_sequence_tensors(tiny_dataset(), max_len=4)
    assert tensors.train_windows.tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 0, 5], [0, 0, 2, 6, 7]]
    assert tensors.valid.inputs.tolist() == [[1, 2, 3, 4], [0, 0, 0, 5], [0, 2, 6, 7]]
    assert tensors.valid.targets.tolist() == [5, 6, 8]
    # The test history ends with the validation item; the target is the last item.
    assert tensors.test.inputs.tolist() == [[2, 3, 4, 5], [0, 0, 5, 6], [2, 6, 7, 8]]
    assert tensors.test.targets.tolist() == [6, 7, 1]
    assert tensors.item_counts.tolist() == [0, 1, 2, 1, 1, 1, 1, 1, 0]


def test_all_positions_are_every_real_input_with_its_next_item() -> None:
    tensors = build_sequence_tensors(tiny_dataset(), max_len=4)
    batcher = TrainBatcher(tensors, batch_size=8, positions="all", batching="random", seed=0)
    batch = batcher.make_batch(torch.tensor([0, 2]))  # users 1 and 3 (user 2 has 1 item)
    assert batch.inputs.tolist() == [[1, 2, 3], [0, 2, 6]]
    flat = batch.inputs.reshape(-1)
    assert flat[batch.positions].tolist() == [1, 2, 3, 2, 6]
    assert batch.targets.tolist() == [2, 3, 4, 6, 7]
    assert batch.position_users().tolist() == [0, 0, 0, 2, 2]  # user rows, for the sampler


def test_last_position_is_the_most_recent_item() -> None:
    tensors = build_sequence_tensors(tiny_dataset(), max_len=4)
    batcher = TrainBatcher(tensors, batch_size=8, positions="last", batching="random", seed=0)
    batch = batcher.make_batch(torch.tensor([0, 2]))
    assert batch.inputs.reshape(-1)[batch.positions].tolist() == [3, 6]
    assert batch.targets.tolist() == [4, 7]
    assert batch.position_users().tolist() == [0, 2]


def test_masked_batch_hides_real_items_only() -> None:
    tensors = build_sequence_tensors(tiny_dataset(), max_len=4)
    batcher = TrainBatcher(
        tensors,
        batch_size=8,
        positions="masked",
        batching="random",
        seed=0,
        mask_prob=0.5,
        mask_token=9,
    )
    for _ in range(20):
        batch = batcher.make_batch(torch.tensor([0, 2]))
        flat = batch.inputs.reshape(-1)
        assert (flat[batch.positions] == 9).all()
        assert ((flat == 9).sum() == len(batch.positions)).item()
        original = tensors.train_windows[[0, 2], -4:].reshape(-1)
        assert batch.targets.tolist() == original[batch.positions].tolist()
        assert (batch.targets > 0).all()
        rows = torch.div(batch.positions, batch.inputs.shape[1], rounding_mode="floor")
        assert batch.position_users().tolist() == torch.tensor([0, 2])[rows].tolist()


def test_an_epoch_visits_every_trainable_user_once() -> None:
    tensors = build_sequence_tensors(tiny_dataset(), max_len=4)
    for batching in ("bucket", "random"):
        batcher = TrainBatcher(tensors, batch_size=1, positions="last", batching=batching, seed=3)
        seen = sorted(int(b.targets[0]) for parts in batcher.epoch() for b in parts)
        assert seen == [4, 7]  # user 2 has a single training item and cannot train


def test_random_batches_run_in_length_sorted_parts() -> None:
    from lossbench.data.store import make_synthetic_prepared
    from lossbench.training.batches import PART_ROWS

    dataset = make_synthetic_prepared(n_users=300, n_items=50, mean_length=10.0, seed=2)
    tensors = build_sequence_tensors(dataset, max_len=30)
    batcher = TrainBatcher(tensors, batch_size=200, positions="all", batching="random", seed=0)
    steps = list(batcher.epoch())
    assert [sum(part.inputs.shape[0] for part in parts) for parts in steps] == [200, 100]
    for parts in steps:
        widths = [part.inputs.shape[1] for part in parts]
        assert widths == sorted(widths)  # each part trimmed to its own (longer) rows
        assert all(part.inputs.shape[0] <= PART_ROWS for part in parts)
        # every real input position trains, and nothing else
        for part in parts:
            assert len(part.positions) == int((part.inputs > 0).sum())


def test_shuffled_windows_permute_only_the_real_items() -> None:
    from lossbench.data.sequences import shuffled_windows

    windows = torch.tensor([[0, 0, 1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0, 7, 8], [9] * 8])
    shuffled = shuffled_windows(windows, torch.Generator().manual_seed(0))
    assert torch.equal(shuffled == 0, windows == 0)  # padding stays in front
    assert torch.equal(shuffled.sort(dim=1).values, windows.sort(dim=1).values)  # same items
    assert not torch.equal(shuffled[0], windows[0])
    again = shuffled_windows(windows, torch.Generator().manual_seed(0))
    assert torch.equal(shuffled, again)


def test_shuffle_train_changes_training_order_not_evaluation() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 30, 50)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    dataset = PreparedDataset(
        name="order",
        n_items=100,
        train_offsets=offsets,
        train_items=rng.integers(1, 101, offsets[-1]),
        valid_items=rng.integers(1, 101, 50),
        test_items=rng.integers(1, 101, 50),
    )
    tensors = build_sequence_tensors(dataset, max_len=10)
    ordered = TrainBatcher(tensors, 16, "all", "random", seed=3)
    shuffled = TrainBatcher(tensors, 16, "all", "random", seed=3, shuffle_train=True)
    assert not torch.equal(ordered.windows, shuffled.windows)
    assert torch.equal(ordered.windows.sort(dim=1).values, shuffled.windows.sort(dim=1).values)
    assert torch.equal(tensors.train_windows, ordered.windows)  # the shared tensors are intact
    # The same users in the same batches (only the order inside each window differs).
    first = [part.users for parts in ordered.epoch() for part in parts]
    second = [part.users for parts in shuffled.epoch() for part in parts]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
