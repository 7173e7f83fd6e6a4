"""Sampled softmax cross-entropy: `sampled-ce` (CE- of Klenitskiy & Vasilev, RecSys 2023) and
`scaled-ce`, and the two logQ corrections of a sampled softmax.

- Standard logQ (Yi et al., RecSys 2019; `--logq standard`): every logit of the sampled
  softmax, the positive's included, becomes s(i) - log Q(i), Q the sampler's probability of
  item i: the softmax over a sample drawn by Q then estimates the full softmax without the
  sampler's popularity bias. Under a uniform Q the shift is the same for every logit and
  changes nothing.
- Corrected logQ (Khrylchenko et al., "Correcting the LogQ Correction", RecSys 2025, arXiv
  2507.09331; the authors' code NonameUntitled/logq, `train_in_batch_logq_new.py` and
  `train_mns_log_new.py`; `--logq corrected`): the positive is left out of the normaliser,
  the negatives are corrected by Q_j = f_j / (sum f - f_pos) (the sampler's frequencies with
  the positive's own taken out, since a negative is never the positive), and each position's
  loss is weighted by a detached 1 - p(positive), p from the softmax over the positive and the
  corrected negatives lowered by log K. In float64, as the authors compute it. lossbench
  computes log-sum-exp directly where the authors clamp exp ratios at 1e-10.
- Scaled CE (Xu et al., arXiv 2408.14238; the authors' code MTandHJ/CE-SCE-LLMRec,
  `--loss=SCE --alpha=100`, 500 uniform negatives): the negatives' sum of exponentials is
  multiplied by alpha (every negative logit + log alpha), which brings a sampled softmax's
  normaliser closer to the full catalogue's; alpha = 1 is `sampled-ce`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lossbench.errors import LossbenchError
from lossbench.losses.base import LossInputs, LossParams
from lossbench.losses.negatives import mean_over_positions, sampled_scores


def sampled_ce(inputs: LossInputs, params: LossParams) -> Tensor:
    """-mean_n log softmax([s(y), s(n_1), ..., s(n_K)])[0]: the positive is class 0."""
    if params.logq_correction == "corrected":
        return corrected_logq_ce(inputs)
    positive, negative = sampled_scores(inputs, "sampled-ce")
    if inputs.log_q is not None:
        positive = positive - inputs.log_q[inputs.targets]  # (N,)
        negative = negative - inputs.log_q[inputs.negatives]  # (N, K)
    return _positive_class_ce(positive, negative)


def scaled_ce(inputs: LossInputs, params: LossParams) -> Tensor:
    """-mean_n log(e^s(y) / (e^s(y) + alpha sum_k e^s(n_k)))."""
    if params.scaled_ce_alpha <= 0:
        raise LossbenchError(f"scaled-ce needs alpha > 0, got {params.scaled_ce_alpha}")
    positive, negative = sampled_scores(inputs, "scaled-ce")
    return _positive_class_ce(positive, negative + math.log(params.scaled_ce_alpha))


def corrected_logq_ce(inputs: LossInputs) -> Tensor:
    """mean_n w_n (logsumexp_k (s(n_k) - log Q_nk) - s(y_n)), w_n = 1 - p_n detached."""
    positive, negative = sampled_scores(inputs, "sampled-ce")
    frequencies = inputs.item_frequencies
    if frequencies is None or inputs.negatives is None:
        raise LossbenchError(
            "the corrected logQ needs the sampler's item frequencies (LossInputs."
            "item_frequencies); the trainer supplies them with --logq corrected"
        )
    frequencies = frequencies.to(torch.float64)
    total = frequencies[1:].sum()
    # log Q_nk = log f_k - log(sum f - f_{y_n}): (N, K), float64 (a popular positive takes
    # most of the mass; fp32 would round total - f_y badly).
    log_q = (
        frequencies[inputs.negatives].log() - (total - frequencies[inputs.targets]).log()[:, None]
    )
    positive64 = positive.to(torch.float64)  # (N,)
    corrected = negative.to(torch.float64) - log_q  # (N, K)
    per_position = torch.logsumexp(corrected, dim=1) - positive64  # positive not in the sum
    with torch.no_grad():
        count = math.log(corrected.shape[1])
        both = torch.cat([positive64[:, None], corrected - count], dim=1)  # (N, 1 + K)
        weight = 1.0 - torch.softmax(both, dim=1)[:, 0]  # (N,)
    return mean_over_positions(per_position * weight).to(positive.dtype)


def _positive_class_ce(positive: Tensor, negative: Tensor) -> Tensor:
    logits = torch.cat([positive.unsqueeze(1), negative], dim=1)  # (N, 1 + K)
    zeros = torch.zeros(logits.shape[0], dtype=torch.int64, device=logits.device)
    return mean_over_positions(F.cross_entropy(logits, zeros, reduction="none"))
