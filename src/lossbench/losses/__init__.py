"""The loss registry: name -> `LossSpec` (function plus the setup it was published with).

`ce`, `improved` (alias `cce`) and `mlm` share one function, the full-catalogue softmax; only
the training positions the trainer picks differ. Defaults reproduce the study's setups, and the
losses made for large catalogues (`sce`, `rece`, `scaled-ce`) their authors' published ones.
Each spec declares what the trainer must supply (`needs`: the catalogue, sampled negatives, a
generator for random projections) and what it can use when a run asks (`accepts`: `--logq`
gives `sampled-ce` the sampler's log Q, `--logq corrected` its item frequencies).
Losses from outside lossbench (entry points, `package.module:name`, `./file.py:name`) are
resolved by `find_loss` through `lossbench.plugins`.
"""

from __future__ import annotations

import inspect

from lossbench import plugins
from lossbench.errors import LossbenchError
from lossbench.losses.base import NEEDS, LossFn, LossInputs, LossParams, LossSpec, Need
from lossbench.losses.binary import bce, gbce
from lossbench.losses.full_softmax import full_softmax_ce
from lossbench.losses.negatives import popularity_cdf, sample_negatives
from lossbench.losses.pairwise import bpr, bpr_max, top1, top1_max
from lossbench.losses.reduced_ce import rece
from lossbench.losses.sampled_softmax import sampled_ce, scaled_ce
from lossbench.losses.scalable_ce import sce

CATALOGUE: frozenset[Need] = frozenset({"catalogue"})
SAMPLED: frozenset[Need] = frozenset({"negatives"})
PROJECTED: frozenset[Need] = frozenset({"catalogue", "generator"})
LOGQ: frozenset[Need] = frozenset({"log_q", "item_frequencies"})  # standard, corrected

_IMPROVED = LossSpec(
    fn=full_softmax_ce,
    positions="all",
    negatives=0,
    needs=CATALOGUE,
    description="the study's improved loss (CCE): full-catalogue softmax CE at every position",
)

LOSSES: dict[str, LossSpec] = {
    "bce": LossSpec(
        fn=bce,
        positions="all",
        negatives=1,
        needs=SAMPLED,
        description="SASRec's BCE: every position, uniformly sampled negatives (averaged)",
    ),
    "ce": LossSpec(
        fn=full_softmax_ce,
        positions="last",
        negatives=0,
        needs=CATALOGUE,
        description="full-catalogue softmax CE at the last position only (GRU4Rec / SR-GNN)",
    ),
    "improved": _IMPROVED,
    "cce": _IMPROVED,
    "bpr": LossSpec(
        fn=bpr,
        positions="last",
        negatives=10,
        needs=SAMPLED,
        description="BPR: -mean_j log sig(s(y) - s(n_j)) at the last position",
    ),
    "bpr-max": LossSpec(
        fn=bpr_max,
        positions="last",
        negatives=10,
        needs=SAMPLED,
        description="BPR-max: BPR with negatives weighted by their softmax (GRU4Rec)",
    ),
    "top1": LossSpec(
        fn=top1,
        positions="last",
        negatives=10,
        needs=SAMPLED,
        description="TOP1: mean_j sig(s(n_j) - s(y)) + sig(s(n_j)^2) at the last position",
    ),
    "top1-max": LossSpec(
        fn=top1_max,
        positions="last",
        negatives=10,
        needs=SAMPLED,
        description="TOP1-max: TOP1 with negatives weighted by their softmax (GRU4Rec)",
    ),
    "sampled-ce": LossSpec(
        fn=sampled_ce,
        positions="all",
        negatives=128,
        needs=SAMPLED,
        description="sampled softmax CE over the positive and K negatives at every position",
        accepts=LOGQ,
    ),
    "gbce": LossSpec(
        fn=gbce,
        positions="all",
        negatives=256,
        needs=SAMPLED,
        description="gSASRec's gBCE: calibrated BCE with summed negatives (t = 0.75)",
    ),
    "mlm": LossSpec(
        fn=full_softmax_ce,
        positions="masked",
        negatives=0,
        needs=CATALOGUE,
        description="BERT4Rec: full-catalogue softmax CE at randomly masked positions",
    ),
    "sce": LossSpec(
        fn=sce,
        positions="all",
        negatives=0,
        needs=PROJECTED,
        description="Scalable CE (Mezentsev et al. 2024): softmax over the positive and the "
        "hardest items found by random-projection buckets",
    ),
    "rece": LossSpec(
        fn=rece,
        positions="all",
        negatives=0,
        needs=PROJECTED,
        description="Reduced CE (Gusak et al. 2024): full softmax CE on LSH-bucketed chunks, "
        "duplicates counted once",
    ),
    "scaled-ce": LossSpec(
        fn=scaled_ce,
        positions="all",
        negatives=500,
        needs=SAMPLED,
        description="scaled CE (Xu et al. 2024): sampled softmax with the negatives' sum "
        "times alpha (100)",
    ),
}


def as_loss_spec(loaded: object, reference: str) -> LossSpec:
    """A loaded object as a spec: a `LossSpec` as it is; a bare function
    `fn(inputs, params) -> Tensor` trains on the flags' positions and negatives (default:
    every position, no negatives)."""
    if isinstance(loaded, LossSpec):
        return loaded
    if callable(loaded) and not isinstance(loaded, type):
        summary = (inspect.getdoc(loaded) or "").strip().partition("\n")[0]
        return LossSpec(
            fn=loaded,
            positions="all",
            negatives=0,
            description=summary or f"{reference} (a loss function)",
            negatives_from_flags=True,
            needs=CATALOGUE,  # until `--negatives K` feeds it negatives instead
        )
    raise LossbenchError(
        f"loss {reference!r} is a {type(loaded).__name__}, not a LossSpec or a loss function "
        "fn(inputs: LossInputs, params: LossParams) -> Tensor"
    )


def _could_be_loss(value: object) -> bool:
    return isinstance(value, LossSpec) or inspect.isfunction(value)


LOSS_PLUGINS = plugins.PluginKind("loss", "losses", LOSSES, as_loss_spec, _could_be_loss)


def find_loss(name: str) -> plugins.Found[LossSpec]:
    """The spec `name` refers to (built-in, entry point or import string) and its source."""
    return plugins.find(LOSS_PLUGINS, name)


def resolve_loss(name: str) -> LossSpec:
    """The spec for `name`; unknown names fail listing the valid ones."""
    return find_loss(name).value


__all__ = [
    "CATALOGUE",
    "LOGQ",
    "LOSSES",
    "LOSS_PLUGINS",
    "LossFn",
    "LossInputs",
    "LossParams",
    "LossSpec",
    "NEEDS",
    "PROJECTED",
    "SAMPLED",
    "Need",
    "as_loss_spec",
    "find_loss",
    "popularity_cdf",
    "resolve_loss",
    "sample_negatives",
]
