"""The self-attentive sequence model SASRec, BERT4Rec and S3Rec share, with a declared direction.

- `causal` (SASRec, S3Rec's fine-tuning model): position t attends to the items at <= t; the
  item table holds padding and the items.
- `bidirectional` (BERT4Rec): every position attends to every real item, and the item table
  has one extra row, the mask token (`mask_token_id`), fed at masked positions and appended to
  a history to predict its next item. The mask row is never scored (`scoring_table` stops at
  n_items).

A subclass declares `direction`; everything else (layout, parameter names, init, the packed
fast path) is one implementation, so the two models differ only where their papers do.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from lossbench.models.base import mask_token_id
from lossbench.models.transformer import (
    PositionalInput,
    TransformerEncoder,
    encode_parts,
    init_normal_,
)

Direction = Literal["causal", "bidirectional"]


class SelfAttentionModel(nn.Module):
    """(B, L) left-padded item ids -> (B, L, D) through item + learned positions and
    post-LayerNorm transformer blocks, attending as `direction` declares."""

    direction: ClassVar[Direction]
    bidirectional: ClassVar[bool]  # derived from `direction`, for `ModelSpec.bidirectional`

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.bidirectional = cls.direction == "bidirectional"

    def __init__(
        self,
        n_items: int,
        *,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        inner_size: int | None,
        dropout: float,
        attention_dropout: float,
        max_len: int,
        init_std: float,
        pack_padding: bool = True,
    ) -> None:
        super().__init__()
        self.n_items = n_items
        self.max_len = max_len
        # The mask token's id when bidirectional; None: a causal model has no special row.
        self.mask_token = mask_token_id(n_items) if self.bidirectional else None
        # row 0 padding, rows 1..n_items items, then (bidirectional) the mask token
        rows = n_items + 2 if self.bidirectional else n_items + 1
        self.item_embedding = nn.Embedding(rows, hidden_size, padding_idx=0)
        self.positional_input = PositionalInput(hidden_size, max_len, dropout)
        self.encoder = TransformerEncoder(
            num_layers,
            hidden_size,
            num_heads,
            inner_size or 4 * hidden_size,
            dropout,
            attention_dropout,
            causal=not self.bidirectional,
            pack_padding=pack_padding,
        )
        init_normal_(self, init_std)

    def forward(self, item_ids: Tensor, last_only: bool = False) -> Tensor:
        """(B, L) -> (B, L, D); `last_only` -> (B, 1, D), the last column's state only."""
        is_item = item_ids != 0  # (B, L); the mask token is a real key
        hidden = self.positional_input(self.item_embedding(item_ids))  # (B, L, D)
        states: Tensor = self.encoder(hidden, is_item, last_only)  # (B, L, D) or (B, 1, D)
        return states

    def forward_parts(self, inputs: list[Tensor]) -> list[Tensor]:
        """The (B_p, W_p) parts of one training batch -> their (B_p, W_p, D) states. On CPU the
        blocks run once over all parts' real items (0 at padding); elsewhere, part by part."""
        if not self.encoder.packs(inputs[0].device):
            each: list[Tensor] = [self(ids) for ids in inputs]
            return each
        return encode_parts(self.item_embedding, self.positional_input, self.encoder, inputs)

    def predict_hidden(self, item_ids: Tensor) -> Tensor:
        """(B, L) histories -> (B, D), the state that scores the next item.

        Causal: the last column's state. Bidirectional: append the mask token and take its
        state; a batch narrower than max_len grows by one column, a full-width batch drops its
        oldest column. Either way the mask sits at position max_len - 1, where training put
        the last item, and a bucketed (narrow) batch loses no history item."""
        if self.mask_token is not None:
            mask = torch.full_like(item_ids[:, :1], self.mask_token)  # (B, 1)
            history = item_ids if item_ids.shape[1] < self.max_len else item_ids[:, 1:]
            item_ids = torch.cat([history, mask], dim=1)
        last: Tensor = self(item_ids, last_only=True)  # (B, 1, D)
        return last[:, 0]
