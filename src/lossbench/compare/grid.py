"""A comparison as a grid: datasets x models x losses x shuffle x seeds, one run folder per cell.

Every run of one (dataset, model) shares one base `TrainConfig`; the runs differ only in the
loss arm (a loss, or a loss with its own sampler / logQ, see `arms.py`), in `shuffle_train`
and in `seed`, which is what makes the comparison fair. The one exception is asked for by
name: `[settings.per_loss.<loss>]` tables give one loss its own settings (each loss at its
tuned settings, as `lossbench tune` writes them), a layer over `[settings]` and under the
command-line flags. Run folders are `OUT/<dataset>[-temporal-...]/<model>/<arm label>/seed<N>/`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lossbench.compare.arms import LossArm, arm_label, config_label, folder_name
from lossbench.data.registry import get_dataset
from lossbench.data.splits import check_timed
from lossbench.errors import LossbenchError
from lossbench.losses import find_loss
from lossbench.models import model_config, model_spec
from lossbench.plugins import changed_sources
from lossbench.training.config import TrainConfig, build_config, read_toml, validate_config
from lossbench.training.run_files import CONFIG_FILE, is_finished
from lossbench.training.setup import code_sources, resolve_loss, run_device

ORIGINAL = "original"  # in a grid's losses: each model's published loss
DEMO_LOSSES = ["bce", "ce", "improved"]
DEMO_SEEDS = [0, 1, 2]
# The synthetic demo must finish in a few minutes on 2 cores: cap its epochs. These form a
# layer under the grid's [settings] and the CLI flags, so either can lift the cap.
SYNTHETIC_DEMO_SETTINGS: dict[str, Any] = {"max_epochs": 10, "patience": 3}

RunState = Literal["finished", "changed", "missing"]


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
    baseline: str = ORIGINAL  # a loss name or arm label, or each model's own loss
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

    def losses_for(self, model: str) -> list[str]:
        """The labels of this model's rows: every arm, ordered then shuffled when both."""
        labels = [
            arm_label(arm.loss, arm.sampler, bool(arm.logq), shuffled)
            for arm in self.arms_for(model)
            for shuffled in self.shuffle
        ]
        return list(dict.fromkeys(labels))

    def baseline_for(self, model: str) -> str:
        """The explicit baseline; else the model's own loss if it is compared, else the first."""
        losses = self.losses_for(model)
        if self.baseline != ORIGINAL:
            if self.baseline not in losses:
                raise LossbenchError(
                    f"baseline {self.baseline!r} is not among the compared losses "
                    f"({', '.join(losses)}); add it to the losses or pick one of them"
                )
            return self.baseline
        own = model_spec(model).default_loss
        return own if own in losses else losses[0]


def _resolvable(resolve: Callable[[str], object], name: str, note: str = "") -> None:
    """A validator's check that `name` resolves (built-in, entry point or import string)."""
    try:
        resolve(name)
    except LossbenchError as error:
        raise ValueError(f"{error}{note}") from None


@dataclass(frozen=True)
class PlannedRun:
    config: TrainConfig
    run_dir: Path

    @property
    def label(self) -> str:
        c = self.config
        return f"{c.dataset} {c.model} + {config_label(c)}, seed {c.seed}"


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
    unknown = sorted(set(document) - {"grid", "settings", "expect"})  # expect: expectations.py
    if unknown:
        raise LossbenchError(
            f"invalid {unknown[0]} in {path}: a grid file holds only [grid], [settings] "
            "and an expect list"
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


def plan_runs(grid: Grid, settings: dict[str, Any], out_dir: Path) -> list[PlannedRun]:
    """Every (dataset, model, loss, seed) as a validated config and its run folder.

    `settings` are TrainConfig fields shared by all runs (grid [settings] under CLI flags).
    Loss/model mismatches (bce on bert4rec) fail here, before anything trains.
    """
    _check_per_loss(grid)
    planned: list[PlannedRun] = []
    for dataset in grid.datasets:
        demo = SYNTHETIC_DEMO_SETTINGS if dataset == "synthetic" else {}
        for model in grid.models:
            layers = merge_settings(demo, settings, {"dataset": dataset, "model": model})
            base = build_config(overrides=layers)
            check_timed(dataset, get_dataset(dataset).format, base.split_spec)
            model_config(model, base.model_settings)  # unknown model settings fail now
            run_device(base.device, base.precision)  # so does bf16 on a CPU without it
            grid.baseline_for(model)  # fails early when the baseline is not compared
            for arm in grid.arms_for(model):
                own = grid.per_loss.get(arm.loss)
                loss_base = base if own is None else _with_own_settings(layers, arm.loss, own)
                for shuffled in grid.shuffle:
                    updates = {**arm.overrides(), "shuffle_train": shuffled}
                    arm_config = validate_config({**loss_base.model_dump(), **updates}, "the grid")
                    resolve_loss(arm_config)
                    for seed in grid.seeds:
                        config = arm_config.model_copy(update={"seed": seed})
                        planned.append(PlannedRun(config, run_folder(out_dir, config)))
    labels = [(run.config.dataset, run.config.model, run.label) for run in planned]
    if len(set(labels)) < len(labels):
        raise LossbenchError("two losses of the grid are the same arm; list each arm once")
    return planned


def _check_per_loss(grid: Grid) -> None:
    compared = list(dict.fromkeys(arm.loss for m in grid.models for arm in grid.arms_for(m)))
    for loss in grid.per_loss:
        if loss not in compared:
            raise LossbenchError(
                f"settings.per_loss.{loss} names a loss that is not compared; "
                f"the compared losses are: {', '.join(compared)}"
            )


def _with_own_settings(layers: dict[str, Any], loss: str, own: dict[str, Any]) -> TrainConfig:
    """The config of a loss with settings of its own, over the shared layers."""
    try:
        config = build_config(overrides=merge_settings(layers, own, {"loss": loss}))
        model_config(config.model, config.model_settings)
    except LossbenchError as error:
        raise LossbenchError(f"settings.per_loss.{loss}: {error}") from None
    return config


def run_folder(out_dir: Path, config: TrainConfig) -> Path:
    dataset = config.dataset + config.split_spec.folder_suffix
    arm = folder_name(config_label(config))
    return out_dir / dataset / folder_name(config.model) / arm / f"seed{config.seed}"


def run_state(run: PlannedRun) -> RunState:
    """finished: metrics.json present, the saved config equals the requested one and the
    loss and model source files (of plugins) are those the run was trained with."""
    if not is_finished(run.run_dir):
        return "missing"
    try:
        record = json.loads((run.run_dir / CONFIG_FILE).read_text())
        saved = record["config"]
    except (OSError, ValueError, KeyError):
        return "changed"
    wanted = run.config.model_dump(mode="json")
    if changed_sources(record.get("sources"), code_sources(run.config)):
        return "changed"
    return "finished" if _comparable(saved) == _comparable(wanted) else "changed"


# How a run executes, not what it computes: a resumed comparison may change these freely
# (and run folders written before a setting existed still match).
_EXECUTION_ONLY = ("threads",)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """Without execution-only keys; a setting a saved config predates holds its default."""
    with_defaults = {**_DEFAULTS, **config}
    return {key: value for key, value in with_defaults.items() if key not in _EXECUTION_ONLY}


# Settings added after a run folder was written compare as their defaults (the behaviour
# the run had): the data split, the order control and the negative sampler's logQ.
_DEFAULTS: dict[str, Any] = {
    name: TrainConfig.model_fields[name].default
    for name in ("split", "valid_quantile", "test_quantile", "shuffle_train", "logq")
}
