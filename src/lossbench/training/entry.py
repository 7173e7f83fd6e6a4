"""One run, resolved and validated once: the unit every executor hands to `train_entry`.

`plan_entry` resolves each name of a configuration in one place: the model (its spec and
validated settings, from the registry or a plugin), the loss (its published defaults with the
user's overrides, checked against the model), the device and the precision (`auto` follows
the device), whether `--init` fits the model, and the code's sources. Nothing downstream
resolves a name again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel
from torch import nn

from lossbench.errors import LossbenchError
from lossbench.models import MODELS, ModelSpec
from lossbench.models.base import pretrainable_model
from lossbench.training.config import TrainConfig
from lossbench.training.names import Names
from lossbench.training.run_labels import arm_label
from lossbench.training.setup import (
    LossSettings,
    resolve_loss,
    run_device,
    run_precision,
)


@dataclass(frozen=True)
class PlanEntry:
    """A run to train: its configuration, its folder and every name resolved."""

    config: TrainConfig
    run_dir: Path
    model: ModelSpec
    model_settings: BaseModel  # validated by `model.config_class`
    loss: LossSettings
    device: torch.device
    # Where the loss and model code came from, with a plugin's source sha256 (config.json's
    # `sources`): read once, so a run records the code the plan was checked against.
    sources: dict[str, dict[str, str | None]]

    @property
    def label(self) -> str:
        """'synthetic sasrec + sampled-ce in-batch, seed 0': the arm names what it varies."""
        c = self.config
        arm = arm_label(
            self.loss.name, c.sampler, c.logq, c.shuffle_train, c.negatives, self.loss.spec
        )
        return f"{c.dataset} {c.model} + {arm}, seed {c.seed}"

    @property
    def max_len(self) -> int:
        return self.model.max_len(self.model_settings)

    def build_model(self, n_items: int) -> nn.Module:
        """The model with fresh weights, or with `--init`'s for a pretrainable model."""
        model = self.model.build(self.model_settings, n_items)
        if self.config.init is not None:
            loadable = pretrainable_model(model, self.model, self.config.model)
            loadable.load_pretrained(self.config.init)
        return model


def plan_entry(config: TrainConfig, run_dir: Path, names: Names | None = None) -> PlanEntry:
    """Resolve and check `config` for a run in `run_dir`; a LossbenchError names what is wrong.
    `names`: the request's resolved names (a fresh set when not given)."""
    names = names if names is not None else Names()
    spec = names.model_spec(config.model)
    settings = names.model_settings(config.model, config.model_settings)
    loss = resolve_loss(config, names)
    device = run_device(config.device, config.precision)
    precision = run_precision(config.precision, device)
    if precision != config.precision:  # auto: the run records what it trains with
        config = config.model_copy(update={"precision": precision})
    if config.init is not None and not spec.pretrainable:
        pretrainable = ", ".join(name for name, spec in MODELS.items() if spec.pretrainable)
        raise LossbenchError(
            f"model {config.model} takes no --init checkpoint; models that do: {pretrainable}"
        )
    sources = names.sources(loss.name, config.model)
    return PlanEntry(config, run_dir, spec, settings, loss, device, sources)
