"""`lossbench reproduce TABLE --dataset D`: one of the study's tables, its numbers beside.

`lossbench.reproduce` (torch, polars, pydantic) is imported inside the command.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from lossbench.api.requests import ReproduceRequest, TrainingSettings
from lossbench.cli import options as opt
from lossbench.cli.app import (
    DataDir,
    announce,
    command,
    console,
    console_err,
    current_data_dir,
    display,
)
from lossbench.cli.executor_options import ExecutorOptions
from lossbench.cli.outputs import print_json
from lossbench.cli.parsing import names_list, seeds_list
from lossbench.cli.summary_options import SummaryOptions
from lossbench.errors import LossbenchError
from lossbench.reproduce import DEFAULT_TOLERANCE

if TYPE_CHECKING:
    from lossbench.api.results import ReproduceResult

REPRODUCE = "Reproduction"


Table = Annotated[
    str | None,
    typer.Argument(help="table2, table3 or loss-sweep (see --list).", show_default=False),
]
ListTables = Annotated[
    bool,
    typer.Option(
        "--list",
        help="Show the tables, their cells and the datasets with published numbers.",
        rich_help_panel=REPRODUCE,
    ),
]
Dataset = Annotated[
    str | None,
    typer.Option(help="Dataset(s) to reproduce on (several: a,b).", rich_help_panel=REPRODUCE),
]
Seeds = Annotated[
    str, typer.Option(help="Seeds of every cell, e.g. 0,1,2.", rich_help_panel=REPRODUCE)
]
Out = Annotated[
    Path | None,
    typer.Option(
        help="Folder of the runs and reports (default runs/TABLE); finished runs and "
        "pre-training in it are reused.",
        rich_help_panel=REPRODUCE,
    ),
]
PretrainEpochs = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Pre-training epochs of the pre-trained models (S3Rec; default: the "
        "study's, 150 or 100 by dataset); fewer for a quick check.",
        rich_help_panel=REPRODUCE,
    ),
]
Tolerance = Annotated[
    float,
    typer.Option(
        min=0.0,
        help="Relative distance from a published value beyond which a cell is named.",
        rich_help_panel=REPRODUCE,
    ),
]
ExpectPublished = Annotated[
    bool,
    typer.Option(
        "--expect-published",
        help="Exit with status 1 when a cell lies beyond --tolerance of the study (CI).",
        rich_help_panel=REPRODUCE,
    ),
]


@dataclass(frozen=True)
class TableOptions:
    """Which table `reproduce` reruns, where, and how close to the study it must come (an
    option group)."""

    table: Table = None
    list_tables: ListTables = False
    dataset: Dataset = None
    seeds: Seeds = "0,1,2"
    out: Out = None
    pretrain_epochs: PretrainEpochs = None
    tolerance: Tolerance = DEFAULT_TOLERANCE
    expect_published: ExpectPublished = False


@command()
def reproduce(
    context: typer.Context,
    *,
    reproduction: TableOptions,
    markdown_file: opt.Markdown = None,
    retrain_changed: opt.RetrainChanged = False,
    json_output: opt.JsonOutput = False,
    summary: SummaryOptions,
    save_topk: opt.SaveTopk = None,
    training: opt.TrainingOptions,
    checkpoint_every: opt.CheckpointEvery = None,
    sample_users: opt.SampleUsers = None,
    executor: ExecutorOptions,
    data_dir: DataDir = None,
) -> None:
    """Rerun one of the study's tables (its models, losses and preset; S3Rec pre-trained
    first) and print each cell beside the published number. Resumes like `compare`."""
    from lossbench import api

    settings = training.settings(  # first: a bad option fails even with --list
        save_topk=save_topk, checkpoint_every=checkpoint_every, sample_users=sample_users
    )
    if reproduction.list_tables:
        _print_tables()
        return
    data_dir_path = current_data_dir(context)
    request = reproduce_request(
        reproduction, settings, summary, executor, retrain_changed, markdown_file, data_dir_path
    )
    result = api.reproduce(request, display(json_output), announce)
    judge(result, json_output, reproduction)


def reproduce_request(
    asked: TableOptions,
    settings: TrainingSettings,
    summary: SummaryOptions,
    executor: ExecutorOptions,
    retrain_changed: bool,
    markdown_file: Path | None,
    data_dir: Path,
) -> ReproduceRequest:
    """The reproduction these options and the command's other options ask for."""
    from lossbench.reproduce.tables import TABLES

    if asked.table is None:
        raise LossbenchError(
            f"give a table: {', '.join(TABLES)} (`lossbench reproduce --list` shows them)"
        )
    return ReproduceRequest(
        table=asked.table,
        datasets=names_list(asked.dataset, "--dataset") or (),
        seeds=seeds_list(asked.seeds) or (),
        out=asked.out,
        pretrain_epochs=asked.pretrain_epochs,
        tolerance=asked.tolerance,
        expect_published=asked.expect_published,
        settings=settings,
        summary=summary.request(),
        retrain_changed=retrain_changed,
        markdown_file=markdown_file,
        executor=executor.request(),
        data_dir=data_dir,
    )


def judge(result: ReproduceResult, json_output: bool, asked: TableOptions) -> None:
    """With `--json`, the reproduction's document; exit 1 when a run failed, or when a cell
    lies beyond the tolerance and `--expect-published` asks for the study's numbers."""
    if json_output:
        from lossbench.reproduce.report import reproduction_document

        print_json(reproduction_document(result.report, result.failed_runs))
    if result.failed_runs:
        console_err.print(
            f"{result.failed_runs} run(s) failed; run the same command again to retry them"
        )
        raise typer.Exit(1)
    if asked.expect_published and result.far_cells:
        beyond = f"beyond ±{100 * asked.tolerance:g}% of the study"
        console_err.print(f"{result.far_cells} cell(s) {beyond}")
        raise typer.Exit(1)


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
