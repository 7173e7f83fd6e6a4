"""GRU4Rec (Hidasi et al., ICLR 2016) in its RecBole / study form: item embedding -> dropout
-> GRU -> (projection back to the embedding width when it differs) -> a state per position."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from lossbench.models.dropout import Dropout


class GRU4RecConfig(BaseModel):
    """Width 64, one GRU layer, embedding dropout 0.5, max_len 50. The study's code base ran a
    wider GRU (state 128, projected back to embeddings of 64, no gate biases, xavier init):
    the `study-s3rec` preset sets that (docs/protocol.md, "GRU4Rec against the study's
    code")."""

    model_config = ConfigDict(extra="forbid")

    hidden_size: int = Field(64, ge=1, description="GRU state width")
    embedding_size: int | None = Field(
        None, ge=1, description="item embedding width D; None means hidden_size"
    )
    num_layers: int = Field(1, ge=1, description="stacked GRU layers")
    bias: bool = Field(True, description="GRU gate biases (the study's code has none)")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout on the item embeddings")
    max_len: int = Field(50, ge=1, description="longest history the model reads")
    init_std: float = Field(0.02, gt=0.0, description="std of the normal embedding init")
    init: Literal["normal", "xavier"] = Field(
        "normal",
        description="normal: embeddings and projection ~ N(0, init_std); xavier: RecBole's and "
        "the study's (xavier-normal embeddings, PyTorch's default projection init)",
    )


class GRU4Rec(nn.Module):
    """(B, L) left-padded item ids -> (B, L, D); position t sees items at <= t only.

    Left padding would feed the GRU padding steps before the first item and change its state
    (a GRU step on a zero input from a zero state is not zero: biases). So each row is rotated
    to start with its first real item, the GRU runs over the rotated batch (the padding now
    trails the items, where it cannot reach them), and the states are rotated back. Real
    positions' outputs are therefore exactly independent of the amount of left padding."""

    bidirectional = False

    def __init__(
        self,
        n_items: int,
        *,
        hidden_size: int,
        embedding_size: int | None,
        num_layers: int,
        bias: bool,
        dropout: float,
        max_len: int,
        init_std: float,
        init: Literal["normal", "xavier"],
    ) -> None:
        super().__init__()
        self.n_items = n_items
        self.max_len = max_len
        width = embedding_size or hidden_size
        # row 0 padding, rows 1..n_items items; also the scoring table
        self.item_embedding = nn.Embedding(n_items + 1, width, padding_idx=0)
        self.dropout = Dropout(dropout)
        self.gru = nn.GRU(width, hidden_size, num_layers=num_layers, bias=bias, batch_first=True)
        self.projection: nn.Module = (
            nn.Linear(hidden_size, width) if hidden_size != width else nn.Identity()
        )
        self._init_weights(init_std, init)

    def _init_weights(self, std: float, scheme: Literal["normal", "xavier"]) -> None:
        # GRU matrices xavier-uniform and zero biases, if any (RecBole's GRU4Rec init).
        # normal: embeddings / projection ~ N(0, std), as the transformers; xavier: embeddings
        # xavier-normal (std sqrt(2 / (rows + D)), 0.013 on 12k items), the projection keeps
        # nn.Linear's own init (uniform +-1 / sqrt(H), 2.5x the normal's 0.02 at H = 128).
        # The padding row is zero either way.
        if scheme == "xavier":
            nn.init.xavier_normal_(self.item_embedding.weight)
        else:
            nn.init.normal_(self.item_embedding.weight, mean=0.0, std=std)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        for name, parameter in self.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_uniform_(parameter)
            else:
                nn.init.zeros_(parameter)
        if isinstance(self.projection, nn.Linear) and scheme == "normal":
            nn.init.normal_(self.projection.weight, mean=0.0, std=std)
            nn.init.zeros_(self.projection.bias)

    def forward(self, item_ids: Tensor) -> Tensor:
        width = item_ids.shape[1]
        n_padding = width - (item_ids != 0).sum(dim=1, keepdim=True)  # (B, 1)
        columns = torch.arange(width, device=item_ids.device)  # (L,)
        # rotated column j holds original column j + n_padding: items first, padding after
        to_rotated = (columns + n_padding) % width  # (B, L)
        from_rotated = (columns - n_padding) % width  # (B, L) the inverse rotation
        rotated_ids = item_ids.gather(1, to_rotated)  # (B, L)
        states, _ = self.gru(self.dropout(self.item_embedding(rotated_ids)))  # (B, L, H)
        states = self.projection(states)  # (B, L, D)
        index = from_rotated.unsqueeze(-1).expand(-1, -1, states.shape[-1])  # (B, L, D)
        return states.gather(1, index)  # (B, L, D), back in left-padded order

    def predict_hidden(self, item_ids: Tensor) -> Tensor:
        """(B, L) histories -> (B, D): the last column's state scores the next item."""
        return self(item_ids)[:, -1]
