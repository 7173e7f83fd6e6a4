"""Ranking the target item: full catalogue ranking and sampled ranking.

Ranks start at 1 and count every item scoring >= the target, so ties count against the
target: a model whose scores collapse to a constant gets the worst rank, never the best.
NaN scores count as -inf. Only items 1..n_items are ranked (never padding or mask ids).
Scores are computed in float32 with autocast off: bf16 scores would create spurious ties.
Seen items are excluded by passing their (row, item) pairs; a target among them follows the
`seen_targets` rule (see `seen.py`): `miss` gives it `NOT_FOUND_RANK`, `rank` still ranks it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lossbench.errors import LossbenchError
from lossbench.evaluation.metrics import NOT_FOUND_RANK
from lossbench.evaluation.seen import SeenTargets


def _scores(hidden: Tensor, rows: Tensor) -> Tensor:
    """hidden (B, D) x rows (..., D) -> fp32 scores, NaN replaced by -inf."""
    with torch.autocast(hidden.device.type, enabled=False):
        if rows.ndim == 2:
            scores = hidden.float() @ rows.float().T  # (B, n_items)
        else:
            scores = torch.bmm(rows.float(), hidden.float().unsqueeze(-1)).squeeze(-1)  # (B, N)
    return scores.masked_fill_(torch.isnan(scores), float("-inf"))  # in place: no 2nd copy


def masked_scores(
    hidden: Tensor,
    item_embeddings: Tensor,
    targets: Tensor,
    seen_rows: Tensor,
    seen_items: Tensor,
    seen_targets: SeenTargets = "miss",
) -> Tensor:
    """(B, n_items) fp32 scores of items 1..n_items (column i - 1 is item i).

    Seen items (pairs row index, item id) get -inf. A seen target is masked too under `miss`;
    under `rank` each row's target keeps its score. NaN scores become -inf.
    """
    scores = _scores(hidden, item_embeddings[1:])  # (B, n_items)
    rows = torch.arange(scores.shape[0], device=scores.device)
    target_scores = scores[rows, targets - 1]  # (B,)
    scores.index_put_(
        (seen_rows, seen_items - 1), torch.tensor(float("-inf"), device=scores.device)
    )
    if seen_targets == "rank":
        scores[rows, targets - 1] = target_scores  # the target itself stays rankable
    return scores


def targets_in_history(targets: Tensor, seen_rows: Tensor, seen_items: Tensor) -> Tensor:
    """(B,) bool: row b's target is among its seen (row, item) pairs. O(S), no Python loop."""
    repeated = torch.zeros(len(targets), dtype=torch.bool, device=targets.device)
    hits = seen_items == targets[seen_rows]  # (S,)
    return repeated.index_fill_(0, seen_rows[hits], True)


def full_ranking_ranks(
    hidden: Tensor,
    item_embeddings: Tensor,
    targets: Tensor,
    seen_rows: Tensor,
    seen_items: Tensor,
    seen_targets: SeenTargets = "miss",
) -> Tensor:
    """(B,) int64 rank of each target among items 1..n_items, seen items excluded.

    hidden (B, D); item_embeddings (n_items + 1, D), row 0 padding; targets (B,) in
    1..n_items; seen_rows / seen_items (S,) pairs (batch row, item id), S may be 0.
    A seen target ranks among the unseen items (`rank`) or gets `NOT_FOUND_RANK` (`miss`).

    Same ranks as counting on `masked_scores`, computed faster: scores are laid out
    (n_items, B) (that matmul runs ~1.5x faster on CPU than (B, n_items)), the comparison
    overwrites them in place with 1.0 / 0.0 and a float column sum counts them (exact below
    2^24 items). NaN scores are never >= anything, which is what -inf does against a target
    above -inf; a target at -inf or NaN ties with everything and gets the worst rank.
    """
    n_items = item_embeddings.shape[0] - 1
    with torch.autocast(hidden.device.type, enabled=False):
        scores = item_embeddings[1:].float() @ hidden.float().T  # (n_items, B)
    columns = torch.arange(scores.shape[1], device=scores.device)
    target_scores = scores[targets - 1, columns]  # (B,)
    scores.index_put_(
        (seen_items - 1, seen_rows), torch.tensor(float("-inf"), device=scores.device)
    )
    scores[targets - 1, columns] = target_scores  # never mask the target itself
    counts = scores.ge_(target_scores.unsqueeze(0)).sum(dim=0)  # (B,) counts the target: >= 1
    worst = torch.isnan(target_scores) | (target_scores == float("-inf"))
    ranks = torch.where(worst, n_items, counts.to(torch.int64))
    if seen_targets == "miss":
        missed = targets_in_history(targets, seen_rows, seen_items)
        ranks = torch.where(missed, NOT_FOUND_RANK, ranks)
    return ranks


def full_ranking_topk(
    hidden: Tensor,
    item_embeddings: Tensor,
    targets: Tensor,
    seen_rows: Tensor,
    seen_items: Tensor,
    k: int,
    seen_targets: SeenTargets = "miss",
) -> Tensor:
    """(B, k) int64 item ids, best first, consistent with `full_ranking_ranks`.

    The target's score is nudged to the next float below it, so among equal scores it comes
    last: its position in the list + 1 equals its rank whenever that rank is <= k. Under
    `miss` a seen target stays masked, so it is never in the list.
    """
    scores = masked_scores(hidden, item_embeddings, targets, seen_rows, seen_items, seen_targets)
    rows = torch.arange(scores.shape[0], device=scores.device)
    target_scores = scores[rows, targets - 1]
    nudged = torch.nextafter(target_scores, torch.full_like(target_scores, -1e38))
    if seen_targets == "miss":  # nudging -inf up would unmask a seen target
        nudged = torch.where(
            targets_in_history(targets, seen_rows, seen_items), target_scores, nudged
        )
    scores[rows, targets - 1] = nudged
    return torch.topk(scores, min(k, scores.shape[1]), dim=1).indices + 1


def sampled_ranks(
    hidden: Tensor,
    item_embeddings: Tensor,
    targets: Tensor,
    candidates: Tensor,
    missed: Tensor | None = None,
) -> Tensor:
    """(B,) int64 rank of each target among itself and its N candidates (B, N), ties against.

    `missed` (B,) bool marks targets that count as not found (seen targets under `miss`):
    they get `NOT_FOUND_RANK`.
    """
    target_scores = _scores(hidden, item_embeddings[targets].unsqueeze(1))  # (B, 1)
    candidate_scores = _scores(hidden, item_embeddings[candidates])  # (B, N)
    ranks = 1 + (candidate_scores >= target_scores).sum(dim=1)
    return ranks if missed is None else torch.where(missed, NOT_FOUND_RANK, ranks)


def batch_seen_pairs(offsets: Tensor, items: Tensor, user_rows: Tensor) -> tuple[Tensor, Tensor]:
    """Seen (batch row, item id) pairs for the users `user_rows` (B,) of a CSR history.

    offsets (U + 1,) int64 and items (T,) int64 on the evaluation device; row b of the batch
    gets items[offsets[u]:offsets[u + 1]] for u = user_rows[b]. Vectorized, no Python loop.
    """
    starts, ends = offsets[user_rows], offsets[user_rows + 1]
    lengths = ends - starts  # (B,)
    batch_rows = torch.repeat_interleave(torch.arange(len(user_rows), device=items.device), lengths)
    # position of each pair inside its user's slice: global index - first index of its row
    first = torch.cumsum(lengths, 0) - lengths  # (B,)
    within = torch.arange(len(batch_rows), device=items.device) - first[batch_rows]
    return batch_rows, items[starts[batch_rows] + within]


SamplingBy = Literal["uniform", "popularity"]
_MAX_REJECTION_ROUNDS = 64


def sample_eval_candidates(
    n_negatives: int,
    n_items: int,
    seen_offsets: np.ndarray | Tensor,
    seen_items: np.ndarray | Tensor,
    targets: np.ndarray | Tensor,
    by: SamplingBy = "uniform",
    item_counts: np.ndarray | Tensor | None = None,
    seed: int = 0,
) -> Tensor:
    """(U, N) int64 CPU candidates per user: distinct, never seen, never the target.

    seen_offsets (U + 1,) / seen_items (T,) are the users' histories in CSR form; targets (U,).
    `popularity` draws proportionally to `item_counts` (indexed by item id, entry 0 ignored).
    Rejection sampling on sorted user * (n_items + 1) + item keys, resampling collisions a few
    rounds; the rare rows still short after that are drawn exactly (weighted random keys).
    Deterministic per seed.
    """
    offsets, items = _int64(seen_offsets), _int64(seen_items)
    target_ids = _int64(targets)
    n_users, width = len(target_ids), n_items + 1
    weights = _sampling_weights(n_items, by, item_counts)  # (n_items,) float64
    users_of_seen = np.repeat(np.arange(n_users), np.diff(offsets))
    forbidden = np.unique(
        np.concatenate([users_of_seen * width + items, np.arange(n_users) * width + target_ids])
    )  # sorted keys user * width + item
    forbidden_drawable = np.bincount(
        forbidden // width, weights=weights[forbidden % width - 1] > 0, minlength=n_users
    )
    short = int(np.count_nonzero(weights > 0)) - forbidden_drawable < n_negatives
    if n_users and short.any():
        raise LossbenchError(
            f"{int(short.sum())} users have fewer than {n_negatives} unseen items to sample "
            "as evaluation candidates; lower the number of sampled negatives"
        )
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(weights) / weights.sum()
    cdf[-1] = 1.0

    def draw(size: int | tuple[int, int]) -> np.ndarray:
        picked = np.searchsorted(cdf, rng.random(size), side="right")
        return np.minimum(picked, n_items - 1) + 1

    user_column = np.arange(n_users)[:, None] * width  # (U, 1)
    candidates = draw((n_users, n_negatives))
    for _ in range(_MAX_REJECTION_ROUNDS):
        invalid = _in_sorted(user_column + candidates, forbidden) | _later_duplicates(candidates)
        if not invalid.any():
            return torch.from_numpy(candidates)
        candidates[invalid] = draw(int(invalid.sum()))
    invalid = _in_sorted(user_column + candidates, forbidden) | _later_duplicates(candidates)
    rows = np.flatnonzero(invalid.any(axis=1))
    candidates[rows] = _exact_rows(rows, forbidden, width, weights, n_negatives, rng)
    return torch.from_numpy(candidates)


def _int64(values: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().numpy().astype(np.int64, copy=False)
    return np.asarray(values, dtype=np.int64)


def _sampling_weights(
    n_items: int, by: SamplingBy, item_counts: np.ndarray | Tensor | None
) -> np.ndarray:
    if by == "uniform":
        return np.ones(n_items, dtype=np.float64)
    if by != "popularity":
        raise LossbenchError(f"unknown candidate sampler '{by}'; valid: uniform, popularity")
    if item_counts is None:
        raise LossbenchError("popularity sampling needs item_counts")
    counts = _int64(item_counts)[1:].astype(np.float64)
    if counts.shape != (n_items,) or (counts < 0).any() or counts.sum() <= 0:
        raise LossbenchError("item_counts must hold n_items + 1 non-negative counts, some > 0")
    return counts


def _in_sorted(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Boolean mask of `keys` present in the sorted 1-d array `sorted_keys`."""
    if len(sorted_keys) == 0:
        return np.zeros(keys.shape, dtype=bool)
    index = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[index] == keys


def _later_duplicates(candidates: np.ndarray) -> np.ndarray:
    """(U, N) True where a value already appeared earlier in its row."""
    order = np.argsort(candidates, axis=1, kind="stable")
    ordered = np.take_along_axis(candidates, order, axis=1)
    repeated = np.zeros(candidates.shape, dtype=bool)
    repeated[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    duplicates = np.zeros(candidates.shape, dtype=bool)
    np.put_along_axis(duplicates, order, repeated, axis=1)
    return duplicates


def _exact_rows(
    rows: np.ndarray,
    forbidden: np.ndarray,
    width: int,
    weights: np.ndarray,
    n_negatives: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """(R, N) weighted sampling without replacement for `rows` (Efraimidis-Spirakis keys)."""
    with np.errstate(divide="ignore"):
        keys = -np.log(rng.random((len(rows), len(weights)))) / weights  # (R, n_items)
    users, items = forbidden // width, forbidden % width
    keep = np.isin(users, rows)
    keys[np.searchsorted(rows, users[keep]), items[keep] - 1] = np.inf
    return np.argpartition(keys, n_negatives - 1, axis=1)[:, :n_negatives] + 1
