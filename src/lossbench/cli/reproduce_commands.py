"""`lossbench reproduce TABLE --dataset D`: one of the study's tables, its numbers beside.

`lossbench.reproduce` (torch, polars, pydantic) is imported inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from lossbench.cli import ci_options as ci
from lossbench.cli import executor_options as ex
from lossbench.cli import options as opt
from lossbench.cli.app import DataDir, GlobalOptions, announce, app, console, console_err
from lossbench.cli.compare_commands import (
    Alpha,
    Metrics,
    Permutations,
    SignificanceMetric,
    _names,
    _seeds,
    _summary_options,
)
from lossbench.cli.outputs import check_output_file, check_output_folder, print_json
from lossbench.errors import LossbenchError
from lossbench.reproduce import DEFAULT_TOLERANCE

if TYPE_CHECKING:
    from rich.console import Console

    from lossbench.compare.execute.types import ExecutorSettings
    from lossbench.compare.report.summary import SummaryOptions
    from lossbench.reproduce.report import ReproductionReport

REPRODUCE = "Reproduction"


@app.command()
@opt.training_flags
def reproduce(
    table: Annotated[
        str | None,
        typer.Argument(help="table2, table3 or loss-sweep (see --list).", show_default=False),
    ] = None,
    list_tables: Annotated[
        bool,
        typer.Option(
            "--list",
            help="Show the tables, their cells and the datasets with published numbers.",
            rich_help_panel=REPRODUCE,
        ),
    ] = False,
    dataset: Annotated[
        str | None,
        typer.Option(help="Dataset(s) to reproduce on (several: a,b).", rich_help_panel=REPRODUCE),
    ] = None,
    seeds: Annotated[
        str, typer.Option(help="Seeds of every cell, e.g. 0,1,2.", rich_help_panel=REPRODUCE)
    ] = "0,1,2",
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder of the runs and reports (default runs/TABLE); finished runs and "
            "pre-training in it are reused.",
            rich_help_panel=REPRODUCE,
        ),
    ] = None,
    pretrain_epochs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Pre-training epochs of the pre-trained models (S3Rec; default: the "
            "study's, 150 or 100 by dataset); fewer for a quick check.",
            rich_help_panel=REPRODUCE,
        ),
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Relative distance from a published value beyond which a cell is named.",
            rich_help_panel=REPRODUCE,
        ),
    ] = DEFAULT_TOLERANCE,
    expect_published: Annotated[
        bool,
        typer.Option(
            "--expect-published",
            help="Exit with status 1 when a cell lies beyond --tolerance of the study (CI).",
            rich_help_panel=REPRODUCE,
        ),
    ] = False,
    markdown_file: opt.Markdown = None,
    retrain_changed: opt.RetrainChanged = False,
    json_output: ci.JsonOutput = False,
    metrics: Metrics = "hr@10,ndcg@10",
    significance_metric: SignificanceMetric = "ndcg@10",
    permutations: Permutations = None,
    alpha: Alpha = 0.05,
    save_topk: opt.SaveTopk = None,
    training: opt.TrainingFlags = opt.NO_FLAGS,
    checkpoint_every: opt.CheckpointEvery = None,
    sample_users: ci.SampleUsers = None,
    executor: ex.ExecutorName = None,
    ray_address: ex.RayAddress = None,
    cpus_per_run: ex.CpusPerRun = None,
    gpus_per_run: ex.GpusPerRun = None,
    workers_per_run: ex.WorkersPerRun = None,
    max_retries: ex.MaxRetries = None,
    data_dir: DataDir = None,
) -> None:
    """Rerun one of the study's tables (its models, losses and preset; S3Rec pre-trained
    first) and print each cell beside the published number. Resumes like `compare`."""
    flags = opt.training_overrides(locals(), skip=_NOT_TRAINING)  # before any other local
    executor_settings = ex.settings_from(locals(), None)
    if list_tables:
        _print_tables()
        return
    from lossbench.reproduce.tables import TABLES, get_table

    if table is None:
        raise LossbenchError(
            f"give a table: {', '.join(TABLES)} (`lossbench reproduce --list` shows them)"
        )
    definition = get_table(table)
    datasets = _names(dataset, "--dataset")
    if not datasets:
        known = ", ".join(definition.published_datasets)
        raise LossbenchError(f"give --dataset; {table} has published numbers for {known}")
    if expect_published and not any(d in definition.published_datasets for d in datasets):
        raise LossbenchError(
            f"--expect-published: the study published no {table} numbers for "
            f"{', '.join(datasets)}; it did for {', '.join(definition.published_datasets)}"
        )
    summary_options = _summary_options(metrics, significance_metric, permutations, alpha)
    display = console_err if json_output else console
    report, failed = _reproduce(
        table,
        datasets,
        _seeds(seeds) or [],
        flags,
        out or Path("runs") / table,
        pretrain_epochs,
        summary_options,
        tolerance,
        markdown_file,
        retrain_changed,
        executor_settings,
        display,
    )
    if json_output:
        from lossbench.reproduce.report import reproduction_document

        print_json(reproduction_document(report, failed))
    far = report.far
    if failed:
        console_err.print(f"{failed} run(s) failed; run the same command again to retry them")
        raise typer.Exit(1)
    if expect_published and far:
        console_err.print(f"{len(far)} cell(s) beyond ±{100 * tolerance:g}% of the study")
        raise typer.Exit(1)


_NOT_TRAINING = (
    "table",
    "list_tables",
    "dataset",
    "seeds",
    "out",
    "pretrain_epochs",
    "tolerance",
    "expect_published",
    "markdown_file",
    "retrain_changed",
    "json_output",
    "metrics",
    "significance_metric",
    "permutations",
    "alpha",
    "data_dir",
    *ex.NOT_CONFIG,
)


def _reproduce(
    table: str,
    datasets: list[str],
    seeds: list[int],
    flags: dict[str, object],
    out: Path,
    pretrain_epochs: int | None,
    options: SummaryOptions,
    tolerance: float,
    markdown_file: Path | None,
    retrain_changed: bool,
    executor_settings: ExecutorSettings,
    display: Console,
) -> tuple[ReproductionReport, int]:
    """Plan, pre-train and train what is missing, then report; the report and the number of
    runs that failed (they are left out of the report)."""
    from lossbench.compare.execute.executors import make_executor
    from lossbench.compare.execute.failures import FailedRuns, RunHandling
    from lossbench.data.prepared import PreparedDataset
    from lossbench.data.splits import SplitSpec
    from lossbench.data.store import ensure_prepared, prepare_on_first_use
    from lossbench.reproduce.plan import build_reproduction, run_reproduction
    from lossbench.reproduce.published import check_published_variant
    from lossbench.reproduce.report import render_reproduction
    from lossbench.reproduce.tables import get_table
    from lossbench.training.observers import FiniteLoss

    check_output_folder(out, "--out")
    check_output_file(markdown_file, "--markdown")

    def prepare(name: str, split: SplitSpec) -> PreparedDataset:
        prepare_on_first_use(GlobalOptions.data_dir, name, split, announce)
        dataset = ensure_prepared(GlobalOptions.data_dir, name, split)
        check_published_variant(name, dataset.meta)  # another "Beauty" is not the study's
        return dataset

    executor_factory, flags = make_executor(executor_settings, dict(flags), out)  # Ray: threads
    failed = FailedRuns()
    executor = executor_factory(RunHandling(checks=(FiniteLoss(),), watchers=(), failed=failed))
    reproduction = build_reproduction(
        get_table(table), datasets, seeds, flags, out, pretrain_epochs
    )
    run_reproduction(reproduction, prepare, display, retrain_changed, executor)
    report = render_reproduction(out, options, display, tolerance, markdown_file)
    return report, len(failed.failures)


def _print_tables() -> None:
    """Each table: what it is, its preset, its cells, the datasets with published numbers."""
    from lossbench.reproduce.tables import TABLES

    for name, definition in TABLES.items():
        cells = " · ".join(
            f"{model} "
            + ", ".join(
                cell.loss + (f" ({_negatives(cell.negatives)})" if cell.negatives else "")
                for cell in definition.cells_of(model)
            )
            for model in definition.models
        )
        pretrained = ", ".join(definition.pretrained)
        lines = [
            f"[bold]{name}[/]: {escape(definition.title)}",
            f"  preset {definition.preset}"
            + (f"; {pretrained} pre-trained first" if pretrained else ""),
            f"  cells: {escape(cells)}",
            f"  published numbers for: {', '.join(definition.published_datasets) or 'none'}",
        ]
        console.print("\n".join(lines), highlight=False)


def _negatives(count: int) -> str:
    return f"{count} negative{'s' if count != 1 else ''}"
