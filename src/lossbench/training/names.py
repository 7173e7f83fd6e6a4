"""The names of one request, each resolved once.

A request names losses, models and datasets as text (a built-in, an entry point, an import
string or a registered dataset). Planning hands one `Names` to every step that needs what a
name stands for, and `Names` asks the plugin and dataset lookups once per name: a grid of
2 losses x 3 seeds looks its loss names up twice, not once per run and label.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from lossbench import plugins
from lossbench.data.registry import DatasetEntry, get_dataset
from lossbench.losses import LossSpec, find_loss
from lossbench.models import ModelSpec, find_model, spec_settings


@dataclass
class Names:
    """Resolved names of one request; `data_dir` is where its datasets (and the user
    registry, `user-datasets.toml`) live, None: the default."""

    data_dir: Path | None = None
    _losses: dict[str, plugins.Found[LossSpec]] = field(default_factory=dict, repr=False)
    _models: dict[str, plugins.Found[ModelSpec]] = field(default_factory=dict, repr=False)
    _datasets: dict[str, DatasetEntry] = field(default_factory=dict, repr=False)

    def loss(self, name: str) -> plugins.Found[LossSpec]:
        """The loss `name` refers to and its source; a LossbenchError lists the valid names."""
        if name not in self._losses:
            self._losses[name] = find_loss(name)
        return self._losses[name]

    def model(self, name: str) -> plugins.Found[ModelSpec]:
        """The model `name` refers to and its source; a LossbenchError lists the valid names."""
        if name not in self._models:
            self._models[name] = find_model(name)
        return self._models[name]

    def dataset(self, name: str) -> DatasetEntry:
        """The registry entry of dataset `name`; an unknown name suggests the closest."""
        if name not in self._datasets:
            self._datasets[name] = get_dataset(name, data_dir=self.data_dir)
        return self._datasets[name]

    def loss_spec(self, name: str) -> LossSpec:
        return self.loss(name).value

    def model_spec(self, name: str) -> ModelSpec:
        return self.model(name).value

    def default_loss(self, model: str) -> str:
        """The loss `model` was published with (a config's loss when it names none)."""
        return self.model_spec(model).default_loss

    def model_settings(self, model: str, overrides: Mapping[str, object]) -> BaseModel:
        """The model's settings with `overrides`, validated by its config class."""
        return spec_settings(self.model_spec(model), model, overrides)

    def sources(self, loss: str, model: str) -> dict[str, dict[str, str | None]]:
        """Where the run's loss and model code came from, as config.json records it."""
        return {
            "loss": self.loss(loss).source.record(),
            "model": self.model(model).source.record(),
        }
