"""Binary cross-entropy with sampled negatives: SASRec's `bce` and gSASRec's `gbce`.

Both are one kernel: -mean_n [beta * log sig(s_pos) + reduce_j log(1 - sig(s_neg_j))].
`bce` uses beta = 1 and averages the negatives; `gbce` (Petrov & Macdonald, RecSys 2023)
raises the positive probability to beta and sums the negatives as in the paper's equation.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from lossbench.errors import LossbenchError
from lossbench.losses.base import LossInputs, LossParams
from lossbench.losses.negatives import mean_over_positions, sampled_scores

NegativeReduction = Literal["mean", "sum"]


def binary_kernel(
    positive: Tensor, negative: Tensor, beta: float, negative_reduction: NegativeReduction
) -> Tensor:
    """positive (N,), negative (N, K) scores -> scalar binary cross-entropy.

    logsigmoid keeps it finite for large scores: log(1 - sig(s)) = logsigmoid(-s), and
    log(sig(s) ** beta) = beta * logsigmoid(s) never forms the (under/overflowing) power.
    """
    negative_terms = F.logsigmoid(-negative)  # (N, K)
    reduced = negative_terms.sum(-1) if negative_reduction == "sum" else negative_terms.mean(-1)
    return -mean_over_positions(beta * F.logsigmoid(positive) + reduced)


def gbce_beta(n_negatives: int, n_items: int, t: float) -> float:
    """gSASRec's beta = alpha * (t * (1 - 1/alpha) + 1/alpha), alpha = k / (n_items - 1)."""
    if n_negatives < 1 or n_items < 2:
        raise LossbenchError(
            f"gbce needs >= 1 negative and >= 2 items (got {n_negatives} and {n_items})"
        )
    alpha = n_negatives / (n_items - 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def bce(inputs: LossInputs, params: LossParams) -> Tensor:
    """SASRec's BCE: the negative term averaged over the K negatives of each position."""
    positive, negative = sampled_scores(inputs, "bce")
    return binary_kernel(positive, negative, beta=1.0, negative_reduction="mean")


def gbce(inputs: LossInputs, params: LossParams) -> Tensor:
    """gSASRec's gBCE with calibration `params.gbce_t`; negatives summed."""
    positive, negative = sampled_scores(inputs, "gbce")
    n_items = inputs.item_embeddings.shape[0] - 1
    beta = gbce_beta(negative.shape[-1], n_items, params.gbce_t)
    return binary_kernel(positive, negative, beta=beta, negative_reduction="sum")
