"""`lossbench compare` (train a grid of losses, then report) and `lossbench report DIR`.

`lossbench.compare` (torch, polars, matplotlib) is imported inside the commands.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from lossbench.api.requests import CompareRequest, TrainingSettings
from lossbench.cli import options as opt
from lossbench.cli.app import DataDir, announce, command, current_data_dir, display
from lossbench.cli.executor_options import ExecutorOptions
from lossbench.cli.outputs import print_json
from lossbench.cli.parsing import names_list, seeds_list
from lossbench.cli.summary_options import (
    COMPARE,
    Metrics,
    Permutations,
    SignificanceMetric,
    SummaryOptions,
)

DEFAULT_OUT = Path("runs/compare")

AllowMixed = Annotated[
    bool,
    typer.Option(
        "--allow-mixed",
        help="Show runs trained with different settings side by side (with a warning) "
        "instead of refusing to average or pair them.",
    ),
]
Dataset = Annotated[
    str | None,
    typer.Option(help="Dataset (default synthetic; several: a,b).", rich_help_panel=COMPARE),
]
Model = Annotated[
    str | None,
    typer.Option(
        help="Model (see `lossbench models`), or package.module:name / ./file.py:name "
        "(several: a,b).",
        rich_help_panel=COMPARE,
    ),
]
Losses = Annotated[
    str | None,
    typer.Option(
        help="Losses to compare, e.g. bce,ce,improved (the default) or ./my_loss.py:fn; "
        "'original' = the model's own.",
        rich_help_panel=COMPARE,
    ),
]
Seeds = Annotated[
    str | None,
    typer.Option(help="Seeds of every loss, e.g. 0,1,2 (the default).", rich_help_panel=COMPARE),
]
Baseline = Annotated[
    str | None,
    typer.Option(
        help="Loss the others are compared with "
        "(default: each model's own loss if compared, else the first).",
        rich_help_panel=COMPARE,
    ),
]
Out = Annotated[
    Path,
    typer.Option(
        help="Folder of the runs and reports; finished runs in it are reused.",
        rich_help_panel=COMPARE,
    ),
]
GridFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Grid TOML: \\[grid] datasets, models, losses, shuffle, seeds; "
        "\\[settings] shared by all runs; \\[settings.per_loss.LOSS] one loss's own "
        "(flags override all).",
        rich_help_panel=COMPARE,
    ),
]


@dataclass(frozen=True)
class GridOptions:
    """What `compare` trains and where (an option group; None: the grid file's value, else
    the default)."""

    dataset: Dataset = None
    model: Model = None
    losses: Losses = None
    seeds: Seeds = None
    baseline: Baseline = None
    out: Out = DEFAULT_OUT
    config_file: GridFile = None


@command()
def compare(
    context: typer.Context,
    *,
    grid: GridOptions,
    retrain_changed: opt.RetrainChanged = False,
    markdown_file: opt.Markdown = None,
    summary: SummaryOptions,
    init: opt.Init = None,
    save_topk: opt.SaveTopk = None,
    preset: opt.Preset = None,
    training: opt.TrainingOptions,
    ci: opt.CiOptions,
    data_dir: DataDir = None,
    checkpoint_every: opt.CheckpointEvery = None,
    executor: ExecutorOptions,
) -> None:
    """Train one model with several losses (everything else identical) and compare them.

    Exit 1 when an expectation fails or a run fails to train (the other runs still train)."""
    from lossbench import api

    settings = training.settings(
        init=init,
        save_topk=save_topk,
        preset=preset,
        sample_users=ci.sample_users,
        checkpoint_every=checkpoint_every,
    )
    data_dir_path = current_data_dir(context)
    request = compare_request(
        grid, settings, summary, ci, executor, retrain_changed, markdown_file, data_dir_path
    )
    if not api.compare(request, display(ci.json_output), announce).passed:
        raise typer.Exit(1)


def compare_request(
    grid: GridOptions,
    settings: TrainingSettings,
    summary: SummaryOptions,
    ci: opt.CiOptions,
    executor: ExecutorOptions,
    retrain_changed: bool,
    markdown_file: Path | None,
    data_dir: Path,
) -> CompareRequest:
    """The comparison these options and the command's other options ask for."""
    return CompareRequest(
        datasets=names_list(grid.dataset, "--dataset"),
        models=names_list(grid.model, "--model"),
        losses=names_list(grid.losses, "--losses"),
        seeds=seeds_list(grid.seeds),
        baseline=grid.baseline,
        out=grid.out,
        config_file=grid.config_file,
        settings=settings,
        smoke=ci.smoke,
        expect=tuple(ci.expect or ()),
        summary=summary.request(),
        retrain_changed=retrain_changed,
        markdown_file=markdown_file,
        allow_collapsed=ci.allow_collapsed,
        memory_budget=ci.memory_budget,
        executor=executor.request(),
        json_output=ci.json_output,
        junit=ci.junit,
        track=ci.track,
        data_dir=data_dir,
    )


@command()
def report(
    directory: Annotated[Path, typer.Argument(help="Output folder of `lossbench compare`.")],
    *,
    baseline: Annotated[
        str | None,
        typer.Option(help="Loss the others are compared with (default: the comparison's)."),
    ] = None,
    summary: SummaryOptions,
    print_only: Annotated[
        bool, typer.Option("--print-only", help="Print the tables; write no file.")
    ] = False,
    allow_mixed: AllowMixed = False,
    markdown_file: opt.Markdown = None,
    json_output: opt.JsonOutput = False,
) -> None:
    """Re-render tables, summary.md, results files and figures from saved runs (no training)."""
    from lossbench import api
    from lossbench.compare.report.outputs import report_document

    summary_given = summary.request()
    request = api.ReportRequest(
        directory, baseline, summary_given, print_only, allow_mixed, markdown_file, json_output
    )
    result = api.report(request, display(json_output))
    if json_output:
        shown = list(summary_given.metrics)
        document = report_document(
            result.run_dirs, result.summary, shown, summary.significance_metric, result.warning
        )
        print_json(document)


@command()
def versus(
    treatment: Annotated[
        Path, typer.Argument(help="Runs to test: a run folder or its seeds' parent.")
    ],
    baseline: Annotated[Path, typer.Argument(help="Runs to test against, the same way.")],
    metrics: Metrics = "hr@10,ndcg@10",
    significance_metric: SignificanceMetric = "ndcg@10",
    permutations: Permutations = None,
    allow_mixed: AllowMixed = False,
    json_output: opt.JsonOutput = False,
) -> None:
    """Compare two sets of finished runs (two models, presets or versions), paired by seed."""
    from rich.markup import escape

    from lossbench.api.plan import summary_options as checked
    from lossbench.compare.report.outputs import row_document
    from lossbench.compare.report.tables import print_unsqueezed, rich_tables
    from lossbench.compare.report.versus import versus_summary

    summary_options = checked(SummaryOptions(metrics, significance_metric, permutations).request())
    summary, treated, base, warning = versus_summary(
        treatment, baseline, summary_options, allow_mixed
    )
    shown = display(json_output)
    if warning is not None:
        shown.print(f"[yellow]{escape(warning)}[/]", highlight=False)
    for table in rich_tables(summary, summary_options, subject="runs"):
        print_unsqueezed(shown, table)
    if json_output:
        rows = summary.iter_rows(named=True)
        document = {
            "treatment": {"label": treated, "folder": str(treatment)},
            "baseline": {"label": base, "folder": str(baseline)},
            "significance_metric": significance_metric,
            "warning": warning,
            "comparison": [row_document(row, summary_options.metrics) for row in rows],
        }
        print_json(document)


__all__ = ["compare", "report"]
