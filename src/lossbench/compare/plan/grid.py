"""A comparison as a grid: datasets x models x losses x shuffle x seeds (`build.py` expands it
into runs, one run folder per cell).

The losses are arms (a loss, or a loss with its own sampler / logQ, see `arms.py`). The grid
comes from flags or from a TOML file's `[grid]` table; either way it is validated here and its
baseline is chosen by one rule (`Grid.baseline_for`).

`[settings.per_loss.<loss>]` tables give one loss its own settings (each loss at its tuned
settings, as `lossbench tune` writes them), a layer over `[settings]` and under the
command-line flags: the one exception, asked for by name, to "runs differ only in the arm".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lossbench.compare.plan.arms import LossArm
from lossbench.errors import LossbenchError
from lossbench.losses import find_loss
from lossbench.models import model_spec
from lossbench.training.config import read_toml
from lossbench.training.run_labels import arm_label

ORIGINAL = "original"  # in a grid's losses: each model's published loss
DEMO_LOSSES = ["bce", "ce", "improved"]
DEMO_SEEDS = [0, 1, 2]


# A run's field -> the [grid] list that varies it.
PLURALS = {"dataset": "datasets", "model": "models", "loss": "losses", "seed": "seeds"}


def _arm(table: dict[str, Any]) -> LossArm:
    try:
        return LossArm.model_validate(table)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = f"an arm sets only {', '.join(LossArm.model_fields)}"
        raise ValueError(f"{field}: {message}" if field != "loss" else message) from None


def _demo_losses() -> list[str | LossArm]:
    return [*DEMO_LOSSES]


class Grid(BaseModel):
    """The `[grid]` table of a grid TOML (or the lists given on the command line)."""

    model_config = ConfigDict(extra="forbid")

    datasets: list[str] = Field(default_factory=lambda: ["synthetic"])
    models: list[str] = Field(default_factory=lambda: ["sasrec"])
    losses: list[str | LossArm] = Field(default_factory=lambda: _demo_losses())
    shuffle: list[bool] = Field(default_factory=lambda: [False])  # the order control axis
    seeds: list[int] = Field(default_factory=lambda: list(DEMO_SEEDS))
    # A loss name or arm label, or `original`: each model's own loss if it is compared, else
    # the first.
    baseline: str = ORIGINAL
    # loss -> settings of that loss only (TrainConfig fields, `model_settings` merged by key)
    per_loss: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("datasets", "models", "losses", "shuffle", "seeds")
    @classmethod
    def _not_empty(cls, values: list[Any]) -> list[Any]:
        if not values:
            raise ValueError("must list at least one value")
        return list(dict.fromkeys(values))  # drop repeats, keep order

    @field_validator("seeds")
    @classmethod
    def _seeds_in_range(cls, seeds: list[int]) -> list[int]:
        for seed in seeds:
            if not 0 <= seed < 2**32:
                raise ValueError(f"seed {seed} is out of range; use 0 <= seed < 2**32")
        return seeds

    @field_validator("models")
    @classmethod
    def _known_models(cls, names: list[str]) -> list[str]:
        for name in names:
            _resolvable(model_spec, name)
        return names

    @field_validator("losses", mode="before")
    @classmethod
    def _tables_are_arms(cls, entries: Any) -> Any:
        """A table entry becomes a `LossArm` here, so a bad one is named by its own error."""
        if not isinstance(entries, list):
            return entries
        return [_arm(entry) if isinstance(entry, dict) else entry for entry in entries]

    @field_validator("losses")
    @classmethod
    def _known_losses(cls, names: list[str | LossArm]) -> list[str | LossArm]:
        for name in names:
            if isinstance(name, str) and name != ORIGINAL:
                _resolvable(find_loss, name, f" ('{ORIGINAL}': each model's own)")
        return names

    @field_validator("baseline")
    @classmethod
    def _known_baseline(cls, name: str) -> str:
        if name != ORIGINAL:
            _resolvable(find_loss, name.split(" ")[0])  # a loss, or an arm label
        return name

    def arms_for(self, model: str) -> list[LossArm]:
        """This model's loss arms, `original` replaced by its published loss, repeats dropped."""
        arms = [
            LossArm(loss=model_spec(model).default_loss if entry == ORIGINAL else entry)
            if isinstance(entry, str)
            else entry
            for entry in self.losses
        ]
        return list(dict.fromkeys(arms))

    def losses_for(self, model: str, negatives: int | None = None) -> list[str]:
        """The labels of this model's rows: every arm, ordered then shuffled when both.

        `negatives`: the grid's shared setting, which an arm's own replaces."""
        return list(dict.fromkeys(label for _, label in self._labelled(model, negatives)))

    def baseline_for(self, model: str, negatives: int | None = None) -> str:
        """The explicit baseline; else the model's own loss if it is compared, else the first.
        A baseline named by its loss alone is that loss's row when it has one."""
        labelled = self._labelled(model, negatives)
        losses = list(dict.fromkeys(label for _, label in labelled))
        wanted = model_spec(model).default_loss if self.baseline == ORIGINAL else self.baseline
        if wanted in losses:
            return wanted
        of_loss = list(dict.fromkeys(label for arm, label in labelled if arm.loss == wanted))
        if len(of_loss) == 1:
            return of_loss[0]
        if self.baseline != ORIGINAL:
            raise LossbenchError(
                f"baseline {self.baseline!r} is not among the compared losses "
                f"({', '.join(losses)}); add it to the losses or pick one of them"
            )
        return losses[0]

    def _labelled(self, model: str, negatives: int | None) -> list[tuple[LossArm, str]]:
        return [
            (arm, arm_label(arm.loss, arm.sampler, arm.logq or False, shuffled, count))
            for arm in self.arms_for(model)
            for shuffled in self.shuffle
            for count in [arm.negatives if arm.negatives is not None else negatives]
        ]


def _resolvable(resolve: Callable[[str], object], name: str, note: str = "") -> None:
    """A validator's check that `name` resolves (built-in, entry point or import string)."""
    try:
        resolve(name)
    except LossbenchError as error:
        raise ValueError(f"{error}{note}") from None


def make_grid(values: dict[str, Any], source: str) -> Grid:
    """Validate grid values; a problem names the field (`invalid grid.losses in F: ...`)."""
    try:
        return Grid.model_validate(values)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = f"unknown field; valid fields are: {', '.join(Grid.model_fields)}"
        raise LossbenchError(f"invalid grid.{where} in {source}: {message}") from None


def read_grid_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `[grid]` and `[settings]` tables of a grid TOML (other tables are an error).

    `[settings.per_loss.<loss>]` tables come back in the grid values as `per_loss`."""
    document = read_toml(path)
    # expect: expectations.py; executor: executors.py
    known = {"grid", "settings", "expect", "executor"}
    unknown = sorted(set(document) - known)
    if unknown:
        raise LossbenchError(
            f"invalid {unknown[0]} in {path}: a grid file holds only [grid], [settings], "
            "[executor] and an expect list"
        )
    grid, settings = dict(document.get("grid", {})), dict(document.get("settings", {}))
    per_loss = settings.pop("per_loss", {})
    if not isinstance(per_loss, dict) or not all(isinstance(v, dict) for v in per_loss.values()):
        raise LossbenchError(
            f"invalid settings.per_loss in {path}: give one table per loss, "
            "[settings.per_loss.<loss>]"
        )
    tables = {"settings": settings} | {f"settings.per_loss.{k}": v for k, v in per_loss.items()}
    for where, table in tables.items():
        for name in ("dataset", "model", "loss", "seed"):
            if name in table:
                raise LossbenchError(
                    f"invalid {where}.{name} in {path}: set it in [grid] as {PLURALS[name]} = [...]"
                )
    if per_loss:
        grid["per_loss"] = per_loss
    return grid, settings


def under_flags(per_loss: dict[str, dict[str, Any]], flags: dict[str, Any]) -> dict[str, Any]:
    """Per-loss settings without those the command-line flags give: a flag wins everywhere."""
    given = {name for name, value in flags.items() if value is not None}
    given_model = set(flags.get("model_settings") or {})
    kept: dict[str, dict[str, Any]] = {}
    for loss, settings in per_loss.items():
        own = {k: v for k, v in settings.items() if k not in given and k != "model_settings"}
        model_settings = {
            k: v for k, v in (settings.get("model_settings") or {}).items() if k not in given_model
        }
        kept[loss] = own | ({"model_settings": model_settings} if model_settings else {})
    return kept


def merge_settings(*layers: dict[str, Any]) -> dict[str, Any]:
    """Later layers win; `model_settings` merge key by key; None means "not given"."""
    merged: dict[str, Any] = {}
    model_settings: dict[str, Any] = {}
    for layer in layers:
        model_settings.update(layer.get("model_settings") or {})
        merged.update({k: v for k, v in layer.items() if k != "model_settings" and v is not None})
    if model_settings:
        merged["model_settings"] = model_settings
    return merged
