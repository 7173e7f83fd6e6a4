"""Ranking (full and sampled), candidate sampling and metrics on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lossbench.errors import LossbenchError
from lossbench.evaluation import (
    batch_seen_pairs,
    full_ranking_ranks,
    full_ranking_topk,
    masked_scores,
    metrics_from_ranks,
    per_user_metric,
    sample_eval_candidates,
    sampled_ranks,
)
from lossbench.evaluation.metrics import NOT_FOUND_RANK
from lossbench.evaluation.ranking import SamplingBy
from lossbench.evaluation.seen import SeenTargets

# 1-d embeddings, hidden = 1: item i scores TABLE[i]. Row 0 (padding) scores 9 and must
# never be ranked. Items 1..5 score 5, 1, 3, 3, 0.
TABLE = torch.tensor([[9.0], [5.0], [1.0], [3.0], [3.0], [0.0]])
ONE = torch.ones(1, 1)
NO_PAIRS = torch.zeros(0, dtype=torch.int64)


def ranks(
    targets: list[int],
    seen: list[tuple[int, int]],
    hidden: torch.Tensor = ONE,
    seen_targets: SeenTargets = "miss",
) -> list[int]:
    rows = torch.tensor([r for r, _ in seen], dtype=torch.int64)
    items = torch.tensor([i for _, i in seen], dtype=torch.int64)
    hidden = hidden.expand(len(targets), 1)
    targets_ = torch.tensor(targets)
    return full_ranking_ranks(hidden, TABLE, targets_, rows, items, seen_targets).tolist()


def test_full_ranking_counts_ties_against_the_target() -> None:
    # target 4 (score 3): item 1 (5) is above, item 3 ties -> rank 3; padding never counts
    assert ranks([4], []) == [3]
    assert ranks([3], []) == [3]
    assert ranks([1, 5, 2], []) == [1, 5, 4]


def test_full_ranking_excludes_seen_items() -> None:
    assert ranks([4], [(0, 1)]) == [2]
    assert ranks([4], [(0, 1), (0, 3)]) == [1]
    assert ranks([4], [(0, 5), (0, 2)]) == [3]  # seen items below the target change nothing
    # pairs only affect their own row
    assert ranks([4, 4], [(1, 1), (1, 3)]) == [3, 1]


def test_a_seen_target_is_not_found_under_miss_and_ranked_under_rank() -> None:
    assert ranks([4], [(0, 1), (0, 4)]) == [NOT_FOUND_RANK]
    assert ranks([4], [(0, 1), (0, 4)], seen_targets="rank") == [2]
    # only the row whose target is seen is affected
    assert ranks([4, 4], [(1, 4), (0, 1)]) == [2, NOT_FOUND_RANK]


def test_collapsed_constant_model_gets_the_worst_rank() -> None:
    table = torch.ones(101, 4)
    hidden = torch.randn(2, 4)
    targets = torch.tensor([7, 100])
    seen_rows, seen_items = torch.tensor([0, 0, 0, 1]), torch.tensor([1, 2, 7, 50])
    result = full_ranking_ranks(hidden, table, targets, seen_rows, seen_items, "rank")
    assert result.tolist() == [100 - 2, 100 - 1]  # n_items minus the excluded non-targets
    result = full_ranking_ranks(hidden, table, targets, seen_rows, seen_items)
    assert result.tolist() == [NOT_FOUND_RANK, 100 - 1]  # target 7 is seen: not found
    candidates = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert sampled_ranks(hidden, table, targets, candidates).tolist() == [4, 4]


def test_nan_scores_count_as_minus_infinity() -> None:
    table = TABLE.clone()
    table[2] = float("nan")
    hidden = ONE.expand(2, 1)
    result = full_ranking_ranks(hidden, table, torch.tensor([5, 2]), NO_PAIRS, NO_PAIRS)
    assert result.tolist() == [4, 5]  # a NaN item never outranks; a NaN target is last
    nan_model = torch.full((1, 1), float("nan"))
    worst = full_ranking_ranks(nan_model, TABLE, torch.tensor([1]), NO_PAIRS, NO_PAIRS)
    assert worst.tolist() == [5]


def test_full_ranking_equals_counting_on_masked_scores() -> None:
    """The fast ranks (transposed scores, in-place comparison) against the definition:
    count the items whose masked score (NaN as -inf) is >= the target's, on integer-valued
    scores (many ties), with NaN, +-inf, seen items and seen targets."""
    generator = torch.Generator().manual_seed(3)
    table = torch.randint(-3, 4, (41, 2), generator=generator).float()
    table[5, 0], table[6, 0], table[7, 0] = float("nan"), float("inf"), float("-inf")
    hidden = torch.randint(-2, 3, (64, 2), generator=generator).float()
    hidden[0] = float("nan")  # every score NaN
    targets = torch.randint(1, 41, (64,), generator=generator)
    targets[1:4] = torch.tensor([5, 6, 7])  # NaN, +inf and -inf targets
    seen_rows = torch.randint(0, 64, (300,), generator=generator)
    seen_items = torch.randint(1, 41, (300,), generator=generator)
    seen_items[:64] = targets  # every target is also seen once
    seen_rows[:64] = torch.arange(64)
    scores = masked_scores(hidden, table, targets, seen_rows, seen_items, "rank")
    expected = (scores >= scores[torch.arange(64), targets - 1].unsqueeze(1)).sum(1)
    result = full_ranking_ranks(hidden, table, targets, seen_rows, seen_items, "rank")
    assert result.dtype == torch.int64
    assert result.tolist() == expected.tolist()
    missed = full_ranking_ranks(hidden, table, targets, seen_rows, seen_items, "miss")
    assert missed.tolist() == [NOT_FOUND_RANK] * 64
    masked = masked_scores(hidden, table, targets, seen_rows, seen_items, "miss")
    assert torch.isneginf(masked[torch.arange(64), targets - 1]).all()


def test_topk_agrees_with_ranks_under_ties() -> None:
    hidden = ONE.expand(2, 1)
    targets = torch.tensor([4, 3])
    top = full_ranking_topk(hidden, TABLE, targets, NO_PAIRS, NO_PAIRS, k=3)
    assert top.tolist()[0] == [1, 3, 4]  # tied item 3 before the target 4
    assert top.tolist()[1] == [1, 4, 3]
    seen_rows, seen_items = torch.tensor([0]), torch.tensor([1])
    top = full_ranking_topk(hidden[:1], TABLE, targets[:1], seen_rows, seen_items, k=10)
    assert top.tolist() == [[3, 4, 2, 5, 1]]  # k clipped to the catalogue; seen 1 last (-inf)


def test_sampled_ranks_ties_against_the_target() -> None:
    hidden = ONE.expand(2, 1)
    candidates = torch.tensor([[3, 2, 5], [1, 3, 4]])
    result = sampled_ranks(hidden, TABLE, torch.tensor([4, 2]), candidates)
    assert result.tolist() == [2, 4]


def test_batch_seen_pairs_from_csr() -> None:
    offsets = torch.tensor([0, 2, 2, 5])  # user rows 0: [4, 1]; 1: []; 2: [2, 3, 5]
    items = torch.tensor([4, 1, 2, 3, 5])
    rows, seen = batch_seen_pairs(offsets, items, torch.tensor([2, 1, 0]))
    assert rows.tolist() == [0, 0, 0, 2, 2]
    assert seen.tolist() == [2, 3, 5, 4, 1]


def test_metrics_by_hand() -> None:
    result = metrics_from_ranks(torch.tensor([1, 2, 3, 11]), ks=(1, 5, 10))
    assert list(result) == [
        "hr@1", "ndcg@1", "recall@1", "hr@5", "ndcg@5", "recall@5",
        "hr@10", "ndcg@10", "recall@10", "mrr",
    ]  # fmt: skip
    assert result["hr@1"] == 0.25 and result["ndcg@1"] == 0.25
    assert result["hr@5"] == 0.75 and result["hr@10"] == 0.75
    assert result["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 0.5) / 4, rel=1e-15)
    assert result["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 11) / 4, rel=1e-15)
    for k in (1, 5, 10):
        assert result[f"recall@{k}"] == result[f"hr@{k}"]


def test_per_user_metric_names() -> None:
    ranks_ = np.array([1, 3, 20])
    np.testing.assert_allclose(per_user_metric(ranks_, "ndcg@10"), [1.0, 0.5, 0.0])
    np.testing.assert_array_equal(per_user_metric(ranks_, "hr@20"), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(per_user_metric(ranks_, "mrr"), [1.0, 1 / 3, 1 / 20])
    assert per_user_metric(ranks_, "recall@1").dtype == np.float64
    for bad in ("ndcg", "hr@0", "map@10", "mrr@5"):
        with pytest.raises(LossbenchError, match="unknown metric"):
            per_user_metric(ranks_, bad)
    with pytest.raises(LossbenchError):
        metrics_from_ranks(np.array([], dtype=np.int64))


def eval_fixture() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    offsets = np.array([0, 3, 3, 8])  # users 0, 1, 2
    items = np.array([1, 2, 3, 4, 5, 6, 7, 8])
    targets = np.array([4, 9, 10])
    return offsets, items, targets


@pytest.mark.parametrize("by", ["uniform", "popularity"])
def test_eval_candidates_are_unseen_distinct_and_deterministic(by: SamplingBy) -> None:
    offsets, items, targets = eval_fixture()
    counts = np.arange(13)  # id i has count i (n_items = 12)
    draw = sample_eval_candidates(5, 12, offsets, items, targets, by, counts, seed=3)
    assert draw.shape == (3, 5) and draw.dtype == torch.int64
    for user in range(3):
        row = draw[user].tolist()
        forbidden = set(items[offsets[user] : offsets[user + 1]].tolist()) | {targets[user]}
        assert len(set(row)) == 5 and not set(row) & forbidden
        assert all(1 <= item <= 12 for item in row)
    again = sample_eval_candidates(5, 12, offsets, items, targets, by, counts, seed=3)
    other = sample_eval_candidates(5, 12, offsets, items, targets, by, counts, seed=4)
    assert torch.equal(draw, again) and not torch.equal(draw, other)


def test_eval_candidates_with_exactly_enough_items_use_the_exact_fallback() -> None:
    offsets, items, targets = eval_fixture()
    # user 2 has seen 4..8 and targets 10: unseen items are exactly 1, 2, 3, 9, 11, 12
    draw = sample_eval_candidates(6, 12, offsets, items, targets, seed=0)
    assert sorted(draw[2].tolist()) == [1, 2, 3, 9, 11, 12]
    with pytest.raises(LossbenchError, match="fewer than 7"):
        sample_eval_candidates(7, 12, offsets, items, targets, seed=0)


def test_eval_candidates_by_popularity_skip_zero_counts() -> None:
    offsets, items, targets = eval_fixture()
    counts = np.zeros(13)
    counts[[9, 10, 11, 12]] = [1, 1, 1, 1]
    counts[1] = 1000
    draw = sample_eval_candidates(2, 12, offsets, items, targets, "popularity", counts, seed=0)
    assert set(draw[0].tolist()) <= {9, 10, 11, 12}
    assert 1 not in draw[0].tolist()  # seen by user 0, despite being the most popular
    assert 1 in draw[1].tolist()  # user 1 has seen nothing: item 1 almost surely drawn
    with pytest.raises(LossbenchError, match="unknown candidate sampler"):
        sample_eval_candidates(2, 12, offsets, items, targets, "zipf", counts)  # type: ignore[arg-type]
