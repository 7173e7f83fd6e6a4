"""Saved run folders -> tables, `summary.md`, `results.*` and figures (no training).

`compare` writes `comparison.json` into its output folder before training: the run folders
it asked for, each (dataset, model)'s baseline and the loss order. `lossbench report DIR`
reads it to re-render exactly that comparison; without it, every finished run under DIR.
Runs that were not trained alike are refused, or shown side by side (`mixed.py`).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from lossbench.atomic import atomic_path
from lossbench.compare.figures import (
    QUALITY_VS_TIME,
    VALIDATION_CURVES,
    quality_vs_time,
    validation_curves,
)
from lossbench.compare.mixed import check_mixing, variants, varies_across_losses
from lossbench.compare.plan import load_saved_plan
from lossbench.compare.results import find_finished_runs, results_frame, write_results
from lossbench.compare.summary import GROUP, SummaryOptions, summarize
from lossbench.compare.tables import markdown, print_unsqueezed, rich_tables
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


def render_report(
    out_dir: Path,
    options: SummaryOptions,
    console: Console | None = None,
    baseline: str | None = None,
    allow_mixed: bool = False,
    *,
    print_only: bool = False,
) -> list[Path]:
    """Re-render everything from the finished runs of DIR; return the files written (none
    with `print_only`: the tables go to the console only)."""
    console = console or Console(quiet=True)
    if not out_dir.is_dir():
        raise LossbenchError(f"{out_dir} is not a folder; give the --out folder of a comparison")
    plan = load_saved_plan(out_dir)
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
        console.print(f"[yellow]{escape(warning)}[/]", highlight=False)
    summary = summarize(shown, baselines, options, order)
    for table in rich_tables(summary, options):
        print_unsqueezed(console, table)
    if print_only:
        return []

    written = write_results(runs, out_dir)
    with atomic_path(out_dir / SUMMARY_FILE) as temporary:
        note = f"> {warning}\n\n" if warning is not None else ""
        temporary.write_text(note + markdown(summary, options))
    written.append(out_dir / SUMMARY_FILE)
    metric = options.significance_metric
    written.append(quality_vs_time(summary, out_dir / QUALITY_VS_TIME, metric))
    written.append(validation_curves(shown, out_dir / VALIDATION_CURVES, metric))
    console.print(
        f"{len(run_dirs)} runs; wrote {', '.join(path.name for path in written)} in {out_dir}"
    )
    return written
