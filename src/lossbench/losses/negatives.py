"""Negative sampling for training, and the scores of sampled items.

The sampler runs on the model's device with an explicit `torch.Generator`, in a fixed number
of tensor ops: no Python loop over samples and no device sync. A negative never equals its
positive, by construction (the target is cut out of the distribution), never by overwriting.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

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


def in_batch_negatives(
    targets: Tensor, n_negatives: int, n_items: int, generator: torch.Generator
) -> Tensor:
    """(N, K) int64: for each of N positions, K targets of the batch's positions drawn
    uniformly among those whose target differs from its own (with replacement).

    So an item is drawn in proportion to how often it is a target in the batch. Loop-free and
    exact: sorted, the positions sharing a row's target form one segment [lo, hi); a draw r
    from the N - (hi - lo) others maps to r, or past the segment. A batch whose every target
    is the row's own has nothing else to offer: that row gets the next item id instead.
    """
    n = targets.shape[0]
    ordered = torch.sort(targets).values  # (N,)
    lo = torch.searchsorted(ordered, targets).unsqueeze(1)  # (N, 1)
    hi = torch.searchsorted(ordered, targets, right=True).unsqueeze(1)
    others = n - (hi - lo)  # (N, 1) positions with another target
    u = torch.rand(
        (n, n_negatives), generator=generator, device=targets.device, dtype=torch.float64
    )
    r = torch.minimum((u * others).long(), (others - 1).clamp(min=0))  # (N, K) in 0..others-1
    index = torch.where(r < lo, r, r + (hi - lo)).clamp(max=max(n - 1, 0))
    return torch.where(others > 0, ordered[index], targets.unsqueeze(1) % n_items + 1)


class UnseenSampler:
    """Uniform negatives among the items a user has NOT interacted with in training, as the
    samplers of SASRec's and S3Rec's code do (they exclude the user's history; S3Rec's also
    its validation and test items, which lossbench does not: that would leak the targets).

    Exact and loop-free: with the user's distinct history items s_0 < s_1 < ... sorted, the
    r-th unseen item (r from 0) is r + 1 + #{j : s_j - 1 - j <= r}, where s_j - 1 - j counts
    the unseen items below s_j. Those counts are non-decreasing within a user, so the keys
    user * (n_items + 1) + (s_j - 1 - j) are sorted over all users and one `searchsorted`
    answers every draw. Built once per run on the model's device.
    """

    def __init__(
        self, offsets: Tensor, items: Tensor, n_items: int, device: torch.device | str
    ) -> None:
        """offsets (U + 1,) / items (T,): each user's training items in CSR form (any order,
        repeats allowed); user u is row u."""
        n_users, width = len(offsets) - 1, n_items + 1
        users = torch.repeat_interleave(torch.arange(n_users), torch.diff(offsets))
        keys = torch.unique(users * width + items)  # sorted distinct (user, item) pairs
        key_users, key_items = keys // width, keys % width
        counts = torch.bincount(key_users, minlength=n_users)  # (U,) distinct items per user
        starts = torch.cumsum(counts, 0) - counts  # (U,)
        rank_in_user = torch.arange(len(keys)) - starts[key_users]  # j
        self.skip_keys = (key_users * width + key_items - 1 - rank_in_user).to(device)  # (T',)
        self.starts = starts.to(device)  # (U,)
        self.unseen = (n_items - counts).to(device)  # (U,) items a negative may be
        self.width = width
        self.n_items = n_items

    def sample(self, users: Tensor, n_negatives: int, generator: torch.Generator) -> Tensor:
        """(N, K) int64 negatives for positions of users (N,), none in their user's history
        (so never the position's own target, itself a history item). Users who have seen
        every item cannot be sampled for: `check` refuses them before training."""
        unseen = self.unseen[users].unsqueeze(1)  # (N, 1)
        u = torch.rand(
            (len(users), n_negatives), generator=generator, device=users.device, dtype=torch.float64
        )
        r = torch.minimum((u * unseen).long(), unseen - 1)  # (N, K) in 0..unseen - 1
        return self.unseen_item(users, r)

    def unseen_item(self, users: Tensor, r: Tensor) -> Tensor:
        """(N, K) the r-th (from 0) item outside each user's history, for users (N,)."""
        query = users.unsqueeze(1) * self.width + r
        below = torch.searchsorted(self.skip_keys, query, right=True) - self.starts[users, None]
        return r + 1 + below

    def check(self, users: Tensor) -> None:
        """Refuse (one line, before training) users whose history covers the catalogue."""
        full = users[self.unseen[users] < 1]
        if len(full):
            raise LossbenchError(
                f"user row {int(full[0])} has interacted with every item, so no negative can "
                "be drawn outside their history; train without --negatives-unseen"
            )


def sampled_scores(inputs: LossInputs, loss_name: str) -> tuple[Tensor, Tensor]:
    """Scores of the positives (N,) and of the sampled negatives (N, K) for a sampled loss."""
    negatives = inputs.negatives
    if negatives is None or negatives.shape[-1] == 0:
        raise LossbenchError(f"loss '{loss_name}' needs at least one sampled negative per position")
    table = inputs.item_embeddings
    positive = (inputs.hidden * table[inputs.targets]).sum(-1)  # (N,)
    return positive, negative_scores(table, negatives, inputs.hidden)


# Gathered negative rows (N, K, D) beyond this many elements are scored in chunks of
# positions, each gathered again in backward instead of held for it: at SASRec's ~36,000
# positions of a batch x 500 negatives x 64 dims the gather alone is 4.7 GB in fp32, and its
# gradient as much again.
GATHER_ELEMENTS = 1 << 28  # 1 GiB of fp32


def negative_scores(table: Tensor, negatives: Tensor, hidden: Tensor) -> Tensor:
    """(N, K) scores of the negatives (N, K) of each position's hidden state (N, D) against
    the table (n_items + 1, D). One gather of the K rows per position when it fits in
    `GATHER_ELEMENTS`, else chunks of positions under activation checkpointing (the same
    scores; the table's gradient sums the chunks' parts)."""
    per_position = negatives.shape[1] * table.shape[1]
    rows = max(1, GATHER_ELEMENTS // max(per_position, 1))
    if negatives.shape[0] <= rows:
        # (N, K, D) x (N, D, 1) -> (N, K)
        return torch.bmm(table[negatives], hidden.unsqueeze(-1)).squeeze(-1)
    chunks = [
        checkpoint(
            _gathered_scores,
            table,
            negatives[start : start + rows],
            hidden[start : start + rows],
            use_reentrant=False,
            preserve_rng_state=False,
        )
        for start in range(0, negatives.shape[0], rows)
    ]
    return torch.cat(chunks)  # type: ignore[arg-type]


def _gathered_scores(table: Tensor, negatives: Tensor, hidden: Tensor) -> Tensor:
    return torch.bmm(table[negatives], hidden.unsqueeze(-1)).squeeze(-1)  # (n, K)


def mean_over_positions(per_position: Tensor) -> Tensor:
    """Mean over N positions; N = 0 gives a zero still connected to the graph (not NaN)."""
    return per_position.sum() / max(per_position.shape[0], 1)
