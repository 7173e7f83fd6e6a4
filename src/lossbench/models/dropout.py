"""Dropout that is cheap on CPU.

`torch.nn.Dropout` draws its mask with `bernoulli_`, and even a `rand_like` mask costs one
serial Mersenne-Twister draw per element: with dropout 0.5 on embeddings, attention weights and
every block, that was about a tenth of a SASRec training step on beauty-s3rec. Here, when p is
a multiple of 1/256 (0.5, 0.25, 0.125...), each element reads a k-bit field of a random 32-bit
word (k = 1 for p = 0.5: 32 elements per draw) and is kept when the field is >= p * 2^k, which
happens with probability exactly 1 - p; other p use a `rand_like` mask (`uniform >= p`). Kept
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
    return x * keep_scale(x.shape, p, x.dtype)


def keep_scale(shape: torch.Size, p: float, dtype: torch.dtype) -> Tensor:
    """CPU tensor of `shape`: 1 / (1 - p) with probability 1 - p, else 0, independently."""
    field = _bit_field(p)
    if field is None:
        # ge_ in place writes 1.0 / 0.0 into the uniform draw itself: no bool mask, no cast.
        return torch.rand(shape, dtype=dtype).ge_(p).mul_(1.0 / (1.0 - p))
    bits, threshold = field
    per_word = 32 // bits
    count = math.prod(shape)
    words = torch.randint(
        -(2**31), 2**31, ((count + per_word - 1) // per_word, 1), dtype=torch.int32
    )
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)  # (per_word,)
    # (words, per_word) k-bit fields, uniform on 0 .. 2^k - 1 (the mask drops sign extension).
    fields = (words >> shifts).bitwise_and_((1 << bits) - 1)
    keep = fields.view(-1)[:count].view(shape).ge(threshold)  # P = 1 - threshold / 2^k = 1 - p
    return keep.to(dtype).mul_(1.0 / (1.0 - p))


def _bit_field(p: float) -> tuple[int, int] | None:
    """(k, m) with p = m / 2^k for the smallest k in 1, 2, 4, 8 (a k dividing 32), else None."""
    for bits in (1, 2, 4, 8):
        threshold = p * (1 << bits)
        if threshold == int(threshold):
            return bits, int(threshold)
    return None


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
    # In place on the fresh scores: two fewer (B, H, Lq, Lk) tensors per call.
    scores = (query @ key.transpose(-2, -1)).mul_(1.0 / math.sqrt(query.shape[-1]))
    weights = torch.softmax(scores.masked_fill_(~mask, float("-inf")), dim=-1)  # (B,H,Lq,Lk)
    return dropout(weights, dropout_p, training=True) @ value  # (B, H, Lq, D / H)
