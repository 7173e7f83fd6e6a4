"""BERT4Rec (Sun et al., CIKM 2019): the SASRec encoder without the causal mask, trained by
masked-item prediction (`mlm`). The item table has one extra row, the mask token
(id n_items + 1); it is never scored (`scoring_table` stops at n_items)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lossbench.models.base import mask_token_id
from lossbench.models.transformer import (
    PositionalInput,
    TransformerConfig,
    TransformerEncoder,
    encode_parts,
    init_normal_,
)


class BERT4RecConfig(TransformerConfig):
    """Same defaults as SASRec (the study's Table 2 S3Rec-code setting), so the two differ only
    in attention direction and training objective."""


class BERT4Rec(nn.Module):
    """(B, L) left-padded item ids (may contain the mask token) -> (B, L, D), bidirectional."""

    bidirectional = True

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
    ) -> None:
        super().__init__()
        self.n_items = n_items
        self.max_len = max_len
        self.mask_token = mask_token_id(n_items)
        # row 0 padding, rows 1..n_items items, row n_items + 1 the mask token
        self.item_embedding = nn.Embedding(n_items + 2, hidden_size, padding_idx=0)
        self.positional_input = PositionalInput(hidden_size, max_len, dropout)
        self.encoder = TransformerEncoder(
            num_layers,
            hidden_size,
            num_heads,
            inner_size or 4 * hidden_size,
            dropout,
            attention_dropout,
            causal=False,
        )
        init_normal_(self, init_std)

    def forward(self, item_ids: Tensor, last_only: bool = False) -> Tensor:
        """(B, L) -> (B, L, D); `last_only` -> (B, 1, D), the last column's state only."""
        is_item = item_ids != 0  # (B, L); the mask token is a real key
        hidden = self.positional_input(self.item_embedding(item_ids))  # (B, L, D)
        return self.encoder(hidden, is_item, last_only)  # (B, L, D) or (B, 1, D)

    def forward_parts(self, inputs: list[Tensor]) -> list[Tensor]:
        """The (B_p, W_p) parts of one training batch -> their (B_p, W_p, D) states. On CPU the
        blocks run once over all parts' real items (0 at padding); elsewhere, part by part."""
        if not self.encoder.packs(inputs[0].device):
            return [self(ids) for ids in inputs]
        return encode_parts(self.item_embedding, self.positional_input, self.encoder, inputs)

    def predict_hidden(self, item_ids: Tensor) -> Tensor:
        """(B, L) histories -> (B, D): append the mask token and take its state.

        A batch narrower than max_len grows by one column; a full-width batch drops its oldest
        column. Either way the mask sits at position max_len - 1, where training put the last
        item, and a bucketed (narrow) batch loses no history item."""
        mask = torch.full_like(item_ids[:, :1], self.mask_token)  # (B, 1)
        history = item_ids if item_ids.shape[1] < self.max_len else item_ids[:, 1:]
        return self(torch.cat([history, mask], dim=1), last_only=True)[:, 0]
