"""The comparison table, one per dataset, as rich tables and as markdown (same cells)."""

from __future__ import annotations

import polars as pl
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from lossbench.compare.report.summary import BETTER, POPULARITY, WORSE, SummaryOptions
from lossbench.evaluation.seen import SEEN_RULE_NOTES

Cells = tuple[list[str], list[list[str]]]  # (headers, rows)


def legend(options: SummaryOptions, summary: pl.DataFrame | None = None) -> str:
    """The footnote: the test, then the seen-items rule of the runs in `summary`."""
    metric = options.significance_metric.upper()
    text = (
        f"{BETTER} / {WORSE}: test {metric} significantly higher / lower than the baseline "
        f"(two-sided paired sign-flip permutation test over (user, seed) pairs, "
        f"{options.n_permutations:,} permutations, Holm-corrected across the rows of a "
        f"dataset, alpha = {options.alpha:g}). Values are mean ± std over seeds; "
        "change is relative to the baseline's mean; p is the Holm-adjusted p-value."
    )
    return " ".join([text, *_floor_note(summary), *_seen_notes(summary), *collapsed_notes(summary)])


def _floor_note(summary: pl.DataFrame | None) -> list[str]:
    if summary is None or "reference" not in summary.columns or not summary["reference"].any():
        return []
    return [
        f"{POPULARITY} (floor): the training data's most popular items, ranked by the same "
        "rules; a run no better than it on validation is collapsed."
    ]


def _seen_notes(summary: pl.DataFrame | None) -> list[str]:
    if summary is None or "seen_targets" not in summary.columns:
        return []
    rules = sorted(
        {rule for cell in summary["seen_targets"].drop_nulls() for rule in cell.split(", ")}
    )
    if len(rules) > 1:
        return [f"Runs differ in their seen-items rule ({', '.join(rules)}): compare with care."]
    return [SEEN_RULE_NOTES.get(rule, f"Seen-items rule: {rule}.") for rule in rules]


def table_cells(
    summary: pl.DataFrame, options: SummaryOptions, compact: bool = False, subject: str = "loss"
) -> Cells:
    """Header and formatted rows of one dataset's table (`summary` holds one dataset).

    `compact` (the terminal) puts each std under its mean and shortens the headers, so the
    table fits 80 columns.
    """
    several_models = summary["model"].n_unique() > 1
    headers = [*(["model"] if several_models else []), subject, "seeds"]
    headers += [_label(name) for name in options.metrics]
    headers += [f"Δ {_label(name)}" for name in options.metrics]
    headers += ["p", "s / epoch", "loss %", "tokens / s", "best epoch", "peak MB"]
    rows = []
    for row in summary.iter_rows(named=True):
        is_floor = bool(row.get("reference"))
        is_baseline = row["loss"] == row["baseline"] and not is_floor
        cells = [*([row["model"]] if several_models else [])]
        cells += [_row_name(row, is_baseline, is_floor), _seeds(row, compact)]
        cells += [
            _mean_std(row[f"{name}_mean"], row[f"{name}_std"], "\n±" if compact else " ± ")
            for name in options.metrics
        ]
        for name in options.metrics:
            change = "—" if is_baseline else _percent(row[f"{name}_change"])
            if is_floor and change != "—":
                change = f"({change})"  # the floor's distance from the baseline, untested
            if name == options.significance_metric and row["mark"]:
                change = f"{change} {row['mark']}"
            cells.append(change)
        cells += [
            "—" if is_baseline else _p_value(row["p_holm"]),
            _number(row.get("train_seconds_per_epoch"), "{:.2f}"),
            _number(row.get("loss_share"), "{:.0%}"),
            _tokens(row.get("tokens_per_second")),
            _number(row.get("best_epoch"), "{:.1f}"),
            _number(row.get("peak_memory_mb"), "{:.0f}"),
        ]
        rows.append(cells)
    return headers, rows


def rich_tables(
    summary: pl.DataFrame, options: SummaryOptions, subject: str = "loss"
) -> list[Table]:
    """One table per dataset; `subject` is the rows' column header ("loss", or "runs")."""
    plural = "losses" if subject == "loss" else subject
    tables = []
    for (dataset,), part in summary.group_by("dataset", maintain_order=True):
        headers, rows = table_cells(part, options, compact=True, subject=subject)
        table = Table(
            title=f"{plural} compared on {dataset}{split_note(part)}",
            caption=legend(options, part),
            box=box.SIMPLE_HEAD,
            collapse_padding=True,
        )
        first_number = headers.index("seeds")
        for i, header in enumerate(headers):
            table.add_column(header, justify="right" if i >= first_number else "left")
        for cells in rows:
            style = (
                "green" if BETTER in "".join(cells) else "red" if WORSE in "".join(cells) else None
            )
            table.add_row(*map(escape, cells), style=style)  # `bce [lr=0.01]` is no markup
        tables.append(table)
    return tables


def markdown(summary: pl.DataFrame, options: SummaryOptions) -> str:
    """Ready-to-paste markdown: one section and table per dataset, then the legend."""
    sections = ["# Loss comparison", ""]
    for (dataset,), part in summary.group_by("dataset", maintain_order=True):
        headers, rows = table_cells(part, options)
        first = headers.index("seeds")
        align = ["---" if i < first else "---:" for i in range(len(headers))]
        sections += [f"## {dataset}{split_note(part)}", "", _md_row(headers), _md_row(align)]
        sections += [_md_row(cells) for cells in rows]
        sections.append("")
    sections += [legend(options, summary), ""]
    return "\n".join(sections)


def split_note(part: pl.DataFrame) -> str:
    """' (temporal 0.8/0.9 split)' when the rows were not split leave-one-out."""
    splits = part["split"].unique().to_list() if "split" in part.columns else []
    shown = [split for split in splits if split not in (None, "loo")]
    return f" ({', '.join(sorted(shown))} split)" if shown else ""


def _row_name(row: dict[str, object], is_baseline: bool, is_floor: bool) -> str:
    if is_floor:
        return f"{row['loss']} (floor)"
    return f"{row['loss']} (base)" if is_baseline else str(row["loss"])


def _seeds(row: dict[str, object], compact: bool) -> str:
    """Seeds averaged, and the collapsed runs left out: '2 (+1 collapsed)'."""
    if row.get("reference"):
        return "—"
    collapsed = row.get("collapsed") or 0
    if not collapsed:
        return str(row["seeds"])
    return f"{row['seeds']}{chr(10) if compact else ' '}(+{collapsed} collapsed)"


def _tokens(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "—"
    return f"{value / 1000:,.0f}k" if value >= 10_000 else f"{value:,.0f}"


def collapsed_notes(summary: pl.DataFrame | None) -> list[str]:
    """One line per loss with collapsed runs: they are shown, never averaged or tested."""
    if summary is None or "collapsed" not in summary.columns:
        return []
    lines = []
    for row in summary.filter(pl.col("collapsed").fill_null(0) > 0).iter_rows(named=True):
        total = row["collapsed"] + row["seeds"]
        lines.append(
            f"{row['model']} + {row['loss']} on {row['dataset']}: {row['collapsed']} of "
            f"{total} runs collapsed (best validation metric not above {POPULARITY}'s, or a "
            "non-finite loss): left out of the mean and the test."
        )
    return lines


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _label(metric: str) -> str:
    return (
        metric.upper()
        if metric == "mrr"
        else metric.replace("ndcg", "NDCG").replace("hr", "HR").replace("recall", "Recall")
    )


def _mean_std(mean: float | None, std: float | None, separator: str) -> str:
    if mean is None:
        return "—"
    return f"{mean:.4f}" if std is None else f"{mean:.4f}{separator}{std:.4f}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f}%"


def _p_value(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1e}" if value < 1e-3 else f"{value:.3f}"


def _number(value: object, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


def print_unsqueezed(console: Console, table: Table) -> None:
    """Print at the table's natural width: rich would squeeze numbers into ellipses on a
    narrow (or non-terminal, 80-column) console; a wide line wraps instead, digits intact."""
    width = Measurement.get(console, console.options.update_width(1000), table).maximum
    if width <= console.width or console.quiet:
        console.print(table)
        return
    wide = Console(
        file=console.file,
        width=width,
        force_terminal=console.is_terminal,
        color_system=console.color_system,  # type: ignore[arg-type]
        highlight=False,
    )
    wide.print(table)
