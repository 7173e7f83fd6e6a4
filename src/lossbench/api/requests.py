"""What a caller asks lossbench to do: one frozen request per command.

A request holds the caller's words as given (names as text, files as paths, `None` for "not
given"); `resolve` (lossbench.api.plan) turns it into validated plan entries. The training
settings a caller gives (`TrainingSettings`) are `TrainConfig` fields, the flag layer over
the preset, the dataset's defaults and a settings file (`merge_layers`). The data directory
travels in every request that reads datasets, so two requests in one process may use two.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lossbench.paths import default_data_dir
from lossbench.reproduce import DEFAULT_TOLERANCE

# TrainConfig fields given by the caller (`model_settings` a mapping of the model's); None:
# not given, the lower layers decide.
TrainingSettings = Mapping[str, Any]


@dataclass(frozen=True)
class SummaryRequest:
    """How finished runs are summarized: the metrics shown, the paired test's metric, its
    random sign flips (None: 10,000) and the Holm-corrected significance level."""

    metrics: tuple[str, ...] = ("hr@10", "ndcg@10")
    significance_metric: str = "ndcg@10"
    permutations: int | None = None
    alpha: float = 0.05


@dataclass(frozen=True)
class ExecutorRequest:
    """`--executor` and its options (None: not given; a grid file's `[executor]` decides)."""

    kind: str | None = None
    ray_address: str | None = None
    cpus_per_run: int | None = None
    gpus_per_run: float | None = None
    workers_per_run: int | None = None
    max_retries: int | None = None


@dataclass(frozen=True)
class TrainRequest:
    """One model with one loss on one dataset (None: the settings file's, else the default)."""

    dataset: str | None = None
    model: str | None = None
    loss: str | None = None  # None: the model's own
    seed: int | None = None
    out: Path | None = None  # None: runs/DATASET/MODEL-LOSS-seedN
    config_file: Path | None = None  # TOML of TrainConfig fields
    settings: TrainingSettings = field(default_factory=dict)
    smoke: bool = False
    retrain_changed: bool = False
    json_output: bool = False  # the run's JSON document on standard output
    track: str | None = None  # an experiment tracker (lossbench.training.tracking)
    data_dir: Path = field(default_factory=default_data_dir)  # datasets, prepared


@dataclass(frozen=True)
class CompareRequest:
    """A grid of losses (datasets x models x losses x seeds) trained alike, then compared.
    None: the grid file's value, else the default (synthetic, sasrec, bce/ce/improved, 0-2)."""

    datasets: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    losses: tuple[str, ...] | None = None
    seeds: tuple[int, ...] | None = None
    baseline: str | None = None
    out: Path = Path("runs/compare")
    config_file: Path | None = None  # grid TOML: [grid], [settings], [executor], expect
    settings: TrainingSettings = field(default_factory=dict)
    smoke: bool = False
    expect: tuple[str, ...] = ()
    summary: SummaryRequest = SummaryRequest()
    retrain_changed: bool = False
    markdown_file: Path | None = None
    allow_collapsed: bool = False
    memory_budget: str | None = None  # "8GB": refuse runs estimated above it
    executor: ExecutorRequest = ExecutorRequest()
    json_output: bool = False  # the verdict's JSON document on standard output
    junit: Path | None = None  # a JUnit XML report of the expectations and failures
    track: str | None = None  # an experiment tracker (lossbench.training.tracking)
    data_dir: Path = field(default_factory=default_data_dir)  # datasets, prepared


@dataclass(frozen=True)
class ReportRequest:
    """Tables, summary and figures re-rendered from a comparison folder (no training)."""

    directory: Path
    baseline: str | None = None
    summary: SummaryRequest = SummaryRequest()
    print_only: bool = False
    allow_mixed: bool = False
    markdown_file: Path | None = None
    json_output: bool = False


@dataclass(frozen=True)
class TuneRequest:
    """Every loss tuned on validation with the same budget (Optuna)."""

    dataset: str = "synthetic"
    model: str = "sasrec"
    losses: tuple[str, ...] | None = None  # None: bce, ce, improved
    trials: int | None = None  # None: 20 without a timeout
    timeout: float | None = None  # seconds of trials per loss
    seed: int = 0
    prune: bool = True
    storage: str | None = None  # None: sqlite in `out`
    out: Path = Path("runs/tune")
    config_file: Path | None = None  # TOML: [tune.space], [settings]
    settings: TrainingSettings = field(default_factory=dict)
    json_output: bool = False
    data_dir: Path = field(default_factory=default_data_dir)  # datasets, prepared


@dataclass(frozen=True)
class ReproduceRequest:
    """One of the study's tables rerun on the given datasets, beside its published numbers."""

    table: str
    datasets: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    out: Path | None = None  # None: runs/TABLE
    pretrain_epochs: int | None = None
    tolerance: float = DEFAULT_TOLERANCE  # relative distance from a published value
    expect_published: bool = False
    settings: TrainingSettings = field(default_factory=dict)
    summary: SummaryRequest = SummaryRequest()
    retrain_changed: bool = False
    markdown_file: Path | None = None
    executor: ExecutorRequest = ExecutorRequest()
    json_output: bool = False
    data_dir: Path = field(default_factory=default_data_dir)  # datasets, prepared
