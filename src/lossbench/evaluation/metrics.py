"""Ranking metrics from the rank of each user's single target (rank 1 is the best).

HR@k: rank <= k. NDCG@k: 1 / log2(rank + 1) when rank <= k (one relevant item, so the ideal
DCG is 1). Recall@k equals HR@k with one target per user. MRR: 1 / rank. Float64 throughout.
A target that cannot be recommended (`--seen-targets miss`) has rank `NOT_FOUND_RANK`, worse
than any real rank, and adds exactly 0 to every metric.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from torch import Tensor

from lossbench.errors import LossbenchError

_METRIC_NAME = re.compile(r"^(hr|ndcg|recall)@([1-9][0-9]*)$|^mrr$")
# Far above any catalogue size, exact in float64 and int64 (in files as 4611686018427387904).
NOT_FOUND_RANK = 2**62


def _as_ranks(ranks: Tensor | np.ndarray) -> np.ndarray:
    values = ranks.detach().cpu().numpy() if isinstance(ranks, Tensor) else np.asarray(ranks)
    values = values.astype(np.float64).reshape(-1)
    if values.size == 0:
        raise LossbenchError("no users to evaluate: the ranks are empty")
    if (values < 1).any():
        raise LossbenchError("ranks start at 1; got a rank below 1")
    return np.where(values >= NOT_FOUND_RANK, np.inf, values)  # 1 / inf = 0: never found


def per_user_metric(ranks: Tensor | np.ndarray, name: str) -> np.ndarray:
    """(U,) float64 value of one metric ('hr@10', 'ndcg@5', 'recall@20', 'mrr') per user."""
    match = _METRIC_NAME.match(name)
    if match is None:
        raise LossbenchError(f"unknown metric '{name}'; use hr@K, ndcg@K, recall@K (K >= 1) or mrr")
    values = _as_ranks(ranks)
    if name == "mrr":
        return 1.0 / values
    kind, k = match.group(1), int(match.group(2))
    hit = values <= k
    if kind == "ndcg":
        return np.where(hit, 1.0 / np.log2(values + 1.0), 0.0)
    return hit.astype(np.float64)  # hr and recall coincide with one target per user


def metrics_from_ranks(
    ranks: Tensor | np.ndarray, ks: Sequence[int] = (1, 5, 10, 20)
) -> dict[str, float]:
    """Means over users: hr@k, ndcg@k, recall@k for each k, then mrr."""
    values = _as_ranks(ranks)
    result: dict[str, float] = {}
    for k in ks:
        for kind in ("hr", "ndcg", "recall"):
            name = f"{kind}@{k}"
            result[name] = float(per_user_metric(values, name).mean())
    result["mrr"] = float(per_user_metric(values, "mrr").mean())
    return result
