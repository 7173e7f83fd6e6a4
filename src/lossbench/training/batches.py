"""Training batches built by vectorized indexing, with bounded padding.

Two schemes (`--batching`):

- `random` (default): the study's batches, users drawn uniformly without replacement. Each
  batch is sorted by length and cut into parts of `PART_ROWS` rows, each part trimmed to its
  own longest row; the model runs once per part and the loss once over all the batch's
  positions. The result equals padding every row to max_len (tested), with little padding.
- `bucket`: users of similar length share a batch (sorted, cut, batch order shuffled): the
  least padding and one model call per batch, but batch composition, and so the weight of
  each position in the per-batch mean, differs from the study's.

With `shuffle_train`, each user's training window is permuted once (seeded) before the first
epoch: the same items train, in no particular order (the order control; evaluation keeps the
true order).

All batch building happens on the CPU (from tensors made once), including the choice of
training positions and BERT4Rec's masking, so the training step on the device needs no sync:
it receives the flat indices of its training positions ready-made.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lossbench.data.sequences import SequenceTensors, shuffled_windows
from lossbench.losses.base import Positions

Batching = Literal["bucket", "random"]

# Rows per part of a `random` batch: enough for efficient matmuls, few enough that a part's
# rows have similar lengths.
PART_ROWS = 64
# Users whose windows are counted at a time by `target_counts`.
COUNT_BLOCK_ROWS = 1 << 14


@dataclass(frozen=True)
class TrainBatch:
    inputs: Tensor  # (B, W) int64 left-padded item ids fed to the model
    targets: Tensor  # (N,) int64 the item to predict at each training position
    positions: Tensor  # (N,) int64 flat indices into the (B * W) hidden states
    users: Tensor  # (B,) int64 user row of each batch row

    def to(self, device: torch.device) -> TrainBatch:
        if device.type == "cpu":
            return self
        return TrainBatch(
            *(
                t.pin_memory().to(device, non_blocking=True)
                for t in (self.inputs, self.targets, self.positions, self.users)
            )
        )

    def position_users(self) -> Tensor:
        """(N,) int64 user row of each training position."""
        return self.users[torch.div(self.positions, self.inputs.shape[1], rounding_mode="floor")]


class TrainBatcher:
    """Yields one epoch of batches over users with at least two training items.

    `bucket` sorts users by length (ties in random order) before cutting batches and shuffles
    the batch order, so each batch is trimmed to nearly its rows' own length; `random` draws
    batches uniformly (the study's scheme) and trims them to their longest row.
    """

    def __init__(
        self,
        sequences: SequenceTensors,
        batch_size: int,
        positions: Positions,
        batching: Batching,
        seed: int,
        mask_prob: float = 0.2,
        mask_token: int | None = None,
        shuffle_train: bool = False,
    ) -> None:
        if positions == "masked" and mask_token is None:
            raise ValueError("masked positions need the model's mask token")
        self.windows = sequences.train_windows  # (U, max_len + 1) int32
        if shuffle_train:  # its own stream: the batches of a run stay those of its seed
            order_generator = torch.Generator().manual_seed(seed + 104729)
            self.windows = shuffled_windows(self.windows, order_generator)
        self.lengths = sequences.train_lengths
        self.users = torch.nonzero(self.lengths >= 2).squeeze(1)  # (U',)
        self.batch_size = batch_size
        self.positions = positions
        self.batching = batching
        self.mask_prob = mask_prob
        self.mask_token = mask_token
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.users) // self.batch_size)

    def target_counts(self, n_items: int) -> Tensor:
        """(n_items + 1,) int64 how often each item is a training target in one epoch (the
        in-batch sampler's proposal). `masked`: every real item the model sees, each equally
        likely to be masked."""
        counts = torch.zeros(n_items + 1, dtype=torch.int64)
        for users in torch.split(self.users, COUNT_BLOCK_ROWS):  # blocks bound the copies
            windows = self.windows[users]  # (B, max_len + 1)
            if self.positions == "all":  # every item but the first of each window is a target
                targets = windows[:, 1:][windows[:, :-1] > 0]
            elif self.positions == "last":
                targets = windows[:, -1]
            else:
                seen = windows[:, -(self.windows.shape[1] - 1) :]
                targets = seen[seen > 0]
            counts += torch.bincount(targets, minlength=n_items + 1)
        return counts

    def epoch(self) -> Iterator[list[TrainBatch]]:
        """One epoch of training steps; each step is a list of parts, trained as one batch."""
        order = self.users[torch.randperm(len(self.users), generator=self.generator)]
        if self.batching == "bucket":
            order = order[torch.sort(self.lengths[order], stable=True).indices]
        chunks = list(torch.split(order, self.batch_size))
        if self.batching == "bucket":
            chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=self.generator)]
            for users in chunks:
                yield [self.make_batch(users)]
            return
        for users in chunks:
            by_length = users[torch.sort(self.lengths[users], stable=True).indices]
            yield [self.make_batch(part) for part in torch.split(by_length, PART_ROWS)]

    def make_batch(self, users: Tensor) -> TrainBatch:
        width = int(self.lengths[users].max())  # real items in the longest window
        windows = self.windows[users, -width:].long()  # (B, width) int64 (held as int32)
        if self.positions == "masked":  # the model sees at most max_len items
            items = windows[:, -min(width, self.windows.shape[1] - 1) :]
            return self._masked_batch(items, users)
        inputs, next_items = windows[:, :-1], windows[:, 1:]  # (B, W), W = width - 1
        if self.positions == "all":
            positions = torch.nonzero(inputs.reshape(-1) > 0).squeeze(1)
        else:  # "last": the most recent position of every row
            row_width = inputs.shape[1]
            positions = torch.arange(1, inputs.shape[0] + 1) * row_width - 1
        return TrainBatch(inputs, next_items.reshape(-1)[positions], positions, users)

    def _masked_batch(self, items: Tensor, users: Tensor) -> TrainBatch:
        """BERT4Rec's cloze task: hide a random fraction of the real items."""
        real = items > 0
        hidden_here = (torch.rand(items.shape, generator=self.generator) < self.mask_prob) & real
        positions = torch.nonzero(hidden_here.reshape(-1)).squeeze(1)
        targets = items.reshape(-1)[positions]
        assert self.mask_token is not None
        inputs = items.masked_fill(hidden_here, self.mask_token)
        return TrainBatch(inputs, targets, positions, users)
