"""What the API's functions return: run folders, metrics, summary rows and verdicts, typed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

    from lossbench.compare.ci.expectations import Verdict
    from lossbench.compare.execute.types import RunFailure
    from lossbench.reproduce.report import ReproductionReport
    from lossbench.tuning.study import LossOutcome


@dataclass(frozen=True)
class MetricSummary:
    """One metric of one summary row: the mean over seeds, its standard deviation and the
    change from the baseline in percent (None: the baseline row, or no finished run)."""

    mean: float | None
    std: float | None
    change_percent: float | None


@dataclass(frozen=True)
class SummaryRow:
    """One (dataset, model, loss) of a comparison, as its table shows it."""

    dataset: str
    model: str
    loss: str
    baseline: str
    seeds: int
    metrics: Mapping[str, MetricSummary]
    p: float | None  # the paired test against the baseline, Holm-adjusted
    significant: str | None  # "better", "worse", or None


@dataclass(frozen=True)
class TrainResult:
    """A finished run (or the run that was reused): its folder and its metrics.json."""

    run_dir: Path
    metrics: Mapping[str, Any]
    trained: bool  # False: a finished run with the same settings was reused

    @property
    def test(self) -> Mapping[str, float]:
        """Test metrics by name (`ndcg@10`, `hr@10`, `mrr`, ...)."""
        test: Mapping[str, float] = self.metrics["test"]
        return test


@dataclass(frozen=True)
class CompareResult:
    """A comparison: its finished runs, the summary, the expectations judged and the runs
    that failed. `passed`: every expectation held and every run trained."""

    out_dir: Path
    run_dirs: Sequence[Path]
    rows: Sequence[SummaryRow]
    summary: pl.DataFrame  # the same rows, every column (see compare/summary.py)
    verdicts: Sequence[Verdict]
    failures: Sequence[RunFailure]

    @property
    def passed(self) -> bool:
        return not self.failures and all(verdict.passed for verdict in self.verdicts)

    def row(self, loss: str, dataset: str | None = None, model: str | None = None) -> SummaryRow:
        """The row of `loss` (of `dataset` and `model` when the comparison has several)."""
        for row in self.rows:
            if row.loss == loss and dataset in (None, row.dataset) and model in (None, row.model):
                return row
        raise KeyError(f"no summary row for loss {loss!r}")


@dataclass(frozen=True)
class ReportResult:
    """A comparison folder re-rendered: its finished runs, rows, warning and files written."""

    run_dirs: Sequence[Path]
    rows: Sequence[SummaryRow]
    summary: pl.DataFrame
    warning: str | None  # why rows were split by their settings, if they were
    written: Sequence[Path]  # none with `print_only`


@dataclass(frozen=True)
class TuneResult:
    """Each loss's study and the files written (tuned.toml, the summary, the figure)."""

    out_dir: Path
    outcomes: Sequence[LossOutcome]
    written: Sequence[Path]
    compare_command: str  # retrains each loss at its tuned settings on fresh seeds


@dataclass(frozen=True)
class ReproduceResult:
    """A reproduced table beside the study's numbers, and the runs that failed."""

    report: ReproductionReport
    failed_runs: int
    far_cells: int  # cells beyond the tolerance of the published value

    @property
    def passed(self) -> bool:
        return self.failed_runs == 0
