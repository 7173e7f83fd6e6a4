"""`lossbench reproduce TABLE --dataset D`: one of the study's tables, its numbers beside.

`lossbench.reproduce` (torch, polars, pydantic) is imported inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from lossbench.cli import ci_options as ci
from lossbench.cli import executor_options as ex
from lossbench.cli import options as opt
from lossbench.cli.app import DataDir, announce, app, console, console_err, current_data_dir
from lossbench.cli.compare_commands import Alpha, Metrics, Permutations, SignificanceMetric
from lossbench.cli.outputs import print_json
from lossbench.cli.parsing import names_list, seeds_list, summary_request
from lossbench.errors import LossbenchError
from lossbench.reproduce import DEFAULT_TOLERANCE

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


@app.command()
@opt.training_flags
def reproduce(
    context: typer.Context,
    table: Table = None,
    list_tables: ListTables = False,
    dataset: Dataset = None,
    seeds: Seeds = "0,1,2",
    out: Out = None,
    pretrain_epochs: PretrainEpochs = None,
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    expect_published: ExpectPublished = False,
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
    executor_given = ex.executor_request(locals())
    if list_tables:
        _print_tables()
        return
    from lossbench import api
    from lossbench.reproduce.tables import TABLES

    if table is None:
        raise LossbenchError(
            f"give a table: {', '.join(TABLES)} (`lossbench reproduce --list` shows them)"
        )
    request = api.ReproduceRequest(
        table=table,
        datasets=names_list(dataset, "--dataset") or (),
        seeds=seeds_list(seeds) or (),
        out=out,
        pretrain_epochs=pretrain_epochs,
        tolerance=tolerance,
        expect_published=expect_published,
        settings=flags,
        summary=summary_request(metrics, significance_metric, permutations, alpha),
        retrain_changed=retrain_changed,
        markdown_file=markdown_file,
        executor=executor_given,
        data_dir=current_data_dir(context),
    )
    result = api.reproduce(request, console_err if json_output else console, announce)
    if json_output:
        from lossbench.reproduce.report import reproduction_document

        print_json(reproduction_document(result.report, result.failed_runs))
    if result.failed_runs:
        console_err.print(
            f"{result.failed_runs} run(s) failed; run the same command again to retry them"
        )
        raise typer.Exit(1)
    if expect_published and result.far_cells:
        console_err.print(f"{result.far_cells} cell(s) beyond ±{100 * tolerance:g}% of the study")
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
