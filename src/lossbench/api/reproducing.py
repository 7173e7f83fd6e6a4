"""`reproduce`: one of the study's tables, planned, pre-trained, trained and reported beside
the published numbers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from lossbench.api.folders import check_output_file, check_output_folder
from lossbench.api.plan import executor_settings_of, summary_options
from lossbench.api.requests import ReproduceRequest
from lossbench.api.results import ReproduceResult
from lossbench.data.prepared import PreparedDataset
from lossbench.data.splits import SplitSpec
from lossbench.data.store import ensure_prepared, prepare_on_first_use
from lossbench.errors import LossbenchError
from lossbench.training.config import merge_layers
from lossbench.training.names import Names

Announce = Callable[[str], None]


def reproduce(request: ReproduceRequest, console: Console, announce: Announce) -> ReproduceResult:
    """Plan every cell of the table on every dataset, pre-train and train what is missing
    (resuming like `compare`), then report each cell beside the study's number."""
    from lossbench.compare.execute.executors import make_executor
    from lossbench.compare.execute.failures import FailedRuns, RunHandling
    from lossbench.reproduce.plan import build_reproduction, run_reproduction
    from lossbench.reproduce.published import check_published_variant
    from lossbench.reproduce.report import render_reproduction
    from lossbench.reproduce.tables import get_table
    from lossbench.training.observers import FiniteLoss

    table = get_table(request.table)
    _check_datasets(request, table.published_datasets)
    options = summary_options(request.summary)
    out = request.out or Path("runs") / request.table
    check_output_folder(out, "--out")
    check_output_file(request.markdown_file, "--markdown")
    data_dir = request.data_dir

    def prepare(name: str, split: SplitSpec) -> PreparedDataset:
        prepare_on_first_use(data_dir, name, split, announce)
        dataset = ensure_prepared(data_dir, name, split)
        check_published_variant(name, dataset.meta)  # another "Beauty" is not the study's
        return dataset

    settings = executor_settings_of(request.executor, None)
    factory, flags = make_executor(settings, merge_layers(request.settings), out)  # Ray: threads
    failed = FailedRuns()
    executor = factory(RunHandling(checks=(FiniteLoss(),), watchers=(), failed=failed))
    seeds, datasets = list(request.seeds), list(request.datasets)
    names = Names(data_dir)
    reproduction = build_reproduction(
        table, datasets, seeds, flags, out, request.pretrain_epochs, names
    )
    run_reproduction(reproduction, prepare, console, request.retrain_changed, executor)
    report = render_reproduction(out, options, console, request.tolerance, request.markdown_file)
    return ReproduceResult(report, len(failed.failures), len(report.far))


def _check_datasets(request: ReproduceRequest, published: list[str]) -> None:
    if not request.datasets:
        raise LossbenchError(
            f"give --dataset; {request.table} has published numbers for {', '.join(published)}"
        )
    if request.expect_published and not any(d in published for d in request.datasets):
        raise LossbenchError(
            f"--expect-published: the study published no {request.table} numbers for "
            f"{', '.join(request.datasets)}; it did for {', '.join(published)}"
        )
