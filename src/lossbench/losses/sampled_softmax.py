"""Sampled softmax cross-entropy (`sampled-ce`, CE- of Klenitskiy & Vasilev, RecSys 2023).

With `log_q` (the logQ correction of Yi et al., RecSys 2019), every logit of the sampled
softmax, the positive's included, becomes s(i) - log Q(i), Q the sampler's probability of item
i: the softmax over a sample drawn by Q then estimates the full softmax without the sampler's
popularity bias. Under a uniform Q the shift is the same for every logit and changes nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lossbench.losses.base import LossInputs, LossParams
from lossbench.losses.negatives import mean_over_positions, sampled_scores


def sampled_ce(inputs: LossInputs, params: LossParams) -> Tensor:
    """-mean_n log softmax([s(y), s(n_1), ..., s(n_K)])[0]: the positive is class 0."""
    positive, negative = sampled_scores(inputs, "sampled-ce")
    if inputs.log_q is not None:
        positive = positive - inputs.log_q[inputs.targets]  # (N,)
        negative = negative - inputs.log_q[inputs.negatives]  # (N, K)
    logits = torch.cat([positive.unsqueeze(1), negative], dim=1)  # (N, 1 + K)
    zeros = torch.zeros(logits.shape[0], dtype=torch.int64, device=logits.device)
    return mean_over_positions(F.cross_entropy(logits, zeros, reduction="none"))
