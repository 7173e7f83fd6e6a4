"""Dropout that is cheap on CPU.

`torch.nn.Dropout` draws its mask with `bernoulli_`, which on CPU costs about 4x a uniform
draw (13 ms against 3 ms for a 256 x 50 x 64 batch); with dropout on embeddings, attention
and every block, that was an eighth of a SASRec training step. Here the mask is
`uniform >= p`: each element is kept with probability 1 - p, as with `bernoulli_`, and kept
elements are scaled by 1 / (1 - p). On GPU the fused kernel of `F.dropout` is already fast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout: zero each element with probability p, scale the rest by 1 / (1 - p)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    # ge_ in place writes 1.0 / 0.0 into the uniform draw itself: no bool mask, no cast.
    keep = torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))  # 0 or 1 / (1 - p)
    return x * keep


class Dropout(nn.Module):
    """Drop-in for `nn.Dropout` (same `p`, same train / eval behaviour)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor, dropout_p: float) -> Tensor:
    """softmax(q k^T / sqrt(d) where allowed) -> dropout -> @ v; shapes as in
    `F.scaled_dot_product_attention` with a bool (B, 1, Lq, Lk) `mask` (True = may attend).

    With dropout on CPU, SDPA falls back to this same math with the slow `bernoulli_`; without
    dropout, or on GPU, SDPA's fused kernels are used."""
    if dropout_p == 0.0 or query.device.type != "cpu":
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=dropout_p
        )
    scores = (query @ key.transpose(-2, -1)) * (1.0 / math.sqrt(query.shape[-1]))  # (B,H,Lq,Lk)
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return dropout(weights, dropout_p, training=True) @ value  # (B, H, Lq, D / H)
