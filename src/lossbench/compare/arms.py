"""The arms of a comparison: a loss, optionally with its own number of negatives, negative
sampler and logQ, and trained on ordered or shuffled sequences. An arm's label names exactly
what differs from the plain loss ("bce 10 negatives", "sampled-ce in-batch logq", "improved
shuffled"), so tables, figures and run folders tell the arms apart; a plain loss is labelled
by its name alone. Negatives are named when they differ from the loss's published count.

A label is derived from a run's configuration, never stored beside it, so a finished run
folder is labelled the same way whichever grid trained it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lossbench import plugins
from lossbench.errors import LossbenchError
from lossbench.losses import find_loss
from lossbench.losses.base import NegativeSamplerName
from lossbench.training.config import TrainConfig

SHUFFLED = "shuffled"


class LossArm(BaseModel):
    """A `[grid]` losses entry written as a table: `{loss = "sampled-ce", sampler =
    "in-batch", logq = true}`, `{loss = "bce", negatives = 10}`. Unset fields keep the grid's
    settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    loss: str
    negatives: int | None = Field(default=None, ge=0)
    sampler: NegativeSamplerName | None = None
    logq: bool | Literal["corrected"] | None = None  # "standard" is True, "none" False

    @field_validator("logq", mode="before")
    @classmethod
    def _logq_words(cls, value: object) -> object:
        return (
            {"standard": True, "none": False}.get(value, value) if isinstance(value, str) else value
        )

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, name: str) -> str:
        try:
            find_loss(name)  # built-in, entry point or import string
        except LossbenchError as error:
            raise ValueError(str(error)) from None
        return name

    def overrides(self) -> dict[str, Any]:
        """The TrainConfig fields this arm sets. Negatives outside the user's history are
        drawn uniformly, so an arm with another sampler draws them anywhere."""
        values: dict[str, Any] = {"loss": self.loss}
        if self.negatives is not None:
            values["negatives"] = self.negatives
        if self.sampler is not None:
            values["sampler"] = self.sampler
            if self.sampler != "uniform":
                values["negatives_unseen"] = False
        if self.logq is not None:
            values["logq"] = self.logq
        return values


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
