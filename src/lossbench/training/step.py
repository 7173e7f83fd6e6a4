"""One training step: the model's states at the training positions, negatives, the loss.

The model's declared abilities (`ModelSpec`) choose the fast paths: all parts of a batch in one
packed call (`packed_parts`), or only the last column's state when only the last position
trains (`encodes_last_only`). Nothing here inspects the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lossbench.data.sequences import SequenceTensors
from lossbench.errors import LossbenchError
from lossbench.losses.base import LossInputs
from lossbench.losses.negatives import UnseenSampler
from lossbench.losses.samplers import NegativeSampler, build_sampler
from lossbench.models.base import (
    LastOnlyEncoder,
    ModelSpec,
    PackedPartsEncoder,
    SequenceModel,
    last_only_encoder,
    packed_parts_encoder,
    scoring_table,
    sequence_model,
)
from lossbench.training.batches import TrainBatch, TrainBatcher
from lossbench.training.cost import LossClock
from lossbench.training.entry import PlanEntry
from lossbench.training.setup import LossSettings


@dataclass(frozen=True)
class TrainingStep:
    """The loss of one training step over the training positions of all its parts (the model
    runs once per part, or once for all; the loss once, so its mean is over the whole batch)."""

    model: nn.Module
    spec: ModelSpec
    loss: LossSettings
    sampler: NegativeSampler | None  # None: the loss samples no negatives
    generator: torch.Generator  # of the negatives, on the model's device
    # The model as called in training: `torch.compile`d, or the model itself.
    step_model: Callable[..., Tensor] | None = None
    clock: LossClock | None = None  # times the loss's own forward and backward
    # (n_items + 1,) int64 training occurrences on the model's device, for a loss that needs
    # "item_counts"; None otherwise.
    item_counts: Tensor | None = None
    # The model's declared abilities as typed views, checked once when the step is made
    # (None: not declared, or not usable on a compiled model).
    scorer: SequenceModel = field(init=False)
    packed: PackedPartsEncoder | None = field(init=False)
    last_only: LastOnlyEncoder | None = field(init=False)

    def __post_init__(self) -> None:
        call = self.step_model or self.model
        compiled = self.step_model is not None and self.step_model is not self.model
        packed = None
        if self.spec.packed_parts and not compiled:  # forward_parts is the eager module's
            packed = packed_parts_encoder(self.model, self.spec)
        last_only = last_only_encoder(call, self.spec) if self.spec.encodes_last_only else None
        missing = [
            name
            for name, source in (("negatives", self.sampler), ("item_counts", self.item_counts))
            if name in self.loss.needs and source is None
        ]
        if missing:
            raise LossbenchError(
                f"loss {self.loss.name} needs {' and '.join(missing)} but the step was given none"
            )
        object.__setattr__(self, "scorer", sequence_model(self.model))
        object.__setattr__(self, "packed", packed)
        object.__setattr__(self, "last_only", last_only)

    def __call__(self, parts: list[TrainBatch]) -> Tensor:
        states = self.states(parts)
        at_positions = states[0] if len(states) == 1 else torch.cat(states)  # (N, D)
        targets = parts[0].targets if len(parts) == 1 else torch.cat([p.targets for p in parts])
        table = scoring_table(self.scorer)
        inputs = LossInputs(at_positions, targets, table, **self.supplied(parts, targets))
        if self.clock is None:
            return self.loss.spec.fn(inputs, self.loss.params)
        with self.clock.forward(at_positions):
            return self.loss.spec.fn(inputs, self.loss.params)

    def supplied(self, parts: list[TrainBatch], targets: Tensor) -> dict[str, Any]:
        """Exactly the inputs the loss declares it needs (`LossSettings.needs`); their sources
        were checked when the step was made."""
        needs, sampler, given = self.loss.needs, self.sampler, dict[str, Any]()
        if "negatives" in needs:
            assert sampler is not None
            users = None
            if sampler.needs_users:
                users = torch.cat([part.position_users() for part in parts])  # (N,)
            given["negatives"] = sampler.sample(targets, users, self.generator)
            if "log_q" in needs:
                given["log_q"] = sampler.log_q
            if "item_frequencies" in needs:
                given["item_frequencies"] = sampler.frequencies
        if "item_counts" in needs:
            given["item_counts"] = self.item_counts
        if "generator" in needs:
            given["generator"] = self.generator  # the negatives' generator: checkpointed
        return given

    def states(self, parts: list[TrainBatch]) -> list[Tensor]:
        """(N_p, D) hidden states at each part's training positions."""
        if self.loss.positions != "last" and self.packed is not None:
            hidden_parts = self.packed.forward_parts([part.inputs for part in parts])
            return [
                hidden.reshape(-1, hidden.shape[-1]).index_select(0, part.positions)
                for hidden, part in zip(hidden_parts, parts, strict=True)
            ]
        return [self._part_states(part) for part in parts]

    def _part_states(self, part: TrainBatch) -> Tensor:
        if self.loss.positions == "last" and self.last_only is not None:
            # Only the last column trains: skip the other queries of the final block.
            return self.last_only(part.inputs, last_only=True)[:, -1]  # (B, D)
        hidden = (self.step_model or self.model)(part.inputs)  # (B, W, D)
        return hidden.reshape(-1, hidden.shape[-1]).index_select(0, part.positions)


def negative_sampler(
    entry: PlanEntry, n_items: int, sequences: SequenceTensors, batcher: TrainBatcher
) -> NegativeSampler | None:
    """The run's negative sampler on its device (None when the loss samples no negatives)."""
    config, device, needs = entry.config, entry.device, entry.loss.needs
    if "negatives" not in needs:
        return None
    unseen = None
    if config.negatives_unseen:
        unseen = UnseenSampler(sequences.train_offsets, sequences.train_items, n_items, device)
        unseen.check(batcher.users.to(device))
    return build_sampler(
        config.sampler,
        entry.loss.negatives,
        sequences.item_counts,
        batcher.target_counts(n_items),
        device,
        logq="corrected" if "item_frequencies" in needs else "log_q" in needs,
        unseen=unseen,
    )


def loss_item_counts(entry: PlanEntry, sequences: SequenceTensors) -> Tensor | None:
    """The training item counts on the run's device when the loss needs them, else None."""
    if "item_counts" not in entry.loss.needs:
        return None
    return sequences.item_counts.to(entry.device)
