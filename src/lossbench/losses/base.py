"""The loss protocol shared by every registered loss.

A loss is a pure function `loss(inputs, params) -> scalar tensor`. The trainer has already
chosen the training positions (all / last / masked) and gathered their hidden states, and a
sampler outside the loss has drawn the negatives, so a loss never decides *where* or *what* to
sample: that keeps the comparison fair and the functions testable on tiny tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from torch import Tensor

Positions = Literal["all", "last", "masked"]
SamplerName = Literal["uniform", "popularity"]  # sampled evaluation's candidates
# Training negatives (see `samplers.py`): the two above, the batch's other targets, or both.
NegativeSamplerName = Literal["uniform", "popularity", "in-batch", "mixed"]


@dataclass(frozen=True)
class LossInputs:
    """Everything a loss may look at, for N training positions."""

    hidden: Tensor  # (N, D) hidden states at the training positions
    targets: Tensor  # (N,) int64 true next (or masked) item ids, in 1..n_items
    item_embeddings: Tensor  # (n_items + 1, D) row i scores item i; row 0 (padding) never scored
    negatives: Tensor | None = None  # (N, K) int64 sampled ids in 1..n_items, never == target
    # (n_items + 1,) log of each item's probability under the negative sampler, for the logQ
    # correction of a sampled softmax; None: no correction.
    log_q: Tensor | None = None


@dataclass(frozen=True)
class LossParams:
    """Loss-specific knobs; every loss reads only the ones it needs."""

    gbce_t: float = 0.75  # gBCE calibration t (0 turns gBCE into BCE)
    # Logits the full softmax holds at once (bounds its memory); None: 1M on CPU, 64M on GPU.
    softmax_chunk: int | None = None


class LossFn(Protocol):
    def __call__(self, inputs: LossInputs, params: LossParams) -> Tensor: ...


@dataclass(frozen=True)
class LossSpec:
    """A registered loss and the setup it was published with (the defaults)."""

    fn: LossFn
    positions: Positions  # default training positions
    negatives: int  # default negatives per position; 0 = full catalogue softmax
    description: str
    logq: bool = False  # takes the logQ correction (`LossInputs.log_q`): a sampled softmax
    # False: negatives = 0 means a full-catalogue loss, which ignores `--negatives`.
    # True (a bare function given as the loss): `--negatives` decides, default none.
    negatives_from_flags: bool = False
