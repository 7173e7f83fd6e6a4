"""The loss protocol shared by every registered loss.

A loss is a pure function `loss(inputs, params) -> scalar tensor`. The trainer has already
chosen the training positions (all / last / masked) and gathered their hidden states, and a
sampler outside the loss has drawn the negatives, so a loss never decides *where* or *what* to
sample: that keeps the comparison fair and the functions testable on tiny tensors. A loss that
draws random projections (`sce`, `rece`) declares the need and draws them from the trainer's
seeded, checkpointed generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import Tensor

Positions = Literal["all", "last", "masked"]
SamplerName = Literal["uniform", "popularity"]  # sampled evaluation's candidates
# Training negatives (see `samplers.py`): the two above, the batch's other targets, or both.
NegativeSamplerName = Literal["uniform", "popularity", "in-batch", "mixed"]
# How a sampled softmax corrects for its sampler: Yi et al.'s logQ, or Khrylchenko et al.'s.
LogQCorrection = Literal["standard", "corrected"]

# What a loss may need besides the hidden states, targets and the item table (see `LossSpec`):
# - "catalogue": it scores (or searches) the whole item table, not only sampled rows;
# - "negatives": sampled negatives from the trainer's sampler (`LossInputs.negatives`);
# - "log_q": the sampler's log probability of each item (`LossInputs.log_q`);
# - "item_frequencies": the sampler's frequency of each item (`LossInputs.item_frequencies`);
# - "generator": a seeded `torch.Generator` for the loss's own random projections.
Need = Literal["catalogue", "negatives", "log_q", "item_frequencies", "generator"]


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
    # (n_items + 1,) float64 relative frequency of each item under the negative sampler (any
    # positive scale), for the corrected logQ of a sampled softmax; None: not needed.
    item_frequencies: Tensor | None = None
    # On the model's device, for a loss that draws its own random projections (sce, rece); the
    # trainer's and checkpointed, so a resumed run draws the same projections.
    generator: torch.Generator | None = None


@dataclass(frozen=True)
class LossParams:
    """Loss-specific knobs; every loss reads only the ones it needs."""

    gbce_t: float = 0.75  # gBCE calibration t (0 turns gBCE into BCE)
    # Logits the full softmax holds at once (bounds its memory); None: 1M on CPU, 64M on GPU.
    softmax_chunk: int | None = None
    logq_correction: LogQCorrection = "standard"  # with `LossInputs.log_q` / `item_frequencies`
    scaled_ce_alpha: float = 100.0  # scaled-ce: the negatives' sum is multiplied by alpha
    # sce: buckets and hidden states per bucket (None: both 2 sqrt(N) for N training
    # positions), items per bucket, and whether the projections mix the hidden states (mix_x).
    sce_buckets: int | None = None
    sce_bucket_size_x: int | None = None
    sce_bucket_size_y: int = 256
    sce_mix_x: bool = False
    # rece: hashing rounds, neighbouring chunks each chunk also scores, and buckets (None:
    # sqrt(4 (1 + 2 extra) min(N, n_items)), the authors' balance of projections and logits).
    rece_rounds: int = 8
    rece_extra_chunks: int = 1
    rece_buckets: int | None = None


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
    # True (a bare function given as the loss): `--negatives` decides, default none.
    negatives_from_flags: bool = False
    # What the trainer must supply (see `Need`); None: {"negatives"} when `negatives` > 0, else
    # {"catalogue"} (a spec written before losses declared their needs). The logQ inputs are
    # added by the run's `--logq`, never declared here.
    needs: frozenset[Need] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.needs is None:
            derived: Need = "negatives" if self.negatives > 0 else "catalogue"
            object.__setattr__(self, "needs", frozenset({derived}))

    @property
    def declared(self) -> frozenset[Need]:
        """`needs`, resolved (never None after construction)."""
        return self.needs if self.needs is not None else frozenset()

    @property
    def samples_negatives(self) -> bool:
        return "negatives" in self.declared
