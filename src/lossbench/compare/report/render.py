"""Saved run folders -> tables, `summary.md`, `results.*` and figures (no training).

`compare` writes `comparison.json` into its output folder before training: the run folders
it asked for, each (dataset, model)'s baseline and the loss order. `lossbench report DIR`
reads it to re-render exactly that comparison; without it, every finished run under DIR.
Runs that were not trained alike are refused, or shown side by side (`mixed.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.markup import escape

from lossbench.atomic import atomic_path
from lossbench.compare.plan.build import SavedPlan, load_saved_plan
from lossbench.compare.report.figures import (
    FRONTIER,
    QUALITY_VS_TIME,
    VALIDATION_CURVES,
    frontier,
    quality_vs_time,
    validation_curves,
)
from lossbench.compare.report.mixed import check_mixing, variants, varies_across_losses
from lossbench.compare.report.results import find_finished_runs, results_frame, write_results
from lossbench.compare.report.summary import GROUP, SummaryOptions, summarize
from lossbench.compare.report.tables import markdown, print_unsqueezed, rich_tables
from lossbench.errors import LossbenchError
from lossbench.models import find_model
from lossbench.training.run_files import is_finished

SUMMARY_FILE = "summary.md"


def _own_loss(model: str) -> str | None:
    """The model's published loss, when the model still resolves (a plugin may be gone)."""
    try:
        return find_model(model).value.default_loss
    except LossbenchError:
        return None


@dataclass(frozen=True)
class Comparison:
    """The finished runs of a comparison folder and their summary (one row per loss)."""

    runs: pl.DataFrame  # one row per finished run (results.py)
    shown: pl.DataFrame  # the runs as summarized: split by setting when mixed and allowed
    summary: pl.DataFrame  # one row per (dataset, model, loss), see summary.py
    warning: str | None  # why rows were split by their settings, if they were


def load_comparison(
    out_dir: Path,
    options: SummaryOptions,
    baseline: str | None = None,
    allow_mixed: bool = False,
    saved: SavedPlan | None = None,
) -> Comparison:
    """The finished runs of DIR (those `comparison.json` names, else all) and their summary.
    `saved`: the plan in hand, when this process wrote `comparison.json`."""
    if not out_dir.is_dir():
        raise LossbenchError(f"{out_dir} is not a folder; give the --out folder of a comparison")
    plan = saved if saved is not None else load_saved_plan(out_dir)
    per_loss: set[str] = set()  # settings some losses have of their own, by the plan
    if plan is not None:
        run_dirs, baselines, order = plan.run_dirs, dict(plan.baselines), plan.loss_order
        run_dirs = [run_dir for run_dir in run_dirs if is_finished(run_dir)]
        per_loss = set(plan.per_loss_settings)
    else:
        run_dirs, baselines, order = find_finished_runs(out_dir), {}, []
    if not run_dirs:
        raise LossbenchError(
            f"no finished runs in {out_dir}; run `lossbench compare --out {out_dir}` first"
        )
    runs = results_frame(run_dirs)
    if baseline is not None and baseline not in runs["loss"].to_list():
        losses = ", ".join(runs["loss"].unique(maintain_order=True).to_list())
        raise LossbenchError(
            f"baseline {baseline!r} has no finished runs in {out_dir}; choose one of {losses}"
        )
    for dataset, model in runs.select("dataset", "model").unique().rows():
        if baseline is not None:
            baselines[(dataset, model)] = baseline
        elif (dataset, model) not in baselines and (own := _own_loss(model)) is not None:
            baselines[(dataset, model)] = own
    shown, warning = check_mixing(
        runs, GROUP, lambda key: varies_across_losses(key) or key in per_loss, allow_mixed
    )
    if warning is not None:  # rows were split by their settings: name them in order
        baselines = {key: (variants(shown, loss) or [loss])[0] for key, loss in baselines.items()}
        order = [label for loss in order for label in variants(shown, loss)]
    return Comparison(runs, shown, summarize(shown, baselines, options, order), warning)


def render_report(
    out_dir: Path,
    options: SummaryOptions,
    console: Console | None = None,
    baseline: str | None = None,
    allow_mixed: bool = False,
    *,
    print_only: bool = False,
    markdown_file: Path | None = None,
    saved: SavedPlan | None = None,
) -> list[Path]:
    """Re-render everything from the finished runs of DIR; return the files written (none
    with `print_only`: the tables go to the console only). `markdown_file`: also write the
    comparison table there as markdown (the text of summary.md)."""
    comparison = load_comparison(out_dir, options, baseline, allow_mixed, saved)
    return present_report(
        comparison, out_dir, options, console, print_only=print_only, markdown_file=markdown_file
    )


def present_report(
    comparison: Comparison,
    out_dir: Path,
    options: SummaryOptions,
    console: Console | None = None,
    *,
    print_only: bool = False,
    markdown_file: Path | None = None,
) -> list[Path]:
    """Print the tables of a loaded comparison, then write its files (see `render_report`)."""
    console = console or Console(quiet=True)
    if comparison.warning is not None:
        console.print(f"[yellow]{escape(comparison.warning)}[/]", highlight=False)
    for table in rich_tables(comparison.summary, options):
        print_unsqueezed(console, table)
    for line in data_lines(comparison.runs):
        console.print(line, highlight=False, markup=False)
    if print_only:
        if markdown_file is not None:
            write_text(markdown_file, summary_text(comparison, options))
        return []
    return write_report_files(comparison, out_dir, options, console, markdown_file)


def summary_text(comparison: Comparison, options: SummaryOptions) -> str:
    """summary.md: the comparison table as markdown, after the mixing warning if any."""
    note = f"> {comparison.warning}\n\n" if comparison.warning is not None else ""
    data = "".join(f"\n{line}\n" for line in data_lines(comparison.runs))
    return note + markdown(comparison.summary, options) + data


def data_lines(runs: pl.DataFrame) -> list[str]:
    """'Data: lastfm: 1,090 users, ...' per dataset, from the fingerprints the runs recorded;
    a dataset whose runs trained on different preparations says so."""
    if "dataset_fingerprint" not in runs.columns:
        return []
    recorded = runs.drop_nulls("dataset_fingerprint")
    lines = []
    for dataset, group in recorded.group_by("dataset", maintain_order=True):
        prints = group["dataset_fingerprint"].unique(maintain_order=True).to_list()
        if len(prints) == 1:
            lines.append(f"Data: {dataset[0]}: {prints[0]}")
        else:
            lines.append(
                f"Data: {dataset[0]}: runs trained on {len(prints)} different preparations "
                f"({'; '.join(prints)}): their numbers are not comparable"
            )
    return lines


def write_report_files(
    comparison: Comparison,
    out_dir: Path,
    options: SummaryOptions,
    console: Console,
    markdown_file: Path | None = None,
) -> list[Path]:
    """results.parquet / .csv, summary.md and the figures in DIR (and `markdown_file`)."""
    written = write_results(comparison.runs, out_dir)
    text = summary_text(comparison, options)
    write_text(out_dir / SUMMARY_FILE, text)
    written.append(out_dir / SUMMARY_FILE)
    metric = options.significance_metric
    written.append(quality_vs_time(comparison.summary, out_dir / QUALITY_VS_TIME, metric))
    written.append(validation_curves(comparison.shown, out_dir / VALIDATION_CURVES))
    written.append(frontier(comparison.summary, out_dir / FRONTIER, metric))
    n_runs = comparison.runs.height
    console.print(f"{n_runs} runs; wrote {', '.join(path.name for path in written)} in {out_dir}")
    if markdown_file is not None:
        write_text(markdown_file, text)
        console.print(f"wrote the table as markdown to {markdown_file}")
        written.append(markdown_file)
    return written


def write_text(path: Path, text: str) -> None:
    """Write `path` atomically; a folder that cannot be written is a one-line error."""
    try:
        with atomic_path(path) as temporary:
            temporary.write_text(text)
    except OSError as error:
        raise LossbenchError(f"cannot write {path}: {error.strerror or error}") from None
