"""The popularity floor: every user gets the training data's most popular items, ranked by the
run's own evaluators (same seen-items rule, same candidates, same metrics code).

A run that cannot beat this on validation learned nothing a count would not give: it is
`collapsed` (see `is_collapsed`), and a comparison shows it but leaves it out of its means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lossbench.evaluation.metrics import metrics_from_ranks
from lossbench.training.evaluate import Evaluator


class PopularityScorer(nn.Module):
    """Scores item i by its training count: a one-dimensional "embedding" of counts and a
    hidden state of 1 for every user, so the evaluators rank it like any model.

    Items with equal counts tie, and ties count against the target (ranking.py): the floor is
    never flattered by an arbitrary order among equally popular items."""

    def __init__(self, item_counts: Tensor, device: torch.device) -> None:
        super().__init__()
        self.n_items = len(item_counts) - 1
        counts = item_counts.to(device=device, dtype=torch.float32).unsqueeze(1)  # (I + 1, 1)
        self.item_embedding = nn.Embedding.from_pretrained(counts, freeze=True)

    def forward(self, item_ids: Tensor) -> Tensor:
        return torch.ones(*item_ids.shape, 1, device=item_ids.device)  # (B, L, 1)

    def predict_hidden(self, item_ids: Tensor) -> Tensor:
        return torch.ones(item_ids.shape[0], 1, device=item_ids.device)  # (B, 1)


def popularity_metrics(
    item_counts: Tensor,
    device: torch.device,
    evaluators: dict[str, Evaluator],
    ks: Sequence[int],
) -> dict[str, dict[str, float]]:
    """{split: {metric: value}} of the popularity ranking on each evaluator's users."""
    scorer = PopularityScorer(item_counts, device)
    return {
        split: metrics_from_ranks(evaluator.evaluate(scorer).ranks, list(ks))
        for split, evaluator in evaluators.items()
    }


def is_collapsed(
    best_valid: dict[str, Any],
    popularity_valid: dict[str, Any] | None,
    metric: str,
    losses: Sequence[float],
) -> bool:
    """A finished run is collapsed when a training loss was not finite, or its best
    validation `metric` is not above the popularity ranking's."""
    if any(not math.isfinite(loss) for loss in losses):
        return True
    if popularity_valid is None or metric not in popularity_valid:
        return False
    best = float(best_valid.get(metric, math.nan))
    return not best > float(popularity_valid[metric])  # NaN is collapsed too
