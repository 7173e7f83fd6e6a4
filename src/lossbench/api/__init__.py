"""lossbench from Python: one plain function per command, each request -> plan -> validate ->
prepare -> execute -> report, returning a typed result (docs/api.md).

    from lossbench.api import CompareRequest, compare
    result = compare(CompareRequest(losses=("bce", "improved"), smoke=True))
    result.row("improved").metrics["ndcg@10"].mean

The command line (`lossbench compare ...`) collects options into the same requests and calls
the same functions. A problem with a request raises `lossbench.errors.LossbenchError` naming
every problem found; nothing is trained before the whole request is valid. Importing this
module is cheap: torch, polars and the rest load when a function is called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lossbench.api.requests import (
    CompareRequest,
    ExecutorRequest,
    ReportRequest,
    ReproduceRequest,
    SummaryRequest,
    TrainRequest,
    TuneRequest,
)
from lossbench.api.results import (
    CompareResult,
    MetricSummary,
    ReportResult,
    ReproduceResult,
    SummaryRow,
    TrainResult,
    TuneResult,
)

if TYPE_CHECKING:
    from rich.console import Console

# Where lines about work done on the way go (preparing a dataset): standard error by default.
Announce = Callable[[str], None]


def _console(console: Console | None) -> Console:
    from rich.console import Console

    return console if console is not None else Console()


def _announce(announce: Announce | None) -> Announce:
    if announce is not None:
        return announce
    from rich.console import Console

    errors = Console(stderr=True)
    return lambda line: errors.print(line, highlight=False, soft_wrap=True)


def train(
    request: TrainRequest, console: Console | None = None, announce: Announce | None = None
) -> TrainResult | None:
    """Train one run (or reuse the finished one): its folder and metrics. None on a rank
    other than 0 of a data-parallel run under torchrun."""
    from lossbench.api.training import train as run

    return run(request, _console(console), _announce(announce))


def compare(
    request: CompareRequest, console: Console | None = None, announce: Announce | None = None
) -> CompareResult:
    """Train a grid of losses alike, then summarize, judge the expectations and report."""
    from lossbench.api.comparing import compare as run

    return run(request, _console(console), _announce(announce))


def report(request: ReportRequest, console: Console | None = None) -> ReportResult:
    """Re-render a comparison folder's tables, summary, results files and figures."""
    from lossbench.api.comparing import report as run

    return run(request, _console(console))


def tune(
    request: TuneRequest, console: Console | None = None, announce: Announce | None = None
) -> TuneResult:
    """Tune every loss on validation with the same budget; write a grid that retrains them."""
    from lossbench.api.tuning import tune as run

    return run(request, _console(console), _announce(announce))


def reproduce(
    request: ReproduceRequest, console: Console | None = None, announce: Announce | None = None
) -> ReproduceResult:
    """Rerun one of the study's tables and report each cell beside the published number."""
    from lossbench.api.reproducing import reproduce as run

    return run(request, _console(console), _announce(announce))


__all__ = [
    "CompareRequest",
    "CompareResult",
    "ExecutorRequest",
    "MetricSummary",
    "ReportRequest",
    "ReportResult",
    "ReproduceRequest",
    "ReproduceResult",
    "SummaryRequest",
    "SummaryRow",
    "TrainRequest",
    "TrainResult",
    "TuneRequest",
    "TuneResult",
    "compare",
    "report",
    "reproduce",
    "train",
    "tune",
]
