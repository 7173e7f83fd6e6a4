"""The arms of a comparison: a loss, optionally with its own number of negatives, negative
sampler and logQ, and trained on ordered or shuffled sequences (labelled by
`lossbench.training.run_labels`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lossbench.losses.base import NegativeSamplerName


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
