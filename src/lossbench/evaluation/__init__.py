"""Evaluation: rank each user's target (full catalogue or sampled) and turn ranks into metrics."""

from __future__ import annotations

from lossbench.evaluation.metrics import metrics_from_ranks, per_user_metric
from lossbench.evaluation.ranking import (
    batch_seen_pairs,
    full_ranking_ranks,
    full_ranking_topk,
    masked_scores,
    sample_eval_candidates,
    sampled_ranks,
)

__all__ = [
    "batch_seen_pairs",
    "full_ranking_ranks",
    "full_ranking_topk",
    "masked_scores",
    "metrics_from_ranks",
    "per_user_metric",
    "sample_eval_candidates",
    "sampled_ranks",
]
