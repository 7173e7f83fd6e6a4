"""Paired significance: a two-sided sign-flip permutation test and Holm's correction.

Under the null hypothesis "the two losses are exchangeable for each (user, seed)", the sign of
each paired difference is a fair coin. The p-value is the share of sign assignments whose
|mean difference| is at least the observed one, counting the observed assignment itself
(so a Monte Carlo p-value is never 0: its floor is 1 / (n_permutations + 1)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_PERMUTATIONS = 10_000
DEFAULT_SEED = 20230103  # fixed: the same inputs always give the same p-value
_EXACT_UP_TO = 16  # pairs: 2^16 sign assignments are enumerated instead of sampled
_CHUNK_ELEMENTS = 4_000_000  # sign-matrix cells per chunk (~32 MB of float64)


@dataclass(frozen=True)
class PairedTest:
    mean_difference: float  # mean of (treatment - baseline) over the pairs
    p_value: float
    n_pairs: int
    exact: bool  # True: every sign assignment enumerated


def sign_flip_test(
    treatment: np.ndarray,
    baseline: np.ndarray,
    n_permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = DEFAULT_SEED,
) -> PairedTest:
    """Two-sided paired sign-flip permutation test on (N,) paired values."""
    differences = np.asarray(treatment, np.float64) - np.asarray(baseline, np.float64)  # (N,)
    if differences.ndim != 1 or len(differences) == 0:
        raise ValueError("the test needs a non-empty 1-d array of paired values")
    n = len(differences)
    observed = abs(differences.sum())
    # Sums differ from the observed one only by rounding when they are "equal".
    tolerance = 1e-9 * max(np.abs(differences).sum(), 1e-300)
    if n <= _EXACT_UP_TO:
        extreme = np.abs(_all_sign_sums(differences)) >= observed - tolerance
        return PairedTest(float(differences.mean()), float(extreme.mean()), n, exact=True)
    rng = np.random.default_rng(seed)
    as_extreme = 0
    chunk = max(1, _CHUNK_ELEMENTS // n)
    total = differences.sum()
    for start in range(0, n_permutations, chunk):
        rows = min(chunk, n_permutations - start)
        flipped = rng.random((rows, n)) < 0.5  # (R, N) which pairs swap sides
        # Flipping a set S turns the sum into total - 2 * sum(d[S]).
        sums = total - 2.0 * (flipped.astype(np.float64) @ differences)  # (R,)
        as_extreme += int((np.abs(sums) >= observed - tolerance).sum())
    p_value = (as_extreme + 1) / (n_permutations + 1)
    return PairedTest(float(differences.mean()), p_value, n, exact=False)


def _all_sign_sums(differences: np.ndarray) -> np.ndarray:
    """(2^N,) signed sums for every sign assignment (bit j of the row index flips pair j)."""
    n = len(differences)
    codes = np.arange(2**n, dtype=np.int64)[:, None]  # (2^N, 1)
    signs = 1.0 - 2.0 * ((codes >> np.arange(n)) & 1)  # (2^N, N) in {+1, -1}
    return signs @ differences


def holm_adjust(p_values: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (same order as given); NaN entries are skipped."""
    p = np.asarray(p_values, np.float64)
    adjusted = np.full_like(p, np.nan)
    present = np.flatnonzero(~np.isnan(p))
    m = len(present)
    if m == 0:
        return adjusted
    order = present[np.argsort(p[present], kind="stable")]  # smallest p first
    scaled = p[order] * (m - np.arange(m))  # the i-th smallest times (m - i)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted
