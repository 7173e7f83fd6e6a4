"""Pairwise ranking losses of GRU4Rec with sampled negatives: BPR, BPR-max, TOP1, TOP1-max.

Definitions follow the study's notation; each is averaged over the N training positions.
The `-max` variants weight every negative by its softmax over the position's negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lossbench.losses.base import LossInputs, LossParams
from lossbench.losses.negatives import mean_over_positions, sampled_scores


def bpr(inputs: LossInputs, params: LossParams) -> Tensor:
    """-mean_j log sig(s(y) - s(n_j))."""
    positive, negative = sampled_scores(inputs, "bpr")
    per_position = F.logsigmoid(positive.unsqueeze(1) - negative).mean(-1)  # (N,)
    return -mean_over_positions(per_position)


def bpr_max(inputs: LossInputs, params: LossParams) -> Tensor:
    """-log sum_j softmax(s(n))_j sig(s(y) - s(n_j)), computed in log space for stability."""
    positive, negative = sampled_scores(inputs, "bpr-max")
    log_terms = F.log_softmax(negative, dim=-1) + F.logsigmoid(positive.unsqueeze(1) - negative)
    return -mean_over_positions(torch.logsumexp(log_terms, dim=-1))


def _top1_terms(positive: Tensor, negative: Tensor) -> Tensor:
    """(N, K) sig(s(n_j) - s(y)) + sig(s(n_j)^2)."""
    return torch.sigmoid(negative - positive.unsqueeze(1)) + torch.sigmoid(negative**2)


def top1(inputs: LossInputs, params: LossParams) -> Tensor:
    """mean_j [sig(s(n_j) - s(y)) + sig(s(n_j)^2)]."""
    positive, negative = sampled_scores(inputs, "top1")
    return mean_over_positions(_top1_terms(positive, negative).mean(-1))


def top1_max(inputs: LossInputs, params: LossParams) -> Tensor:
    """sum_j softmax(s(n))_j [sig(s(n_j) - s(y)) + sig(s(n_j)^2)]."""
    positive, negative = sampled_scores(inputs, "top1-max")
    weights = torch.softmax(negative, dim=-1)  # (N, K)
    return mean_over_positions((weights * _top1_terms(positive, negative)).sum(-1))
