"""`lossbench compare` (train a grid of losses, then report) and `lossbench report DIR`.

`lossbench.compare` (torch, polars, matplotlib) is imported inside the commands.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lossbench.cli import ci_options as ci
from lossbench.cli import executor_options as ex
from lossbench.cli import options as opt
from lossbench.cli.app import DataDir, GlobalOptions, announce, app, console, console_err
from lossbench.cli.outputs import check_output_file, check_output_folder, print_json
from lossbench.errors import LossbenchError

if TYPE_CHECKING:
    from rich.console import Console

    from lossbench.compare.plan.grid import Grid
    from lossbench.compare.report.summary import SummaryOptions
    from lossbench.data.prepared import PreparedDataset
    from lossbench.data.splits import SplitSpec

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


@app.command()
@opt.training_flags
def compare(
    dataset: Annotated[
        str | None,
        typer.Option(help="Dataset (default synthetic; several: a,b).", rich_help_panel=COMPARE),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model (see `lossbench models`), or package.module:name / ./file.py:name "
            "(several: a,b).",
            rich_help_panel=COMPARE,
        ),
    ] = None,
    losses: Annotated[
        str | None,
        typer.Option(
            help="Losses to compare, e.g. bce,ce,improved (the default) or ./my_loss.py:fn; "
            "'original' = the model's own.",
            rich_help_panel=COMPARE,
        ),
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            help="Seeds of every loss, e.g. 0,1,2 (the default).", rich_help_panel=COMPARE
        ),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="Loss the others are compared with "
            "(default: each model's own loss if compared, else the first).",
            rich_help_panel=COMPARE,
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            help="Folder of the runs and reports; finished runs in it are reused.",
            rich_help_panel=COMPARE,
        ),
    ] = DEFAULT_OUT,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Grid TOML: \\[grid] datasets, models, losses, shuffle, seeds; "
            "\\[settings] shared by all runs; \\[settings.per_loss.LOSS] one loss's own "
            "(flags override all).",
            rich_help_panel=COMPARE,
        ),
    ] = None,
    retrain_changed: opt.RetrainChanged = False,
    markdown_file: opt.Markdown = None,
    metrics: Metrics = "hr@10,ndcg@10",
    significance_metric: SignificanceMetric = "ndcg@10",
    permutations: Permutations = None,
    alpha: Alpha = 0.05,
    init: Annotated[
        Path | None,
        typer.Option(help="Pre-trained checkpoint to fine-tune (s3rec).", rich_help_panel=opt.RUN),
    ] = None,
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
    flags = opt.training_overrides(  # first: `locals()` holds only the flags here
        locals(),
        skip=(
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
        ),
    )
    executor_settings = ex.settings_from(locals(), config_file)
    if smoke and preset is not None:
        raise LossbenchError("--smoke is the preset smoke: drop --preset, or --smoke")
    from lossbench.compare.ci.expectations import (
        check_expectations,
        parse_expectations,
        read_grid_expectations,
    )
    from lossbench.compare.ci.step import Publishing, compare_and_judge
    from lossbench.compare.execute.executors import make_executor
    from lossbench.compare.plan.grid import make_grid, merge_settings, read_grid_file, under_flags
    from lossbench.data.store import ensure_prepared, prepare_on_first_use
    from lossbench.training.config import build_config
    from lossbench.training.memory import parse_memory_size
    from lossbench.training.presets import SMOKE_LAYER

    budget = parse_memory_size(memory_budget) if memory_budget is not None else None
    grid_values, settings = read_grid_file(config_file) if config_file else ({}, {})
    texts = [*(read_grid_expectations(config_file) if config_file else []), *(expect or [])]
    expectations = parse_expectations(texts)
    given = {
        "datasets": _names(dataset, "--dataset"),
        "models": _names(model, "--model"),
        "losses": _names(losses, "--losses"),
        "seeds": _seeds(seeds),
        "baseline": baseline,
    }
    grid_values.update({k: v for k, v in given.items() if v is not None})
    if "per_loss" in grid_values:  # a flag wins over a loss's own settings too
        grid_values["per_loss"] = under_flags(grid_values["per_loss"], flags)
    grid = make_grid(grid_values, str(config_file) if config_file else "options")
    summary_options = _summary_options(metrics, significance_metric, permutations, alpha)
    shared = merge_settings(settings, SMOKE_LAYER if smoke else {}, flags)
    groups = _groups(grid, shared.get("negatives"))
    check_expectations(expectations, groups, summary_options.significance_metric)
    check_output_folder(out, "--out")
    check_output_file(markdown_file, "--markdown")
    executor_factory, shared = make_executor(executor_settings, shared, out)  # Ray: threads
    base = build_config(overrides=shared)
    loaded: dict[tuple[str, SplitSpec], PreparedDataset] = {}

    def prepare(name: str, split: SplitSpec) -> PreparedDataset:
        if (name, split) not in loaded:
            prepare_on_first_use(GlobalOptions.data_dir, name, split, announce)
            loaded[name, split] = ensure_prepared(GlobalOptions.data_dir, name, split)
        return loaded[name, split]

    display = console_err if json_output else console
    _print_repeat_notices(grid.datasets, base.seen_rule, prepare, base.split_spec, display)
    code = compare_and_judge(
        grid,
        shared,
        out,
        prepare,
        summary_options,
        expectations,
        Publishing(json_output, junit, track),
        display,
        retrain_changed=retrain_changed,
        markdown_file=markdown_file,
        executor_factory=executor_factory,
        allow_collapsed=allow_collapsed,
        memory_budget=budget,
    )
    if code:
        raise typer.Exit(code)


def _groups(grid: Grid, negatives: int | None) -> dict[tuple[str, str], tuple[list[str], str]]:
    """(dataset, model) -> (its losses, its baseline), as the comparison will run them."""
    return {
        (dataset, model): (grid.losses_for(model, negatives), grid.baseline_for(model, negatives))
        for dataset in grid.datasets
        for model in grid.models
    }


def _print_repeat_notices(
    datasets: list[str],
    rule: str,
    prepare: Callable[[str, SplitSpec], PreparedDataset],
    split: SplitSpec,
    display: Console,
) -> None:
    """One line per dataset whose validation or test targets repeat the history."""
    from lossbench.data.repeats import repeat_notice, stored_or_computed
    from lossbench.evaluation.seen import SEEN_RULE_EFFECTS

    for name in datasets:
        entry = stored_or_computed(
            GlobalOptions.data_dir, name, lambda name: prepare(name, split), split
        )
        notice = repeat_notice(name, entry, SEEN_RULE_EFFECTS[rule])
        if notice:
            display.print(notice, highlight=False)


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
    from lossbench.compare.report.outputs import report_document
    from lossbench.compare.report.render import load_comparison, present_report

    summary_options = _summary_options(metrics, significance_metric, permutations, alpha)
    if directory.is_dir() and not print_only:
        hint = "`--print-only` prints the tables and writes nothing"
        check_output_folder(directory, "report", hint)
    check_output_file(markdown_file, "--markdown")
    comparison = load_comparison(directory, summary_options, baseline, allow_mixed)
    present_report(
        comparison,
        directory,
        summary_options,
        console_err if json_output else console,
        print_only=print_only,
        markdown_file=markdown_file,
    )
    if json_output:
        run_dirs = [Path(run_dir) for run_dir in comparison.runs["run_dir"]]
        metrics_shown, significance = summary_options.metrics, significance_metric
        summary, warning = comparison.summary, comparison.warning
        print_json(report_document(run_dirs, summary, metrics_shown, significance, warning))


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

    from lossbench.compare.report.outputs import row_document
    from lossbench.compare.report.tables import print_unsqueezed, rich_tables
    from lossbench.compare.report.versus import versus_summary

    summary_options = _summary_options(metrics, significance_metric, permutations, 0.05)
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


def _summary_options(
    metrics: str, significance: str, permutations: int | None, alpha: float
) -> SummaryOptions:
    import numpy as np

    from lossbench.compare.report.stats import DEFAULT_PERMUTATIONS
    from lossbench.compare.report.summary import SummaryOptions
    from lossbench.evaluation.metrics import per_user_metric

    permutations = DEFAULT_PERMUTATIONS if permutations is None else permutations
    shown = _names(metrics, "--metrics") or []
    for name in [*shown, significance]:
        per_user_metric(np.ones(1), name)  # raises a LossbenchError naming the valid forms
    if not shown:
        raise LossbenchError("--metrics is empty; give metrics such as hr@10,ndcg@10")
    if permutations < 1:
        raise LossbenchError(f"--permutations must be at least 1, not {permutations}")
    if not 0.0 < alpha < 1.0:
        raise LossbenchError(f"--alpha must be between 0 and 1, not {alpha}")
    return SummaryOptions(shown, significance, alpha, permutations)


def _names(text: str | None, flag: str) -> list[str] | None:
    """'a, b,c' -> ['a', 'b', 'c']; an empty list is an error (None: not given)."""
    if text is None:
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        from lossbench.losses import LOSSES

        valid = f"; valid losses: {', '.join(LOSSES)}" if flag == "--losses" else ""
        raise LossbenchError(f"{flag} is empty{valid}")
    return names


def _seeds(text: str | None) -> list[int] | None:
    names = _names(text, "--seeds")
    if names is None:
        return None
    try:
        return [int(name) for name in names]
    except ValueError:
        raise LossbenchError(f"--seeds must be integers such as 0,1,2, not {text!r}") from None


__all__ = ["compare", "report"]
