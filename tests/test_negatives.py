"""Negative sampler: exclusion of the target, frequencies, determinism, edge cases."""

from __future__ import annotations

import pytest
import torch

from lossbench.errors import LossbenchError
from lossbench.losses.negatives import popularity_cdf, sample_negatives


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
