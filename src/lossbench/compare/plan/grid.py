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

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lossbench.compare.plan.arms import LossArm
from lossbench.errors import LossbenchError, joined, validation_failure
from lossbench.training.config import read_toml
from lossbench.training.names import Names
from lossbench.training.run_labels import arm_label

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

ORIGINAL = "original"  # in a grid's losses: each model's published loss
DEMO_LOSSES = ["bce", "ce", "improved"]
DEMO_SEEDS = [0, 1, 2]


# A run's field -> the [grid] list that varies it.
PLURALS = {"dataset": "datasets", "model": "models", "loss": "losses", "seed": "seeds"}


def _arm(table: dict[str, Any]) -> LossArm:
    try:
        return LossArm.model_validate(table)
    except ValidationError as error:
        raise ValueError(str(validation_failure(error, _arm_problem))) from None


def _arm_problem(where: str, message: str, detail: ErrorDetails) -> str:
    if detail["type"] == "extra_forbidden":
        message = f"an arm sets only {', '.join(LossArm.model_fields)}"
    return f"{where}: {message}" if where != "loss" else message


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

    @field_validator("losses", mode="before")
    @classmethod
    def _tables_are_arms(cls, entries: Any) -> Any:
        """A table entry becomes a `LossArm` here, so a bad one is named by its own error."""
        if not isinstance(entries, list):
            return entries
        return [_arm(entry) if isinstance(entry, dict) else entry for entry in entries]

    def arms_for(self, model: str, names: Names | None = None) -> list[LossArm]:
        """This model's loss arms, `original` replaced by its published loss, repeats dropped.
        `names`: the request's resolved names (a fresh set when not given)."""
        names = names if names is not None else Names()
        arms = [
            LossArm(loss=names.default_loss(model) if entry == ORIGINAL else entry)
            if isinstance(entry, str)
            else entry
            for entry in self.losses
        ]
        return list(dict.fromkeys(arms))

    def losses_for(
        self, model: str, negatives: int | None = None, names: Names | None = None
    ) -> list[str]:
        """The labels of this model's rows: every arm, ordered then shuffled when both.

        `negatives`: the grid's shared setting, which an arm's own replaces."""
        labelled = self._labelled(model, negatives, names or Names())
        return list(dict.fromkeys(label for _, label in labelled))

    def baseline_for(
        self, model: str, negatives: int | None = None, names: Names | None = None
    ) -> str:
        """The explicit baseline; else the model's own loss if it is compared, else the first.
        A baseline named by its loss alone is that loss's row when it has one."""
        names = names if names is not None else Names()
        labelled = self._labelled(model, negatives, names)
        losses = list(dict.fromkeys(label for _, label in labelled))
        wanted = names.default_loss(model) if self.baseline == ORIGINAL else self.baseline
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

    def _labelled(
        self, model: str, negatives: int | None, names: Names
    ) -> list[tuple[LossArm, str]]:
        return [
            (
                arm,
                arm_label(
                    arm.loss,
                    arm.sampler,
                    arm.logq or False,
                    shuffled,
                    count,
                    names.loss_spec(arm.loss),
                ),
            )
            for arm in self.arms_for(model, names)
            for shuffled in self.shuffle
            for count in [arm.negatives if arm.negatives is not None else negatives]
        ]


def make_grid(values: dict[str, Any], source: str, names: Names | None = None) -> Grid:
    """Validate grid values and check that its models and losses resolve; every problem is
    named at once, each by its field (`invalid grid.losses in F: ...`)."""
    names = names if names is not None else Names()
    problems: list[LossbenchError] = []
    try:
        grid = Grid.model_validate(values)
    except ValidationError as error:
        problems.append(validation_failure(error, partial(_grid_problem, source=source)))
        grid = None
    if grid is not None:
        problems += _unknown_names(grid, source, names)
    if problems or grid is None:
        raise joined(problems)
    return grid


def _grid_problem(where: str, message: str, detail: ErrorDetails, source: str) -> str:
    if detail["type"] == "extra_forbidden":
        message = f"unknown field; valid fields are: {', '.join(Grid.model_fields)}"
    return f"invalid grid.{where} in {source}: {message}"


def _unknown_names(grid: Grid, source: str, names: Names) -> list[LossbenchError]:
    """A problem for each model, loss or baseline of `grid` that does not resolve."""
    wanted: list[tuple[str, str, str]] = [("models", name, "") for name in grid.models]
    for entry in grid.losses:
        if isinstance(entry, LossArm):
            wanted.append(("losses", entry.loss, ""))
        elif entry != ORIGINAL:
            wanted.append(("losses", entry, f" ('{ORIGINAL}': each model's own)"))
    if grid.baseline != ORIGINAL:
        wanted.append(("baseline", grid.baseline.split(" ")[0], ""))  # a loss, or an arm label
    problems: list[LossbenchError] = []
    for field, name, note in wanted:
        try:
            names.model(name) if field == "models" else names.loss(name)
        except LossbenchError as error:
            problems.append(LossbenchError(f"invalid grid.{field} in {source}: {error}{note}"))
    return problems


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
