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
from lossbench.losses import LossSpec, find_loss
from lossbench.training.config import TrainConfig
from lossbench.training.names import Names

SHUFFLED = "shuffled"


def arm_label(
    loss: str,
    sampler: str | None,
    logq: bool | str,
    shuffled: bool,
    negatives: int | None = None,
    spec: LossSpec | None = None,
) -> str:
    """'loss [N negatives] [sampler] [logq [corrected]] [shuffled]': the negatives when they
    differ from the loss's published count, the sampler when it is not uniform; both only for
    a loss that samples negatives at all. `spec`: the loss's, when the caller resolved it (a
    finished run's loss is looked up here, and one that no longer resolves counts as
    sampling)."""
    if spec is None:
        try:
            spec = find_loss(loss).value
        except LossbenchError:
            spec = None
    words = [loss]
    count = _named_negatives(spec, negatives)
    if count is not None:
        words.append(f"{count} negative{'s' if count != 1 else ''}")
    if sampler not in (None, "uniform") and _samples(spec):
        words.append(str(sampler))
    if logq:
        words.append("logq corrected" if logq == "corrected" else "logq")
    if shuffled:
        words.append(SHUFFLED)
    return " ".join(words)


def _named_negatives(spec: LossSpec | None, negatives: int | None) -> int | None:
    """`negatives` when the loss has a published count that they change (a bare function
    that takes its negatives from the flags has none)."""
    if negatives is None or spec is None:
        return None
    return negatives if spec.samples_negatives and negatives != spec.negatives else None


def _samples(spec: LossSpec | None) -> bool:
    """Does the loss take sampled negatives (a bare function: when the flags give some)?
    A loss that does not resolve counts as sampling."""
    return spec is None or spec.samples_negatives or spec.negatives_from_flags


def config_label(config: TrainConfig, names: Names | None = None) -> str:
    """The arm a configuration trains (`names`: the request's, to look its loss up once)."""
    if names is None:
        loss, spec = config.loss_name, None
    else:
        loss = config.loss if config.loss is not None else names.default_loss(config.model)
        spec = names.loss_spec(loss)
    return arm_label(
        loss, config.sampler, config.logq, config.shuffle_train, config.negatives, spec
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


def run_name(config: TrainConfig, names: Names | None = None) -> str:
    """`train`'s default run folder name: label, split (when not leave-one-out), seed."""
    label = folder_name(config_label(config, names))
    return f"{label}{config.split_spec.folder_suffix}-seed{config.seed}"
