"""Negative sampler: exclusion of the target, frequencies, determinism, edge cases."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from lossbench.errors import LossbenchError
from lossbench.losses.negatives import UnseenSampler, popularity_cdf, sample_negatives


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def chi_square(observed: torch.Tensor, expected: torch.Tensor) -> float:
    return float(((observed - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("by", ["uniform", "popularity"])
def test_never_the_target_and_in_range(by: str) -> None:
    n_items = 4
    targets = torch.arange(1, n_items + 1).repeat(500)  # every id as a target, incl. edges
    cdf = popularity_cdf(torch.tensor([0, 1, 2, 3, 4])) if by == "popularity" else None
    negatives = sample_negatives(targets, 8, n_items, generator(), cdf)
    assert negatives.shape == (2000, 8) and negatives.dtype == torch.int64
    assert torch.all(negatives != targets.unsqueeze(1))
    assert negatives.min() >= 1 and negatives.max() <= n_items


def test_uniform_frequencies() -> None:
    targets = torch.full((20000,), 3)
    negatives = sample_negatives(targets, 2, 5, generator(1))  # 40000 draws over 4 items
    counts = torch.bincount(negatives.reshape(-1), minlength=6).double()
    assert counts[0] == 0 and counts[3] == 0
    # chi-square with 3 degrees of freedom: 30 is far past the 99.99th percentile (21.1)
    assert chi_square(counts[[1, 2, 4, 5]], torch.full((4,), 10000.0)) < 30


def test_popularity_frequencies_exclude_target_and_zero_counts() -> None:
    # counts by id: item 1 has none; 2, 3, 4, 5 have 1, 2, 3, 4. Target 4 (count 3) is cut
    # out, so the others are drawn with probabilities 1/7, 2/7, 4/7.
    cdf = popularity_cdf(torch.tensor([99, 0, 1, 2, 3, 4]))
    negatives = sample_negatives(torch.full((14000,), 4), 5, 5, generator(2), cdf)
    counts = torch.bincount(negatives.reshape(-1), minlength=6).double()
    assert counts[0] == 0 and counts[1] == 0 and counts[4] == 0
    expected = torch.tensor([1.0, 2.0, 4.0]) / 7 * 70000
    assert chi_square(counts[[2, 3, 5]], expected) < 30


def test_popularity_cdf_values() -> None:
    cdf = popularity_cdf(torch.tensor([7, 1, 1, 2]))  # entry 0 (padding) ignored
    torch.testing.assert_close(cdf, torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64))
    assert cdf[-1].item() == 1.0
    with pytest.raises(LossbenchError):
        popularity_cdf(torch.tensor([5, 0, 0]))


def test_degenerate_popularity_never_returns_target() -> None:
    cdf = popularity_cdf(torch.tensor([0, 0, 7, 0]))  # all mass on item 2
    negatives = sample_negatives(torch.full((100,), 2), 4, 3, generator(), cdf)
    assert torch.all(negatives != 2)


@pytest.mark.parametrize("by", ["uniform", "popularity"])
def test_deterministic_per_generator_seed(by: str) -> None:
    cdf = popularity_cdf(torch.arange(11)) if by == "popularity" else None
    targets = torch.randint(1, 11, (64,), generator=generator(9))
    first = sample_negatives(targets, 16, 10, generator(5), cdf)
    again = sample_negatives(targets, 16, 10, generator(5), cdf)
    other = sample_negatives(targets, 16, 10, generator(6), cdf)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_keeps_the_shape_of_the_targets() -> None:
    targets = torch.tensor([[1, 2, 3], [3, 2, 1]])
    negatives = sample_negatives(targets, 4, 3, generator())
    assert negatives.shape == (2, 3, 4)
    assert torch.all(negatives != targets.unsqueeze(-1))
    assert sample_negatives(targets, 0, 3, generator()).shape == (2, 3, 0)


def test_one_item_catalogue_is_an_error() -> None:
    with pytest.raises(LossbenchError, match="at least 2 items"):
        sample_negatives(torch.tensor([1, 1]), 1, 1, generator())


def test_two_item_catalogue_has_one_choice() -> None:
    negatives = sample_negatives(torch.tensor([1, 2]), 5, 2, generator())
    assert torch.equal(negatives, torch.tensor([[2] * 5, [1] * 5]))


def _histories() -> tuple[torch.Tensor, torch.Tensor, list[set[int]]]:
    """CSR training histories over 12 items: repeats, unsorted, an empty user, a user who
    has seen all but one item, and one who has seen only the last item."""
    rows = [[5, 2, 5, 9], [], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12], [12], [3, 1, 3, 11, 7]]
    offsets = torch.tensor([0, *torch.cumsum(torch.tensor([len(r) for r in rows]), 0).tolist()])
    items = torch.tensor([i for r in rows for i in r], dtype=torch.int64)
    return offsets, items, [set(r) for r in rows]


def test_unseen_sampler_maps_each_rank_to_the_next_unseen_item() -> None:
    offsets, items, seen = _histories()
    sampler = UnseenSampler(offsets, items, 12, "cpu")
    for user, history in enumerate(seen):
        expected = sorted(set(range(1, 13)) - history)  # brute force
        assert int(sampler.unseen[user]) == len(expected)
        r = torch.arange(len(expected)).unsqueeze(0)
        got = sampler.unseen_item(torch.tensor([user]), r)
        assert got.tolist() == [expected]


def test_unseen_sampler_draws_uniformly_outside_the_history() -> None:
    offsets, items, seen = _histories()
    sampler = UnseenSampler(offsets, items, 12, "cpu")
    users = torch.tensor([0, 1, 2, 3, 4]).repeat_interleave(4000)
    draws = sampler.sample(users, 5, torch.Generator().manual_seed(0))  # (20000, 5)
    assert draws.shape == (20000, 5)
    for user, history in enumerate(seen):
        mine = draws[users == user].reshape(-1)
        allowed = sorted(set(range(1, 13)) - history)
        assert set(mine.tolist()) == set(allowed)  # never seen, every unseen one reachable
        frequencies = torch.bincount(mine, minlength=13)[allowed].double() / len(mine)
        assert torch.allclose(
            frequencies, torch.full_like(frequencies, 1 / len(allowed)), atol=0.01
        )


def test_unseen_sampler_refuses_a_user_who_has_seen_everything() -> None:
    offsets = torch.tensor([0, 2, 5])
    items = torch.tensor([1, 2, 1, 2, 3])  # user 1 has seen all 3 items
    sampler = UnseenSampler(offsets, items, 3, "cpu")
    sampler.check(torch.tensor([0]))
    with pytest.raises(LossbenchError, match="every item"):
        sampler.check(torch.tensor([0, 1]))


def test_negative_scores_in_checkpointed_chunks_equal_one_gather(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lossbench.losses import negatives as negatives_module

    generator = torch.Generator().manual_seed(0)
    table = torch.randn(50, 8, generator=generator, dtype=torch.float64)
    hidden = torch.randn(37, 8, generator=generator, dtype=torch.float64)
    drawn = torch.randint(1, 50, (37, 6), generator=generator)

    def scores_and_grads() -> tuple[Tensor, Tensor, Tensor]:
        leaf_table, leaf_hidden = table.clone().requires_grad_(), hidden.clone().requires_grad_()
        scores = negatives_module.negative_scores(leaf_table, drawn, leaf_hidden)
        weights = torch.arange(scores.numel(), dtype=torch.float64).reshape(scores.shape)
        (scores * weights).sum().backward()
        assert leaf_table.grad is not None and leaf_hidden.grad is not None
        return scores.detach(), leaf_table.grad, leaf_hidden.grad

    whole = scores_and_grads()
    monkeypatch.setattr(negatives_module, "GATHER_ELEMENTS", 5 * 6 * 8)  # 5 positions a chunk
    chunked = scores_and_grads()
    assert torch.equal(whole[0], chunked[0])  # the same scores, bit for bit
    assert torch.allclose(whole[1], chunked[1]) and torch.equal(whole[2], chunked[2])
    assert whole[0].shape == (37, 6)
