"""Evaluation: rank each user's target (full catalogue or sampled) and turn ranks into metrics,
with the items the user already has excluded by a declared rule (`seen.py`)."""

from __future__ import annotations

from lossbench.evaluation.metrics import NOT_FOUND_RANK, metrics_from_ranks, per_user_metric
from lossbench.evaluation.ranking import (
    batch_seen_pairs,
    full_ranking_ranks,
    full_ranking_topk,
    masked_scores,
    sample_eval_candidates,
    sampled_ranks,
    targets_in_history,
)
from lossbench.evaluation.seen import SEEN_RULE_NOTES, SeenRule, SeenTargets, seen_rule

__all__ = [
    "NOT_FOUND_RANK",
    "SEEN_RULE_NOTES",
    "SeenRule",
    "SeenTargets",
    "batch_seen_pairs",
    "full_ranking_ranks",
    "full_ranking_topk",
    "masked_scores",
    "metrics_from_ranks",
    "per_user_metric",
    "sample_eval_candidates",
    "sampled_ranks",
    "seen_rule",
    "targets_in_history",
]
