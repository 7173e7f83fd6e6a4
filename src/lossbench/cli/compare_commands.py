"""`lossbench compare` (train a grid of losses, then report) and `lossbench report DIR`.

`lossbench.compare` (torch, polars, matplotlib) is imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lossbench.cli import ci_options as ci
from lossbench.cli import executor_options as ex
from lossbench.cli import options as opt
from lossbench.cli.app import DataDir, announce, app, console, console_err, current_data_dir
from lossbench.cli.outputs import print_json
from lossbench.cli.parsing import names_list, seeds_list, summary_request

COMPARE = "Comparison"
DEFAULT_OUT = Path("runs/compare")

Metrics = Annotated[
    str,
    typer.Option(
        help="Test metrics in the table, e.g. hr@10,ndcg@10,mrr "
        "(any k: recomputed from the saved ranks).",
        rich_help_panel=COMPARE,
    ),
]
SignificanceMetric = Annotated[
    str,
    typer.Option(help="Per-user metric of the paired significance test.", rich_help_panel=COMPARE),
]
Permutations = Annotated[
    int | None,
    typer.Option(
        help="Random sign flips of the permutation test.",
        show_default="10000",
        rich_help_panel=COMPARE,
    ),
]
AllowMixed = Annotated[
    bool,
    typer.Option(
        "--allow-mixed",
        help="Show runs trained with different settings side by side (with a warning) "
        "instead of refusing to average or pair them.",
    ),
]
Alpha = Annotated[
    float,
    typer.Option(help="Significance level (Holm-corrected across rows).", rich_help_panel=COMPARE),
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
Init = Annotated[
    Path | None,
    typer.Option(help="Pre-trained checkpoint to fine-tune (s3rec).", rich_help_panel=opt.RUN),
]
# compare's options that are no TrainConfig field.
NOT_TRAINING = (
    "dataset",
    "model",
    "losses",
    "seeds",
    "baseline",
    "out",
    "config_file",
    "retrain_changed",
    "markdown_file",
    "metrics",
    "significance_metric",
    "permutations",
    "alpha",
    *ci.NOT_CONFIG,
    *ex.NOT_CONFIG,
)


@app.command()
@opt.training_flags
def compare(
    context: typer.Context,
    dataset: Dataset = None,
    model: Model = None,
    losses: Losses = None,
    seeds: Seeds = None,
    baseline: Baseline = None,
    out: Out = DEFAULT_OUT,
    config_file: GridFile = None,
    retrain_changed: opt.RetrainChanged = False,
    markdown_file: opt.Markdown = None,
    metrics: Metrics = "hr@10,ndcg@10",
    significance_metric: SignificanceMetric = "ndcg@10",
    permutations: Permutations = None,
    alpha: Alpha = 0.05,
    init: Init = None,
    save_topk: opt.SaveTopk = None,
    preset: opt.Preset = None,
    training: opt.TrainingFlags = opt.NO_FLAGS,
    smoke: ci.Smoke = False,
    sample_users: ci.SampleUsers = None,
    expect: ci.Expect = None,
    allow_collapsed: ci.AllowCollapsed = False,
    memory_budget: ci.MemoryBudget = None,
    json_output: ci.JsonOutput = False,
    junit: ci.Junit = None,
    track: ci.Track = None,
    data_dir: DataDir = None,
    checkpoint_every: opt.CheckpointEvery = None,
    executor: ex.ExecutorName = None,
    ray_address: ex.RayAddress = None,
    cpus_per_run: ex.CpusPerRun = None,
    gpus_per_run: ex.GpusPerRun = None,
    workers_per_run: ex.WorkersPerRun = None,
    max_retries: ex.MaxRetries = None,
) -> None:
    """Train one model with several losses (everything else identical) and compare them.

    Exit 1 when an expectation fails or a run fails to train (the other runs still train)."""
    settings = opt.training_overrides(locals(), skip=NOT_TRAINING)  # first: only the options
    executor_given = ex.executor_request(locals())
    from lossbench import api

    request = api.CompareRequest(
        datasets=names_list(dataset, "--dataset"),
        models=names_list(model, "--model"),
        losses=names_list(losses, "--losses"),
        seeds=seeds_list(seeds),
        baseline=baseline,
        out=out,
        config_file=config_file,
        settings=settings,
        smoke=smoke,
        expect=tuple(expect or ()),
        summary=summary_request(metrics, significance_metric, permutations, alpha),
        retrain_changed=retrain_changed,
        markdown_file=markdown_file,
        allow_collapsed=allow_collapsed,
        memory_budget=memory_budget,
        executor=executor_given,
        json_output=json_output,
        junit=junit,
        track=track,
        data_dir=current_data_dir(context),
    )
    if not api.compare(request, console_err if json_output else console, announce).passed:
        raise typer.Exit(1)


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(help="Output folder of `lossbench compare`.")],
    baseline: Annotated[
        str | None,
        typer.Option(help="Loss the others are compared with (default: the comparison's)."),
    ] = None,
    metrics: Metrics = "hr@10,ndcg@10",
    significance_metric: SignificanceMetric = "ndcg@10",
    permutations: Permutations = None,
    alpha: Alpha = 0.05,
    print_only: Annotated[
        bool, typer.Option("--print-only", help="Print the tables; write no file.")
    ] = False,
    allow_mixed: AllowMixed = False,
    markdown_file: opt.Markdown = None,
    json_output: ci.JsonOutput = False,
) -> None:
    """Re-render tables, summary.md, results files and figures from saved runs (no training)."""
    from lossbench import api
    from lossbench.compare.report.outputs import report_document

    summary = summary_request(metrics, significance_metric, permutations, alpha)
    request = api.ReportRequest(
        directory, baseline, summary, print_only, allow_mixed, markdown_file, json_output
    )
    result = api.report(request, console_err if json_output else console)
    if json_output:
        shown = list(summary.metrics)
        document = report_document(
            result.run_dirs, result.summary, shown, significance_metric, result.warning
        )
        print_json(document)


@app.command()
def versus(
    treatment: Annotated[
        Path, typer.Argument(help="Runs to test: a run folder or its seeds' parent.")
    ],
    baseline: Annotated[Path, typer.Argument(help="Runs to test against, the same way.")],
    metrics: Metrics = "hr@10,ndcg@10",
    significance_metric: SignificanceMetric = "ndcg@10",
    permutations: Permutations = None,
    allow_mixed: AllowMixed = False,
    json_output: ci.JsonOutput = False,
) -> None:
    """Compare two sets of finished runs (two models, presets or versions), paired by seed."""
    from rich.markup import escape

    from lossbench.api.plan import summary_options as checked
    from lossbench.compare.report.outputs import row_document
    from lossbench.compare.report.tables import print_unsqueezed, rich_tables
    from lossbench.compare.report.versus import versus_summary

    summary_options = checked(summary_request(metrics, significance_metric, permutations, 0.05))
    summary, treated, base, warning = versus_summary(
        treatment, baseline, summary_options, allow_mixed
    )
    display = console_err if json_output else console
    if warning is not None:
        display.print(f"[yellow]{escape(warning)}[/]", highlight=False)
    for table in rich_tables(summary, summary_options, subject="runs"):
        print_unsqueezed(display, table)
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
