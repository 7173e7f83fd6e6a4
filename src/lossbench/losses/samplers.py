"""Training negative samplers and the item probabilities their logQ correction needs.

- `uniform`: every other item alike (or, with `negatives_unseen`, every item outside the
  user's training history).
- `popularity`: in proportion to the item's training occurrences.
- `in-batch`: the other training positions' targets of the same step, so an item is drawn in
  proportion to how often it is a training target.
- `mixed`: half of the K negatives in the batch (rounded up), the rest uniform.

Each sampler's proposal Q (n_items + 1,) is the probability of drawing each item into one
negative slot, up to the exclusion of the row's own target: uniform 1/n; popularity
count / total; in-batch the item's share of the training targets of an epoch; mixed the
mixture of in-batch and uniform in the ratio of their slots. A sampler is built once per run,
on the model's device; drawing is a fixed number of tensor ops with no device sync. The
standard logQ correction takes log Q (float32); the corrected one (Khrylchenko et al.) takes Q
itself as item frequencies in float64 and removes each row's positive from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import get_args

import torch
from torch import Tensor

from lossbench.errors import LossbenchError
from lossbench.losses.base import NegativeSamplerName
from lossbench.losses.negatives import (
    UnseenSampler,
    in_batch_negatives,
    popularity_cdf,
    sample_negatives,
)

SAMPLER_NAMES: tuple[str, ...] = get_args(NegativeSamplerName)


@dataclass(frozen=True)
class NegativeSampler:
    """Draws the (N, K) negatives of a step; `log_q` is set when the loss corrects by logQ."""

    name: str
    n_items: int
    n_negatives: int
    in_batch: int  # slots filled from the batch's targets; the others are uniform/popularity
    cdf: Tensor | None = None  # (n_items,) popularity CDF
    unseen: UnseenSampler | None = None  # uniform outside each user's history
    log_q: Tensor | None = None  # (n_items + 1,) float32 log proposal, for the logQ correction
    # (n_items + 1,) float64 proposal, for the corrected logQ correction
    frequencies: Tensor | None = None

    @property
    def needs_users(self) -> bool:
        """The draw needs each position's user row (negatives outside the user's history)."""
        return self.unseen is not None

    def sample(self, targets: Tensor, users: Tensor | None, generator: torch.Generator) -> Tensor:
        """(N, K) int64 negatives for the N positions' targets (and users, when needed)."""
        drawn = []
        if self.in_batch > 0:
            drawn.append(in_batch_negatives(targets, self.in_batch, self.n_items, generator))
        rest = self.n_negatives - self.in_batch
        if rest > 0 and self.unseen is not None:
            assert users is not None
            drawn.append(self.unseen.sample(users, rest, generator))
        elif rest > 0:
            drawn.append(sample_negatives(targets, rest, self.n_items, generator, self.cdf))
        return drawn[0] if len(drawn) == 1 else torch.cat(drawn, dim=1)

    def record(self) -> dict[str, object]:
        return {
            "sampler": self.name,
            "in_batch_negatives": self.in_batch,
            "logq": "corrected" if self.frequencies is not None else self.log_q is not None,
        }


def in_batch_slots(name: str, n_negatives: int) -> int:
    """How many of the K negatives a sampler takes from the batch."""
    return {"in-batch": n_negatives, "mixed": (n_negatives + 1) // 2}.get(name, 0)


def proposal(name: str, n_negatives: int, item_counts: Tensor, target_counts: Tensor) -> Tensor:
    """(n_items + 1,) float64 probability of each item per negative slot (entry 0: padding).

    `item_counts`: training occurrences; `target_counts`: occurrences as a training target.
    """
    n_items = item_counts.shape[0] - 1
    uniform = torch.full((n_items + 1,), 1.0 / n_items, dtype=torch.float64)
    proposals: dict[str, Callable[[], Tensor]] = {
        "uniform": lambda: uniform,
        "popularity": lambda: _normalized(item_counts),
        "in-batch": lambda: _normalized(target_counts),
        "mixed": lambda: _mixture(n_negatives, _normalized(target_counts), uniform),
    }
    q = proposals[name]().clone()
    q[0] = 0.0
    return q


def _normalized(counts: Tensor) -> Tensor:
    counts = counts.to(torch.float64).clone()
    counts[0] = 0.0
    total = float(counts.sum())
    if total <= 0:
        raise LossbenchError("no training targets to draw negatives from: the data is empty")
    return counts / total


def _mixture(n_negatives: int, in_batch: Tensor, uniform: Tensor) -> Tensor:
    share = in_batch_slots("mixed", n_negatives) / n_negatives
    return share * in_batch + (1.0 - share) * uniform


def build_sampler(
    name: str,
    n_negatives: int,
    item_counts: Tensor,
    target_counts: Tensor,
    device: torch.device,
    *,
    logq: bool | str = False,
    unseen: UnseenSampler | None = None,
) -> NegativeSampler:
    """The run's sampler on `device`; `item_counts` / `target_counts` (n_items + 1,) as above.
    `logq`: True for the standard correction's log Q, "corrected" for the frequencies."""
    if name not in SAMPLER_NAMES:
        raise LossbenchError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_NAMES)}")
    n_items = item_counts.shape[0] - 1
    cdf = popularity_cdf(item_counts, device) if name == "popularity" else None
    log_q, frequencies = None, None
    if logq == "corrected":
        frequencies = proposal(name, n_negatives, item_counts, target_counts).to(device)
    elif logq:
        q = proposal(name, n_negatives, item_counts, target_counts)
        # An item of probability 0 is never drawn and never a target; the floor keeps its
        # (unused) entry finite.
        log_q = torch.log(q.clamp(min=1e-30)).to(device=device, dtype=torch.float32)
    in_batch = in_batch_slots(name, n_negatives)
    return NegativeSampler(name, n_items, n_negatives, in_batch, cdf, unseen, log_q, frequencies)
