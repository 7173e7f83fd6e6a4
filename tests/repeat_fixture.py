"""A small dataset whose users re-consume items, and a deterministic scoring model for it.

Every score is a small integer (exact in fp32, many ties), so the ranks are the same on every
machine. `tests/data/seen_targets_rank.json` holds what the evaluation gave on it before
`--seen-targets` existed (seen items masked, the target always kept): `rank` must reproduce
it exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from lossbench.data.prepared import PreparedDataset

N_USERS, N_ITEMS, MAX_LEN, HIDDEN = 40, 30, 8, 3
N_EVAL_NEGATIVES = 10


def repeat_dataset() -> PreparedDataset:
    """40 users, 30 items; about half the validation and test targets are already seen."""
    rng = np.random.default_rng(23)
    lengths = rng.integers(1, 13, N_USERS)
    offsets = np.zeros(N_USERS + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    train_items = rng.integers(1, N_ITEMS + 1, int(offsets[-1]))
    valid_items = rng.integers(1, N_ITEMS + 1, N_USERS)
    test_items = rng.integers(1, N_ITEMS + 1, N_USERS)
    repeat_valid = rng.random(N_USERS) < 0.5
    repeat_test = rng.random(N_USERS) < 0.5
    last_train = train_items[offsets[1:] - 1]
    valid_items = np.where(repeat_valid, last_train, valid_items)
    test_items = np.where(repeat_test, train_items[offsets[:-1]], test_items)
    return PreparedDataset(
        name="repeats",
        n_items=N_ITEMS,
        train_offsets=offsets,
        train_items=train_items.astype(np.int64),
        valid_items=valid_items.astype(np.int64),
        test_items=test_items.astype(np.int64),
    )


class LastItemsModel(nn.Module):
    """hidden = sum of the embeddings of the last two items; integer embeddings in -3..3."""

    def __init__(self) -> None:
        super().__init__()
        self.n_items = N_ITEMS
        self.bidirectional = False
        self.item_embedding = nn.Embedding(N_ITEMS + 1, HIDDEN)
        values = np.random.default_rng(5).integers(-3, 4, (N_ITEMS + 1, HIDDEN))
        weights = torch.from_numpy(values).float()
        with torch.no_grad():
            self.item_embedding.weight.copy_(weights)

    def forward(self, item_ids: Tensor) -> Tensor:
        return self.item_embedding(item_ids)  # (B, L, D)

    def predict_hidden(self, item_ids: Tensor) -> Tensor:
        return self.item_embedding(item_ids[:, -2:]).sum(dim=1)  # (B, D)
