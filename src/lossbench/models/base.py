"""The interface every sequence model implements.

Item ids: 0 is padding, 1..n_items are real items, ids above n_items are model-specific special
tokens (BERT4Rec's mask). Sequences are left-padded: the most recent item is in the last column.
A batch may be narrower than `max_len` (length bucketing); models must give a real position the
same output whatever the amount of left padding, so position ids count back from the right end.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn


class SequenceModel(Protocol):
    """(B, L) item ids -> (B, L, D) hidden states; scores are dot products with item rows."""

    n_items: int
    bidirectional: bool  # True: may only train with the masked-item objective (mlm)
    item_embedding: nn.Embedding  # (n_items + 1 + n_special, D), shared with the input layer

    def __call__(self, item_ids: Tensor) -> Tensor: ...  # (B, L) -> (B, L, D)

    def predict_hidden(self, item_ids: Tensor) -> Tensor:
        """(B, L) histories -> (B, D) the state that scores the next item."""
        ...

    def parameters(self, recurse: bool = True) -> object: ...


def scoring_table(model: SequenceModel) -> Tensor:
    """(n_items + 1, D) rows that score items 0..n_items (row 0 is padding, never scored).

    The weight itself when it has no special rows: a slice would add a table-sized zero fill
    and copy to every backward pass."""
    weight = model.item_embedding.weight
    return weight if weight.shape[0] == model.n_items + 1 else weight[: model.n_items + 1]


def right_aligned_positions(width: int, max_len: int, device: torch.device) -> Tensor:
    """(width,) position ids for a left-padded batch of `width` columns: the last column is
    always position max_len - 1, so a narrower (bucketed) batch gives identical outputs."""
    return torch.arange(max_len - width, max_len, device=device)
