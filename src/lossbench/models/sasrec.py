"""SASRec (Kang & McAuley, ICDM 2018) as in the S3Rec code the study used: causal
self-attention over item + learned position embeddings, post-LayerNorm blocks, GELU
feed-forward, dropout on attention and hidden (`SelfAttentionModel`, causal)."""

from __future__ import annotations

from lossbench.models.self_attention import SelfAttentionModel
from lossbench.models.transformer import TransformerConfig


class SASRecConfig(TransformerConfig):
    """The study's Table 2 (S3Rec-code) defaults: hidden 64, 2 layers, 2 heads, dropout 0.5
    on attention and hidden, max_len 50, init std 0.02."""


class SASRec(SelfAttentionModel):
    """(B, L) left-padded item ids -> (B, L, D); position t sees items at <= t only."""

    direction = "causal"
