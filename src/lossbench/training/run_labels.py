"""Run labels: what a run is called in tables, figures and folder names. An arm's label names
exactly what differs from the plain loss ("bce 10 negatives", "sampled-ce in-batch logq",
"improved shuffled"), so tables, figures and run folders tell the arms apart; a plain loss is
labelled by its name alone. Negatives are named when they differ from the loss's published
count.

A label is derived from a run's configuration, never stored beside it, so a finished run
folder is labelled the same way whichever grid trained it.
"""

from __future__ import annotations

from typing import Any

from lossbench import plugins
from lossbench.errors import LossbenchError
from lossbench.losses import find_loss
from lossbench.training.config import TrainConfig

SHUFFLED = "shuffled"


def arm_label(
    loss: str,
    sampler: str | None,
    logq: bool | str,
    shuffled: bool,
    negatives: int | None = None,
) -> str:
    """'loss [N negatives] [sampler] [logq [corrected]] [shuffled]': the negatives when they
    differ from the loss's published count, the sampler when it is not uniform; both only for
    a loss that samples negatives at all."""
    words = [loss]
    count = _named_negatives(loss, negatives)
    if count is not None:
        words.append(f"{count} negative{'s' if count != 1 else ''}")
    if sampler not in (None, "uniform") and _samples(loss):
        words.append(str(sampler))
    if logq:
        words.append("logq corrected" if logq == "corrected" else "logq")
    if shuffled:
        words.append(SHUFFLED)
    return " ".join(words)


def _named_negatives(loss: str, negatives: int | None) -> int | None:
    """`negatives` when the loss has a published count that they change (a bare function
    that takes its negatives from the flags has none)."""
    if negatives is None:
        return None
    try:
        spec = find_loss(loss).value
    except LossbenchError:
        return None
    return negatives if spec.samples_negatives and negatives != spec.negatives else None


def _samples(loss: str) -> bool:
    """Does the loss take sampled negatives (a bare function: when the flags give some)?
    A finished run's loss that no longer resolves counts as sampling."""
    try:
        spec = find_loss(loss).value
    except LossbenchError:
        return True
    return spec.samples_negatives or spec.negatives_from_flags


def config_label(config: TrainConfig) -> str:
    return arm_label(
        config.loss_name, config.sampler, config.logq, config.shuffle_train, config.negatives
    )


def record_label(loss: str, config: dict[str, Any]) -> str:
    """The label of a finished run from its saved config (settings it predates are off)."""
    return arm_label(
        loss,
        config.get("sampler"),
        config.get("logq") or False,
        bool(config.get("shuffle_train", False)),
        config.get("negatives"),
    )


def folder_name(label: str) -> str:
    """A label as one path component: 'sampled-ce in-batch logq' -> 'sampled-ce-in-batch-logq',
    './my_loss.py:fn' -> 'my_loss.py-fn'."""
    return plugins.folder_name(label)


def run_name(config: TrainConfig) -> str:
    """`train`'s default run folder name: label, split (when not leave-one-out), seed."""
    return f"{folder_name(config_label(config))}{config.split_spec.folder_suffix}-seed{config.seed}"
