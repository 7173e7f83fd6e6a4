"""A request resolved once into a plan: every name looked up in one place, every run a
validated `PlanEntry`, and nothing loaded, trained or written yet.

`resolve` is the only caller of the loss, model and dataset lookups on the way from a
request to its runs: it makes one `Names` for the request and hands it to every step that
needs what a name stands for, so planning 1 dataset x 2 losses x 3 seeds looks each loss,
the model and the dataset up once. Settings merge in one function, `merge_layers`: preset ->
dataset defaults -> settings file (with `--smoke` above it) -> the caller's settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from lossbench.api.folders import check_output_file, check_output_folder, check_run_folder
from lossbench.api.requests import (
    CompareRequest,
    ExecutorRequest,
    SummaryRequest,
    TrainingSettings,
    TrainRequest,
)
from lossbench.compare.ci.expectations import (
    Expectation,
    check_expectations,
    parse_expectations,
    read_grid_expectations,
)
from lossbench.compare.execute.executors import (
    executor_settings,
    make_executor,
    read_executor_table,
)
from lossbench.compare.execute.failures import ExecutorFactory
from lossbench.compare.execute.types import ExecutorSettings
from lossbench.compare.plan.build import ComparisonPlan, build_plan
from lossbench.compare.plan.grid import Grid, make_grid, read_grid_file
from lossbench.compare.report.summary import SummaryOptions
from lossbench.errors import LossbenchError
from lossbench.plugins import folder_name
from lossbench.training.config import TrainConfig, build_config, merge_layers
from lossbench.training.entry import PlanEntry, plan_entry
from lossbench.training.memory import parse_memory_size
from lossbench.training.names import Names
from lossbench.training.presets import SMOKE_LAYER
from lossbench.training.run_labels import run_name

SMOKE_OR_PRESET = "--smoke is the preset smoke: drop --preset, or --smoke"


@dataclass(frozen=True)
class TrainPlan:
    """One run, resolved: its entry (config, folder, model, loss, device) and its names."""

    request: TrainRequest
    names: Names
    entry: PlanEntry

    @property
    def config(self) -> TrainConfig:
        return self.entry.config


@dataclass(frozen=True)
class ComparePlan:
    """A comparison, resolved: its grid, every run, the expectations to judge, how the
    summary reads the runs and which executor trains them."""

    request: CompareRequest
    names: Names
    grid: Grid
    comparison: ComparisonPlan
    expectations: list[Expectation]
    options: SummaryOptions
    executor_factory: ExecutorFactory
    memory_budget: int | None  # bytes

    @property
    def entries(self) -> list[PlanEntry]:
        return self.comparison.entries


@overload
def resolve(request: TrainRequest) -> TrainPlan: ...
@overload
def resolve(request: CompareRequest) -> ComparePlan: ...
def resolve(request: TrainRequest | CompareRequest) -> TrainPlan | ComparePlan:
    """The request's runs, each resolved and validated; bad input fails here, before any
    dataset is read or any folder written."""
    names = Names(request.data_dir)
    if request.smoke and request.settings.get("preset") is not None:
        raise LossbenchError(SMOKE_OR_PRESET)
    if isinstance(request, TrainRequest):
        return _resolve_train(request, names)
    return _resolve_compare(request, names)


def _resolve_train(request: TrainRequest, names: Names) -> TrainPlan:
    given = {"dataset": request.dataset, "model": request.model, "loss": request.loss}
    flags = merge_layers(request.settings, given, {"seed": request.seed})
    smoke = SMOKE_LAYER if request.smoke else {}
    config = build_config(
        toml_file=request.config_file, overrides=merge_layers(smoke, flags), names=names
    )
    run_dir = request.out or (
        Path("runs") / config.dataset / f"{folder_name(config.model)}-{run_name(config, names)}"
    )
    entry = plan_entry(config, run_dir, names)
    names.dataset(config.dataset)  # an unknown dataset fails now, with a suggestion
    check_run_folder(run_dir, "--out")
    return TrainPlan(request, names, entry)


def _resolve_compare(request: CompareRequest, names: Names) -> ComparePlan:
    config_file = request.config_file
    source = str(config_file) if config_file else "options"
    memory = request.memory_budget
    budget = parse_memory_size(memory) if memory is not None else None
    executor = executor_settings_of(request.executor, config_file)
    grid_values, file_settings = read_grid_file(config_file) if config_file else ({}, {})
    texts = [*(read_grid_expectations(config_file) if config_file else []), *request.expect]
    expectations = parse_expectations(texts)
    grid = make_grid(grid_values | _grid_given(request), source, names)
    options = summary_options(request.summary)
    settings = merge_layers(file_settings, SMOKE_LAYER if request.smoke else {})
    flags = merge_layers(request.settings)
    negatives = merge_layers(settings, flags).get("negatives")
    check_expectations(expectations, _groups(grid, negatives, names), options.significance_metric)
    check_output_folder(request.out, "--out")
    check_output_file(request.markdown_file, "--markdown")
    factory, flags = _with_executor(executor, settings, flags, request.out)
    comparison = build_plan(grid, settings, request.out, names, flags)
    return ComparePlan(request, names, grid, comparison, expectations, options, factory, budget)


def _grid_given(request: CompareRequest) -> dict[str, Any]:
    """The grid values the request gives (None: the grid file's, else the default)."""
    given: dict[str, Any] = {
        "datasets": request.datasets,
        "models": request.models,
        "losses": request.losses,
        "seeds": request.seeds,
    }
    values = {key: list(value) for key, value in given.items() if value is not None}
    return values | ({"baseline": request.baseline} if request.baseline is not None else {})


def executor_settings_of(request: ExecutorRequest, config_file: Path | None) -> ExecutorSettings:
    """The grid file's `[executor]` table under the executor options given."""
    values = read_executor_table(config_file) if config_file else {}
    given = {
        "kind": request.kind,
        "ray_address": request.ray_address,
        "cpus_per_run": request.cpus_per_run,
        "gpus_per_run": request.gpus_per_run,
        "workers_per_run": request.workers_per_run,
        "max_retries": request.max_retries,
    }
    values.update({key: value for key, value in given.items() if value is not None})
    return executor_settings(values, str(config_file) if config_file else "options")


def _with_executor(
    settings: ExecutorSettings,
    shared: TrainingSettings,
    flags: dict[str, Any],
    out_dir: Path,
) -> tuple[ExecutorFactory, dict[str, Any]]:
    """The executor's factory, and the flags with what it implies (Ray: `threads`)."""
    factory, implied = make_executor(settings, merge_layers(shared, flags), out_dir)
    return factory, merge_layers(flags, {"threads": implied.get("threads")})


def _groups(
    grid: Grid, negatives: int | None, names: Names
) -> dict[tuple[str, str], tuple[list[str], str]]:
    """(dataset, model) -> (its losses, its baseline), as the comparison will run them."""
    return {
        (dataset, model): (
            grid.losses_for(model, negatives, names),
            grid.baseline_for(model, negatives, names),
        )
        for dataset in grid.datasets
        for model in grid.models
    }


def summary_options(request: SummaryRequest) -> SummaryOptions:
    """The summary's options, each checked (a metric name, the permutations, alpha)."""
    import numpy as np

    from lossbench.compare.report.stats import DEFAULT_PERMUTATIONS
    from lossbench.evaluation.metrics import per_user_metric

    permutations = DEFAULT_PERMUTATIONS if request.permutations is None else request.permutations
    shown = list(request.metrics)
    for name in [*shown, request.significance_metric]:
        per_user_metric(np.ones(1), name)  # raises a LossbenchError naming the valid forms
    if not shown:
        raise LossbenchError("--metrics is empty; give metrics such as hr@10,ndcg@10")
    if permutations < 1:
        raise LossbenchError(f"--permutations must be at least 1, not {permutations}")
    if not 0.0 < request.alpha < 1.0:
        raise LossbenchError(f"--alpha must be between 0 and 1, not {request.alpha}")
    return SummaryOptions(shown, request.significance_metric, request.alpha, permutations)


def check_trials(trials: int | None, timeout: float | None) -> None:
    """A tuning budget: at least one trial, a positive finite number of seconds."""
    if trials is not None and trials < 1:
        raise LossbenchError(f"--trials must be at least 1, not {trials}")
    if timeout is not None and not 0 < timeout < math.inf:  # nan fails both comparisons
        raise LossbenchError(f"--timeout must be a positive number of seconds, not {timeout:g}")
