"""Two full-catalogue softmax losses written plainly with `F.cross_entropy`.

`plain_ce` computes what lossbench's `improved` computes (softmax cross-entropy over items
1..n_items at every training position), without its fused, memory-bounded kernel: a
comparison of the two should find no significant difference. `focal_ce` is the focal variant
(Lin et al., 2017): each position's term is scaled by (1 - p_target) ** gamma, which shifts
the weight towards positions the model still gets wrong.

Both follow the lossbench loss protocol `fn(inputs: LossInputs, params: LossParams) -> Tensor`:
`inputs.hidden` (N, D) are the hidden states at the N training positions, `inputs.targets`
(N,) their true items in 1..n_items, `inputs.item_embeddings` (n_items + 1, D) the item
table, whose row 0 is padding and must never be scored.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lossbench.losses import CATALOGUE, LossInputs, LossParams, LossSpec

GAMMA = 2.0  # the focal exponent; 0 gives plain_ce


def catalogue_logits(inputs: LossInputs) -> Tensor:
    """(N, n_items) scores of items 1..n_items: row 0 of the table (padding) is left out,
    so class c is item c + 1."""
    return inputs.hidden @ inputs.item_embeddings[1:].T


def plain_ce(inputs: LossInputs, params: LossParams) -> Tensor:
    """Full-catalogue softmax CE at every position, with F.cross_entropy."""
    return F.cross_entropy(catalogue_logits(inputs), inputs.targets - 1)


def focal_ce(inputs: LossInputs, params: LossParams) -> Tensor:
    """Focal full-catalogue softmax CE: mean of -(1 - p_y) ** gamma * log p_y."""
    log_p = -F.cross_entropy(catalogue_logits(inputs), inputs.targets - 1, reduction="none")
    return -((1.0 - log_p.exp()) ** GAMMA * log_p).mean()  # (N,) -> scalar


PLAIN_CE = LossSpec(
    fn=plain_ce,
    positions="all",
    negatives=0,
    description="full-catalogue softmax CE at every position, with F.cross_entropy",
    needs=CATALOGUE,
)
FOCAL_CE = LossSpec(
    fn=focal_ce,
    positions="all",
    negatives=0,
    description=f"focal (gamma = {GAMMA:g}) full-catalogue softmax CE at every position",
    needs=CATALOGUE,
)
