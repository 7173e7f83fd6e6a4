"""BERT4Rec (Sun et al., CIKM 2019): the SASRec model attending both ways
(`SelfAttentionModel`, bidirectional), trained by masked-item prediction (`mlm`). The item
table has one extra row, the mask token (id n_items + 1); it is never scored (`scoring_table`
stops at n_items)."""

from __future__ import annotations

from lossbench.models.self_attention import SelfAttentionModel
from lossbench.models.transformer import TransformerConfig


class BERT4RecConfig(TransformerConfig):
    """Same defaults as SASRec (the study's Table 2 S3Rec-code setting), so the two differ only
    in attention direction and training objective."""


class BERT4Rec(SelfAttentionModel):
    """(B, L) left-padded item ids (may contain the mask token) -> (B, L, D), bidirectional."""

    direction = "bidirectional"
