"""SASRec (Kang & McAuley, ICDM 2018) as in the S3Rec code the study used: causal
self-attention over item + learned position embeddings, post-LayerNorm blocks, GELU
feed-forward, dropout on attention and hidden."""

from __future__ import annotations

from torch import Tensor, nn

from lossbench.models.transformer import (
    PositionalInput,
    TransformerConfig,
    TransformerEncoder,
    encode_parts,
    init_normal_,
)


class SASRecConfig(TransformerConfig):
    """The study's Table 2 (S3Rec-code) defaults: hidden 64, 2 layers, 2 heads, dropout 0.5
    on attention and hidden, max_len 50, init std 0.02."""


class SASRec(nn.Module):
    """(B, L) left-padded item ids -> (B, L, D); position t sees items at <= t only."""

    bidirectional = False

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
        # row 0 padding, rows 1..n_items items
        self.item_embedding = nn.Embedding(n_items + 1, hidden_size, padding_idx=0)
        self.positional_input = PositionalInput(hidden_size, max_len, dropout)
        self.encoder = TransformerEncoder(
            num_layers,
            hidden_size,
            num_heads,
            inner_size or 4 * hidden_size,
            dropout,
            attention_dropout,
            causal=True,
        )
        init_normal_(self, init_std)

    def forward(self, item_ids: Tensor, last_only: bool = False) -> Tensor:
        """(B, L) -> (B, L, D); `last_only` -> (B, 1, D), the last column's state only."""
        is_item = item_ids != 0  # (B, L)
        hidden = self.positional_input(self.item_embedding(item_ids))  # (B, L, D)
        return self.encoder(hidden, is_item, last_only)  # (B, L, D) or (B, 1, D)

    def forward_parts(self, inputs: list[Tensor]) -> list[Tensor]:
        """The (B_p, W_p) parts of one training batch -> their (B_p, W_p, D) states. On CPU the
        blocks run once over all parts' real items (0 at padding); elsewhere, part by part."""
        if not self.encoder.packs(inputs[0].device):
            return [self(ids) for ids in inputs]
        return encode_parts(self.item_embedding, self.positional_input, self.encoder, inputs)

    def predict_hidden(self, item_ids: Tensor) -> Tensor:
        """(B, L) histories -> (B, D): the last column's state scores the next item."""
        return self(item_ids, last_only=True)[:, 0]
