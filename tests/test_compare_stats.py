"""The paired sign-flip permutation test and Holm's correction, on inputs with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lossbench.compare.report import stats
from lossbench.compare.report.stats import holm_adjust, sign_flip_test


def brute_force_p(differences: np.ndarray) -> float:
    """Two-sided p-value by listing every sign assignment with itertools."""
    observed = abs(differences.sum())
    sums = [
        abs(np.dot(signs, differences))
        for signs in itertools.product((1.0, -1.0), repeat=len(differences))
    ]
    return float(np.mean(np.array(sums) >= observed - 1e-12))


@pytest.mark.parametrize("n", [5, 300])  # exact enumeration and Monte Carlo
def test_identical_values_give_p_one(n: int) -> None:
    values = np.random.default_rng(0).random(n)
    test = sign_flip_test(values, values.copy(), n_permutations=500)
    assert test.p_value == 1.0
    assert test.mean_difference == 0.0
    assert test.exact == (n <= 16)


def test_large_consistent_shift_reaches_the_monte_carlo_floor() -> None:
    baseline = np.random.default_rng(1).random(400)
    test = sign_flip_test(baseline + 0.5, baseline, n_permutations=999)
    # Only the all-flipped assignment is as extreme (probability 2^-399): p = 1 / (999 + 1).
    assert test.p_value == pytest.approx(1 / 1000)
    assert test.mean_difference == pytest.approx(0.5)
    assert test.n_pairs == 400 and not test.exact


def test_exact_enumeration_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    for n in (1, 4, 9):
        treatment, baseline = rng.random(n), rng.random(n)
        test = sign_flip_test(treatment, baseline)
        assert test.exact
        assert test.p_value == pytest.approx(brute_force_p(treatment - baseline))


def test_exact_p_of_a_tiny_all_positive_sample() -> None:
    # Three equal positive differences: only "no flip" and "all flipped" are as extreme.
    test = sign_flip_test(np.array([1.0, 1.0, 1.0]), np.zeros(3))
    assert test.p_value == pytest.approx(2 / 8)


def test_monte_carlo_agrees_with_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    treatment, baseline = rng.random(12), rng.random(12) + 0.1
    exact = sign_flip_test(treatment, baseline).p_value
    monkeypatch.setattr(stats, "_EXACT_UP_TO", 0)
    sampled = sign_flip_test(treatment, baseline, n_permutations=20_000)
    assert not sampled.exact
    assert sampled.p_value == pytest.approx(exact, abs=0.01)
    # A fixed seed: the same inputs give the same p-value.
    assert sign_flip_test(treatment, baseline, n_permutations=20_000).p_value == sampled.p_value


def test_test_is_symmetric_in_its_arguments() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.random(200), rng.random(200)
    forward, backward = sign_flip_test(a, b, 2000), sign_flip_test(b, a, 2000)
    assert forward.p_value == backward.p_value
    assert forward.mean_difference == pytest.approx(-backward.mean_difference)


def test_empty_input_is_rejected() -> None:
    with pytest.raises(ValueError):
        sign_flip_test(np.array([]), np.array([]))


def test_holm_adjustment_by_hand() -> None:
    adjusted = holm_adjust(np.array([0.01, 0.04, 0.03, np.nan]))
    # Sorted 0.01, 0.03, 0.04 times 3, 2, 1 -> 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06.
    np.testing.assert_allclose(adjusted[:3], [0.03, 0.06, 0.06])
    assert np.isnan(adjusted[3])
    assert holm_adjust(np.array([0.6, 0.9]))[1] == 1.0  # capped at 1 (0.6 * 2)
    assert holm_adjust(np.array([np.nan])).tolist() != [0.0]
