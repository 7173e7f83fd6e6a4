"""Negative sampling for training, and the scores of sampled items.

The sampler runs on the model's device with an explicit `torch.Generator`, in a fixed number
of tensor ops: no Python loop over samples and no device sync. A negative never equals its
positive, by construction (the target is cut out of the distribution), never by overwriting.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lossbench.errors import LossbenchError
from lossbench.losses.base import LossInputs


def popularity_cdf(
    item_counts: Tensor | np.ndarray, device: torch.device | str | None = None
) -> Tensor:
    """(n_items,) float64 CDF over items 1..n_items from counts indexed by item id.

    `item_counts` has n_items + 1 entries; entry 0 (padding) is ignored. `cdf[i - 1]` is the
    probability of drawing an item <= i; the last entry is exactly 1. Built once, at setup.
    """
    counts = torch.as_tensor(item_counts, dtype=torch.float64)[1:]
    if counts.ndim != 1 or counts.numel() == 0:
        raise LossbenchError("item_counts must be a 1-d array indexed by item id 0..n_items")
    if bool((counts < 0).any()) or float(counts.sum()) <= 0:
        raise LossbenchError("item_counts must be non-negative with at least one positive count")
    cdf = torch.cumsum(counts, 0) / counts.sum()
    cdf[-1] = 1.0  # exact top, so no draw can fall past the last item
    return cdf.to(device) if device is not None else cdf


def sample_negatives(
    targets: Tensor,
    n_negatives: int,
    n_items: int,
    generator: torch.Generator,
    popularity_cdf: Tensor | None = None,
) -> Tensor:
    """(*targets.shape, K) int64 negatives in 1..n_items, each != its target.

    Uniform: draw from the n_items - 1 other ids. Popularity: draw from the CDF with the
    target's segment removed. Draws are independent (with replacement) across the K slots.
    `targets` hold ids in 1..n_items; the generator and the CDF live on targets' device.
    """
    if n_items < 2:
        raise LossbenchError(f"negatives need at least 2 items in the catalogue (it has {n_items})")
    if n_negatives < 0:
        raise LossbenchError(f"the number of negatives must be >= 0, got {n_negatives}")
    column = targets.unsqueeze(-1)  # (..., 1)
    shape = (*targets.shape, n_negatives)
    if popularity_cdf is None:
        draws = torch.randint(
            1, n_items, shape, generator=generator, device=targets.device, dtype=torch.int64
        )  # 1..n_items-1
        return draws + (draws >= column).long()  # skip the target: 1..n_items without it
    return _popularity_draws(column, shape, n_items, generator, popularity_cdf)


def _popularity_draws(
    column: Tensor,
    shape: tuple[int, ...],
    n_items: int,
    generator: torch.Generator,
    cdf: Tensor,
) -> Tensor:
    # Segment of the target on [0, 1): [below, upper). Draw u in [0, below + above) and map
    # the part past `below` to start at `upper`, so the target's segment is never hit.
    index = column - 1  # (..., 1) 0-based
    upper = cdf[index]
    below = torch.where(index > 0, cdf[(index - 1).clamp(min=0)], torch.zeros_like(upper))
    above = 1.0 - upper
    u = torch.rand(shape, generator=generator, device=cdf.device, dtype=cdf.dtype)
    u = u * (below + above)
    # u >= below: upper + (u - below) >= upper exactly (rounding is monotone), so the first
    # CDF entry strictly above it belongs to an item after the target.
    u = torch.where(u < below, u, upper + (u - below))
    items = torch.searchsorted(cdf, u.contiguous(), right=True).clamp(max=n_items - 1) + 1
    # Only a degenerate distribution (all mass on the target) or rounding at the very top can
    # still land on the target; step to the next id instead (never the target when n >= 2).
    return torch.where(items == column, column % n_items + 1, items)


def sampled_scores(inputs: LossInputs, loss_name: str) -> tuple[Tensor, Tensor]:
    """Scores of the positives (N,) and of the sampled negatives (N, K) for a sampled loss."""
    negatives = inputs.negatives
    if negatives is None or negatives.shape[-1] == 0:
        raise LossbenchError(f"loss '{loss_name}' needs at least one sampled negative per position")
    table = inputs.item_embeddings
    positive = (inputs.hidden * table[inputs.targets]).sum(-1)  # (N,)
    # (N, K, D) x (N, D, 1) -> (N, K): one gather of the K rows per position.
    negative = torch.bmm(table[negatives], inputs.hidden.unsqueeze(-1)).squeeze(-1)
    return positive, negative


def mean_over_positions(per_position: Tensor) -> Tensor:
    """Mean over N positions; N = 0 gives a zero still connected to the graph (not NaN)."""
    return per_position.sum() / max(per_position.shape[0], 1)
