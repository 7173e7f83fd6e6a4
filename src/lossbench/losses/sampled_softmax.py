"""Sampled softmax cross-entropy (`sampled-ce`, CE- of Klenitskiy & Vasilev, RecSys 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lossbench.losses.base import LossInputs, LossParams
from lossbench.losses.negatives import mean_over_positions, sampled_scores


def sampled_ce(inputs: LossInputs, params: LossParams) -> Tensor:
    """-mean_n log softmax([s(y), s(n_1), ..., s(n_K)])[0]: the positive is class 0."""
    positive, negative = sampled_scores(inputs, "sampled-ce")
    logits = torch.cat([positive.unsqueeze(1), negative], dim=1)  # (N, 1 + K)
    zeros = torch.zeros(logits.shape[0], dtype=torch.int64, device=logits.device)
    return mean_over_positions(F.cross_entropy(logits, zeros, reduction="none"))
