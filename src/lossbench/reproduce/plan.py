"""A reproduction as a comparison plan: the table's cells on each dataset, pre-training first.

`build_reproduction` turns a table into one `ComparisonPlan` (the same plan `compare`
builds, so `execute_plan` checks, resumes and trains it the same way) and the pre-training
steps its fine-tuning runs start from. Each cell is a one-arm grid under the table's preset
and the user's settings; its runs carry the cell, so the report finds each cell's row.
`reproduction.json` (beside `comparison.json`) records the table, the cells' rows and the
settings given over the preset, for the report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from lossbench.atomic import write_json
from lossbench.compare.execute.resume import move_aside, refuse_changed, run_status
from lossbench.compare.execute.runner import execute_plan
from lossbench.compare.execute.types import Executor, PrepareFn
from lossbench.compare.plan.build import ComparisonPlan, build_plan
from lossbench.compare.plan.grid import make_grid
from lossbench.errors import LossbenchError
from lossbench.losses import LOSSES
from lossbench.models import MODELS
from lossbench.reproduce.pretraining import (
    PretrainStep,
    pretrain_folder,
    refuse_changed_steps,
    run_step,
    step_state,
)
from lossbench.reproduce.tables import (
    PRETRAIN_SEED,
    Cell,
    ReproductionTable,
    arm_entry,
    pretrain_epochs,
)
from lossbench.training.config import merge_layers
from lossbench.training.entry import PlanEntry
from lossbench.training.names import Names
from lossbench.training.pretrainers import pretraining_of
from lossbench.training.run_labels import config_label
from lossbench.training.setup import use_threads

REPRODUCTION_FILE = "reproduction.json"


@dataclass(frozen=True)
class CellRow:
    """Where one cell of the table lands in the comparison: its (dataset, model, loss) row."""

    dataset: str
    cell: Cell
    label: str  # the comparison's row label (the arm label of the cell's runs)
    baseline: str  # the label of the model's original-loss row on this dataset


@dataclass(frozen=True)
class Reproduction:
    table: ReproductionTable
    datasets: list[str]
    plan: ComparisonPlan
    steps: list[PretrainStep]
    rows: list[CellRow]
    given: dict[str, Any]  # the settings given over the preset, for the report's header

    def save(self) -> None:
        write_json(self.plan.out_dir / REPRODUCTION_FILE, self.record())

    def record(self) -> dict[str, Any]:
        return {
            "table": self.table.name,
            "datasets": self.datasets,
            "rows": [
                {
                    "dataset": row.dataset,
                    **row.cell.model_dump(),
                    "label": row.label,
                    "baseline": row.baseline,
                }
                for row in self.rows
            ],
            "given": self.given,
            "pretraining": [step.record() for step in self.steps],
        }


def build_reproduction(
    table: ReproductionTable,
    datasets: Sequence[str],
    seeds: Sequence[int],
    settings: dict[str, Any],
    out_dir: Path,
    epochs_of_pretraining: int | None = None,
    names: Names | None = None,
) -> Reproduction:
    """Every cell of `table` on every dataset, validated; nothing trains yet.

    `settings` (the user's flags) layer over the table's preset; `epochs_of_pretraining`
    replaces the study's pre-training epochs (a quick check)."""
    if "preset" in settings:
        raise LossbenchError(f"{table.name} is trained with its own preset ({table.preset})")
    if not seeds or not datasets:
        raise LossbenchError("give at least one dataset and one seed")
    names = names if names is not None else Names()
    layers = merge_layers({"preset": table.preset}, settings)
    _check_model_flags(table, layers.get("model_settings") or {})
    entries: list[PlanEntry] = []
    rows: list[CellRow] = []
    steps: list[PretrainStep] = []
    for dataset in dict.fromkeys(datasets):
        for model in table.models:
            model_layers = _for_model(layers, model)
            if model in table.pretrained:
                epochs = epochs_of_pretraining or pretrain_epochs(dataset)
                steps.append(
                    _pretrain_step(dataset, model, model_layers, seeds, out_dir, epochs, names)
                )
                model_layers = {**model_layers, "init": steps[-1].checkpoint}
            model_entries, model_rows = _model_cells(
                table, dataset, model, seeds, model_layers, out_dir, names
            )
            entries += model_entries
            rows += model_rows
    baselines = {(row.dataset, row.cell.model): row.baseline for row in rows}
    order = list(dict.fromkeys(row.label for row in rows))
    plan = ComparisonPlan(out_dir, entries, baselines, order)
    return Reproduction(table, list(dict.fromkeys(datasets)), plan, steps, rows, _given(settings))


def _model_cells(
    table: ReproductionTable,
    dataset: str,
    model: str,
    seeds: Sequence[int],
    settings: dict[str, Any],
    out_dir: Path,
    names: Names,
) -> tuple[list[PlanEntry], list[CellRow]]:
    """The runs of one model's cells on one dataset, and where each cell's row lands."""
    entries: list[PlanEntry] = []
    labels: list[str] = []
    for cell in table.cells_of(model):
        cell_entries = _cell_entries(cell, dataset, seeds, settings, out_dir, names)
        labels.append(row_label(cell_entries[0]))
        entries += cell_entries
    if len(set(labels)) < len(labels):
        raise LossbenchError(
            f"two cells of {table.name} for {model} become the same runs with these "
            "settings (does --negatives override the cells' own?); leave it out"
        )
    cells = table.cells_of(model)
    rows = [
        CellRow(dataset, cell, label, labels[0]) for cell, label in zip(cells, labels, strict=True)
    ]
    return entries, rows


def _for_model(layers: dict[str, Any], model: str) -> dict[str, Any]:
    """The settings with only the model settings `model` has (GRU4Rec has no heads)."""
    fields = MODELS[model].config_class.model_fields
    given = layers.get("model_settings") or {}
    return {**layers, "model_settings": {k: v for k, v in given.items() if k in fields}}


def _check_model_flags(table: ReproductionTable, given: dict[str, Any]) -> None:
    for name in given:
        if not any(name in MODELS[model].config_class.model_fields for model in table.models):
            raise LossbenchError(
                f"no model of {table.name} ({', '.join(table.models)}) has the setting {name!r}"
            )


def _cell_entries(
    cell: Cell,
    dataset: str,
    seeds: Sequence[int],
    settings: dict[str, Any],
    out_dir: Path,
    names: Names,
) -> list[PlanEntry]:
    arm = arm_entry(cell, LOSSES[cell.loss].negatives)
    grid = make_grid(
        {"datasets": [dataset], "models": [cell.model], "losses": [arm], "seeds": list(seeds)},
        "the reproduction",
        names,
    )
    return build_plan(grid, settings, out_dir, names).entries


def _pretrain_step(
    dataset: str,
    model: str,
    layers: dict[str, Any],
    seeds: Sequence[int],
    out_dir: Path,
    epochs: int,
    names: Names,
) -> PretrainStep:
    """The pre-training the model's runs start from, with their model settings."""
    from lossbench.compare.plan.grid import Grid

    grid = Grid(datasets=[dataset], models=[model], losses=["original"], seeds=[seeds[0]])
    probe = build_plan(grid, layers, out_dir, names).entries[0]  # the runs' resolved settings
    dataset_folder = probe.run_dir.relative_to(out_dir).parts[0]
    folder = pretrain_folder(out_dir, dataset_folder, model, epochs)
    pretraining_of(model, probe.model)  # a table may name only models that pre-train
    return PretrainStep(
        dataset,
        probe.config.split_spec,
        model,
        probe.model_settings,
        epochs,
        PRETRAIN_SEED,
        folder,
        probe.model,
    )


def _given(settings: dict[str, Any]) -> dict[str, Any]:
    """The flags that change what runs compute (not how they run), as the report names them."""
    execution = {"threads", "device", "checkpoint_every", "compile"}
    given = {k: v for k, v in settings.items() if v not in (None, {}) and k not in execution}
    given.update(settings.get("model_settings") or {})
    given.pop("model_settings", None)
    return given


def run_reproduction(
    reproduction: Reproduction,
    prepare: PrepareFn,
    console: Console | None = None,
    retrain_changed: bool = False,
    executor: Executor | None = None,
) -> list[Path]:
    """Refuse changed runs before anything trains, pre-train what the missing runs start
    from, then execute the plan as `compare` does."""
    console = console or Console(quiet=True)
    plan = reproduction.plan
    statuses = [run_status(entry) for entry in plan.entries]
    changed = [status for status in statuses if status.state == "changed"]
    changed_steps = [step for step in reproduction.steps if step_state(step) == "changed"]
    if not retrain_changed:
        if changed:
            refuse_changed(changed, plan.out_dir)
        refuse_changed_steps(changed_steps)
    for step in changed_steps:
        moved = move_aside(step.folder)
        console.print(f"[yellow]{step.folder} held another pre-training: moved to {moved}[/]")
    for step in reproduction.steps:
        waiting = [
            s.entry
            for s in statuses
            if s.state != "finished" and s.entry.config.init == step.checkpoint
        ]
        if waiting:  # the step's runs that are all finished need it no longer
            use_threads(waiting[0].config.threads)
            run_step(step, prepare, waiting[0].config.device, console)
    reproduction.save()
    return execute_plan(plan, prepare, console, retrain_changed, executor, statuses=statuses)


def row_label(entry: PlanEntry) -> str:
    """The comparison row an entry's runs fall in (as `compare/report/results.py` labels a
    finished run)."""
    return config_label(entry.config)


def load_reproduction_record(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / REPRODUCTION_FILE
    if not path.is_file():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    return record
