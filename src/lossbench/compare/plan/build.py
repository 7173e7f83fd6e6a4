"""A comparison as a plan: every run resolved and validated once, then handed to an executor.

`build_plan` expands a grid (datasets x models x loss arms x shuffle x seeds) into
`PlanEntry`s, one per run folder `OUT/<dataset>[-temporal-...]/<model>/<arm label>/seed<N>/`,
and picks each (dataset, model)'s baseline by the grid's one rule (`Grid.baseline_for`),
whether the grid came from flags or a TOML file. Every run of one (dataset, model) shares one
base `TrainConfig`; the runs differ only in the loss arm (a loss, or a loss with its own
sampler / logQ), in `shuffle_train` and in `seed`, which is what makes the comparison fair.

The plan is saved as `comparison.json` (the run folders, baselines and loss order), which
`lossbench report DIR` reads to re-render exactly that comparison.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lossbench.atomic import write_json
from lossbench.compare.plan.grid import Grid
from lossbench.data.splits import check_timed
from lossbench.errors import LossbenchError
from lossbench.training.config import TrainConfig, build_config, merge_layers, validate_config
from lossbench.training.entry import PlanEntry, plan_entry
from lossbench.training.names import Names
from lossbench.training.run_files import flat_settings
from lossbench.training.run_labels import config_label, folder_name

COMPARISON_FILE = "comparison.json"


@dataclass(frozen=True)
class ComparisonPlan:
    """The runs of a comparison and how its report reads them."""

    out_dir: Path
    entries: list[PlanEntry]
    baselines: dict[tuple[str, str], str]  # (dataset, model) -> baseline loss
    loss_order: list[str]
    # Settings some losses have of their own (`[settings.per_loss.<loss>]`), flat
    # (`lr`, `model_settings.dropout`): a report expects them to differ between losses.
    per_loss_settings: list[str] = field(default_factory=list)

    def saved(self) -> SavedPlan:
        """What `save` writes, as `load_saved_plan` reads it back."""
        run_dirs = [entry.run_dir for entry in self.entries]
        return SavedPlan(run_dirs, dict(self.baselines), self.loss_order, self.per_loss_settings)

    def save(self) -> None:
        write_json(
            self.out_dir / COMPARISON_FILE,
            {
                "runs": [str(entry.run_dir.relative_to(self.out_dir)) for entry in self.entries],
                "baselines": [
                    {"dataset": d, "model": m, "loss": loss}
                    for (d, m), loss in self.baselines.items()
                ],
                "losses": self.loss_order,
                "per_loss_settings": self.per_loss_settings,
            },
        )


@dataclass(frozen=True)
class SavedPlan:
    """What `comparison.json` holds: enough to re-render a comparison, not to train it."""

    run_dirs: list[Path]
    baselines: dict[tuple[str, str], str]
    loss_order: list[str]
    per_loss_settings: list[str] = field(default_factory=list)


def build_plan(
    grid: Grid,
    settings: Mapping[str, Any],
    out_dir: Path,
    names: Names | None = None,
    flags: Mapping[str, Any] | None = None,
) -> ComparisonPlan:
    """Every (dataset, model, loss, seed) as a validated plan entry, and the baselines.

    `settings` are TrainConfig fields shared by all runs (a grid's [settings]); `flags` the
    command line's, over them and over a loss's own settings. `names`: the request's resolved
    names (a fresh set when not given). Loss/model mismatches (bce on bert4rec), unknown model
    settings, a device or precision that cannot run, a baseline that is not compared and
    per-loss settings of a loss that is not compared fail here, before anything trains.
    """
    names = names if names is not None else Names()
    flags = flags if flags is not None else {}
    _check_per_loss(grid, names)
    entries: list[PlanEntry] = []
    baselines: dict[tuple[str, str], str] = {}
    for dataset in grid.datasets:
        for model in grid.models:
            where = {"dataset": dataset, "model": model}
            base = build_config(overrides=merge_layers(settings, flags, where), names=names)
            check_timed(dataset, names.dataset(dataset).format, base.split_spec)
            baselines[(dataset, model)] = grid.baseline_for(model, base.negatives, names)
            for arm in grid.arms_for(model, names):
                own = grid.per_loss.get(arm.loss)
                loss_base = (
                    base
                    if own is None
                    else _with_own_settings(
                        merge_layers(settings, own, flags, where), arm.loss, names
                    )
                )
                for shuffled in grid.shuffle:
                    updates = {**arm.overrides(), "shuffle_train": shuffled}
                    values = {**loss_base.model_dump(), **updates}
                    arm_config = validate_config(values, "the grid", names)
                    for seed in grid.seeds:
                        config = arm_config.model_copy(update={"seed": seed})
                        run_dir = run_folder(out_dir, config, names)
                        entries.append(plan_entry(config, run_dir, names))
    labels = [(e.config.dataset, e.config.model, e.label) for e in entries]
    if len(set(labels)) < len(labels):
        raise LossbenchError("two losses of the grid are the same arm; list each arm once")
    shared = merge_layers(settings, flags).get("negatives")
    order = list(
        dict.fromkeys(loss for m in grid.models for loss in grid.losses_for(m, shared, names))
    )
    per_loss = sorted({key for table in grid.per_loss.values() for key in flat_settings(table)})
    return ComparisonPlan(out_dir, entries, baselines, order, per_loss)


def plan_runs(
    grid: Grid, settings: Mapping[str, Any], out_dir: Path, names: Names | None = None
) -> list[PlanEntry]:
    """The entries of `build_plan`: every run of the grid, resolved and validated."""
    return build_plan(grid, settings, out_dir, names).entries


def _check_per_loss(grid: Grid, names: Names) -> None:
    compared = list(dict.fromkeys(arm.loss for m in grid.models for arm in grid.arms_for(m, names)))
    for loss in grid.per_loss:
        if loss not in compared:
            raise LossbenchError(
                f"settings.per_loss.{loss} names a loss that is not compared; "
                f"the compared losses are: {', '.join(compared)}"
            )


def _with_own_settings(layers: dict[str, Any], loss: str, names: Names) -> TrainConfig:
    """The config of a loss with settings of its own (merged into `layers`)."""
    try:
        config = build_config(overrides=merge_layers(layers, {"loss": loss}), names=names)
        names.model_settings(config.model, config.model_settings)
    except LossbenchError as error:
        raise LossbenchError(f"settings.per_loss.{loss}: {error}") from None
    return config


def run_folder(out_dir: Path, config: TrainConfig, names: Names | None = None) -> Path:
    dataset = config.dataset + config.split_spec.folder_suffix
    arm = folder_name(config_label(config, names))
    return out_dir / dataset / folder_name(config.model) / arm / f"seed{config.seed}"


def load_saved_plan(out_dir: Path) -> SavedPlan | None:
    path = out_dir / COMPARISON_FILE
    if not path.is_file():
        return None
    saved: dict[str, Any] = json.loads(path.read_text())
    return SavedPlan(
        run_dirs=[out_dir / run for run in saved["runs"]],
        baselines={(b["dataset"], b["model"]): b["loss"] for b in saved["baselines"]},
        loss_order=list(saved["losses"]),
        per_loss_settings=list(saved.get("per_loss_settings", [])),
    )
