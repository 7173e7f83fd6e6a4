"""The search space of `lossbench tune`: which settings a trial may change, and over what.

A TOML table `[tune.space]` maps a setting to a range or to a list of choices:

    [tune.space]
    lr = { low = 1e-4, high = 1e-2, log = true }   # floats (log scale)
    num_layers = { low = 1, high = 3 }             # integers: both bounds are integers
    dropout = [0.1, 0.3, 0.5]                      # choices

A name is a training setting (`TUNABLE_TRAINING`) or a setting of the tuned model (its config
class's fields: `hidden_size`, `dropout`, ...). Evaluation, execution and budget settings can
never be tuned: one that changes how runs are scored, or how long a trial may train, would
make the losses' tuned values incomparable. Every loss is tuned over the same space.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ConfigDict, ValidationError

from lossbench.errors import LossbenchError
from lossbench.models import model_spec
from lossbench.training.config import read_toml

if TYPE_CHECKING:  # optuna is imported by the command that tunes
    import optuna

Choice = str | int | float | bool

# TrainConfig fields a trial may change; every other field is the same for every trial.
TUNABLE_TRAINING = (
    "lr",
    "beta1",
    "beta2",
    "weight_decay",
    "batch_size",
    "batching",
    "positions",
    "negatives",
    "sampler",
    "negatives_unseen",
    "logq",
    "gbce_t",
    "mask_prob",
)

# Built in: the learning rate and the hidden dropout, which every model has.
_NOT_IN_SETTINGS = {
    "dataset": "give --dataset",
    "model": "give --model",
    "loss": "give --losses",
    "seed": "give --seed",
    "per_loss": "every loss is tuned over the same [tune.space]",
}

DEFAULT_SPACE: dict[str, Any] = {
    "lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "dropout": [0.1, 0.2, 0.3, 0.4, 0.5],
}


class _Range(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    low: int | float
    high: int | float
    log: bool = False
    step: int | float | None = None


@dataclass(frozen=True)
class Param:
    """One tuned setting: a range (`low`..`high`) or a list of `choices`."""

    name: str
    model_setting: bool  # True: goes to `model_settings`
    choices: tuple[Choice, ...] | None = None
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    integer: bool = False

    def describe(self) -> dict[str, Any]:
        """The TOML form, for the study's fingerprint and the summary."""
        if self.choices is not None:
            return {"choices": list(self.choices)}
        form: dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log}
        return form | ({"step": self.step} if self.step is not None else {})

    def suggest(self, trial: optuna.Trial) -> Choice:
        if self.choices is not None:
            return cast(Choice, trial.suggest_categorical(self.name, list(self.choices)))
        if self.integer:
            step = int(self.step) if self.step is not None else 1
            low, high = int(self.low), int(self.high)
            return trial.suggest_int(self.name, low, high, step=step, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def probes(self) -> list[Choice]:
        """Values that must all make a valid run: both ends, an inner point, every choice.
        The inner point is not a whole number, so a float range over an integer setting fails."""
        if self.choices is not None:
            return list(self.choices)
        if self.integer:
            return [int(self.low), int(self.high)]
        if self.log:
            inner = math.exp(math.log(self.low) + 0.37 * (math.log(self.high) - math.log(self.low)))
        else:
            inner = self.low + 0.37 * (self.high - self.low)
        return [self.low, inner, self.high] if self.step is None else [self.low, self.high]


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]  # sorted by name: trials suggest in this order

    @property
    def names(self) -> list[str]:
        return [param.name for param in self.params]

    def describe(self) -> dict[str, Any]:
        return {param.name: param.describe() for param in self.params}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()

    def first(self) -> dict[str, Choice]:
        """Each setting's first probe value: one valid point of the space."""
        return {param.name: param.probes()[0] for param in self.params}

    def suggest(self, trial: optuna.Trial) -> dict[str, Choice]:
        return {param.name: param.suggest(trial) for param in self.params}

    def settings_layer(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Tuned values as a settings layer: training fields at the top, model ones nested."""
        by_name = {param.name: param for param in self.params}
        layer: dict[str, Any] = {}
        model_settings: dict[str, Any] = {}
        for name, value in values.items():
            (model_settings if by_name[name].model_setting else layer)[name] = value
        return layer | ({"model_settings": model_settings} if model_settings else {})


def parse_space(table: Mapping[str, Any] | None, model: str, source: str) -> SearchSpace:
    """`[tune.space]` (None: the built-in space) for `model`, checked name by name."""
    table = DEFAULT_SPACE if table is None else table
    if not table:
        raise LossbenchError(f"[tune.space] in {source} is empty; give at least one setting")
    model_fields = model_spec(model).config_class.model_fields
    valid = [*TUNABLE_TRAINING, *model_fields]
    params = []
    for name in sorted(table):
        if name not in valid:
            raise LossbenchError(
                f"[tune.space] in {source}: {name!r} cannot be tuned; "
                f"the settings that can are: {', '.join(valid)}"
            )
        params.append(_param(name, table[name], name in model_fields, source))
    return SearchSpace(tuple(params))


def _param(name: str, value: Any, model_setting: bool, source: str) -> Param:
    where = f"[tune.space] {name} in {source}"
    if isinstance(value, list):
        return _choices(name, value, model_setting, where)
    if not isinstance(value, dict):
        raise LossbenchError(
            f"{where}: give a range {{ low = .., high = .. }} or a list of choices "
            f"(a fixed value belongs in [settings]), not {value!r}"
        )
    unknown = sorted(set(value) - set(_Range.model_fields))
    if unknown:
        raise LossbenchError(
            f"{where}: unknown key {unknown[0]!r}; a range has {', '.join(_Range.model_fields)}"
        )
    try:
        bounds = _Range.model_validate(value)
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "range"
        if first["type"] == "missing":
            raise LossbenchError(f"{where}: {field} is missing; a range has low and high") from None
        kind = "true or false" if field == "log" else "a number"
        raise LossbenchError(f"{where}: {field} must be {kind}, not {first['input']!r}") from None
    low, high, step = bounds.low, bounds.high, bounds.step
    if not low < high:
        raise LossbenchError(f"{where}: the range is empty: low {low} is not below high {high}")
    if bounds.log and low <= 0:
        raise LossbenchError(f"{where}: a log range needs low > 0, not {low}")
    if step is not None and (bounds.log or not 0 < step <= high - low):
        raise LossbenchError(f"{where}: step must be in (0, high - low] and without log")
    integer = isinstance(low, int) and isinstance(high, int) and isinstance(step, int | None)
    return Param(name, model_setting, None, low, high, bounds.log, step, integer)


def _choices(name: str, values: list[Any], model_setting: bool, where: str) -> Param:
    if not values:
        raise LossbenchError(f"{where}: the list of choices is empty")
    for value in values:
        if not isinstance(value, str | int | float | bool):
            raise LossbenchError(f"{where}: a choice is a number, a string or a boolean")
    if len({json.dumps(value) for value in values}) < len(values):
        raise LossbenchError(f"{where}: a choice is listed twice")
    return Param(name, model_setting, choices=tuple(values))


def read_tune_file(path: Path) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The `[tune.space]` table (None when absent) and the `[settings]` of a tuning TOML."""
    document = read_toml(path)
    unknown = sorted(set(document) - {"tune", "settings"})
    if unknown:
        raise LossbenchError(
            f"invalid {unknown[0]} in {path}: a tuning file holds only [tune.space] and [settings]"
        )
    tune, settings = dict(document.get("tune", {})), dict(document.get("settings", {}))
    extra = sorted(set(tune) - {"space"})
    if extra:
        raise LossbenchError(f"invalid tune.{extra[0]} in {path}: [tune] holds only [tune.space]")
    for name, how in _NOT_IN_SETTINGS.items():
        if name in settings:
            raise LossbenchError(f"invalid settings.{name} in {path}: {how}")
    space = tune.get("space")
    if space is not None and not isinstance(space, dict):
        raise LossbenchError(f"invalid tune.space in {path}: it is a table of settings")
    return space, settings
