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
from typing import Literal, Protocol, get_args

import torch
from torch import Tensor

from lossbench.errors import LossbenchError

Positions = Literal["all", "last", "masked"]
SamplerName = Literal["uniform", "popularity"]  # sampled evaluation's candidates
# Training negatives (see `samplers.py`): the two above, the batch's other targets, or both.
NegativeSamplerName = Literal["uniform", "popularity", "in-batch", "mixed"]
# How a sampled softmax corrects for its sampler: Yi et al.'s logQ, or Khrylchenko et al.'s.
LogQCorrection = Literal["standard", "corrected"]

# What a loss may be given besides the hidden states, targets and the item table (see
# `LossSpec.needs`); the trainer supplies exactly the declared ones, so a loss never receives
# an input it did not ask for and never misses one it did:
# - "catalogue": it scores (or searches) the whole item table, not only sampled rows;
# - "negatives": sampled negatives from the trainer's sampler (`LossInputs.negatives`);
# - "log_q": the sampler's log probability of each item (`LossInputs.log_q`);
# - "item_frequencies": the sampler's frequency of each item (`LossInputs.item_frequencies`);
# - "item_counts": each item's occurrences in the training data (`LossInputs.item_counts`);
# - "generator": a seeded `torch.Generator` for the loss's own random projections.
Need = Literal["catalogue", "negatives", "log_q", "item_frequencies", "item_counts", "generator"]
NEEDS: tuple[Need, ...] = get_args(Need)
# The inputs that describe the negative sampler: only a loss fed its negatives can use them.
SAMPLER_NEEDS: frozenset[Need] = frozenset({"log_q", "item_frequencies"})


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
    # (n_items + 1,) int64 occurrences of each item in the training data (entry 0, padding:
    # 0), for a loss that weighs items by their popularity; None: not needed.
    item_counts: Tensor | None = None
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
    """A registered loss, what it needs and the setup it was published with (the defaults).

    `needs` is the loss's contract with the trainer (see `Need`): the trainer supplies exactly
    these inputs, and reads whether the loss scores the catalogue or sampled negatives from
    here, never from a count. `accepts` are inputs the loss can use when a run asks for them
    (`--logq` asks for "log_q", `--logq corrected` for "item_frequencies"). A spec is checked
    when it is made: `negatives` (the default count) is > 0 exactly when the loss needs
    negatives, and the sampler's inputs come only with negatives.
    """

    fn: LossFn
    positions: Positions  # default training positions
    negatives: int  # default negatives per position; 0 for a loss that needs none
    description: str
    # True (a bare function given as the loss): `--negatives K` feeds it K negatives in place
    # of the catalogue; default none.
    negatives_from_flags: bool = False
    needs: frozenset[Need] = field(kw_only=True)
    accepts: frozenset[Need] = field(default=frozenset(), kw_only=True)

    def __post_init__(self) -> None:
        where = f"loss spec {self.description!r}"
        unknown = sorted(set(self.needs | self.accepts) - set(NEEDS))
        if unknown:
            raise LossbenchError(
                f"{where}: unknown need {unknown[0]!r}; the needs are: {', '.join(NEEDS)}"
            )
        if not self.needs & {"catalogue", "negatives"}:
            raise LossbenchError(
                f"{where} needs neither 'catalogue' nor 'negatives': declare what it scores"
            )
        if ("negatives" in self.needs) != (self.negatives > 0):
            raise LossbenchError(
                f"{where}: a loss that needs 'negatives' has a default count > 0, and only "
                f"such a loss (negatives={self.negatives}, needs {sorted(self.needs)})"
            )
        if (self.needs | self.accepts) & SAMPLER_NEEDS and "negatives" not in self.needs:
            raise LossbenchError(
                f"{where}: 'log_q' and 'item_frequencies' describe the negative sampler, so "
                "the loss must need 'negatives'"
            )

    @property
    def declared(self) -> frozenset[Need]:
        """The declared needs (`needs`)."""
        return self.needs

    @property
    def samples_negatives(self) -> bool:
        return "negatives" in self.needs

    @property
    def logq(self) -> bool:
        """Does the loss take the logQ correction of a sampled softmax (`--logq`)?"""
        return bool((self.needs | self.accepts) & SAMPLER_NEEDS)

    def run_needs(self, negatives: int, logq: bool | str = False) -> frozenset[Need]:
        """What the trainer supplies for a run with `negatives` per position and `logq`: the
        declared needs; a bare function's negatives when the flags give some; and the input
        `--logq` asks for, when the loss accepts it."""
        needs = set(self.needs)
        if self.negatives_from_flags and negatives > 0:
            needs = (needs - {"catalogue"}) | {"negatives"}
        if logq:
            wanted: Need = "item_frequencies" if logq == "corrected" else "log_q"
            if wanted in self.accepts:
                needs.add(wanted)
        return frozenset(needs)
