"""A reproduction's report: each cell's lossbench numbers beside the study's.

Per cell and metric: lossbench's test mean ± std over seeds, the published value and the
relative difference (lossbench - study) / study. Per non-original cell: the study's
direction (the sign of its published value minus its model's original loss's, on the
significance metric) and whether lossbench's paired test finds the same significant change.
A cell whose mean lies further from a published value than the tolerance is named in one
line below the table (`ReproductionReport.far`), so a caller can fail on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lossbench.compare.report.render import write_text
from lossbench.compare.report.summary import BETTER, WORSE, SummaryOptions
from lossbench.compare.report.tables import (  # the comparison table's cell formats, shared
    _label,
    _md_row,
    _mean_std,
    _p_value,
    _percent,
    print_unsqueezed,
)
from lossbench.errors import LossbenchError
from lossbench.reproduce import DEFAULT_TOLERANCE
from lossbench.reproduce.plan import load_reproduction_record
from lossbench.reproduce.published import published_datasets, published_for, published_value
from lossbench.reproduce.tables import TABLES, pretrain_epochs

REPRODUCTION_MD = "reproduction.md"
NOT_PUBLISHED = "not published"


@dataclass(frozen=True)
class CellResult:
    """One cell of the reproduction table on one dataset."""

    dataset: str
    model: str
    label: str  # the comparison row's loss label
    original: bool  # the model's original loss (the baseline of its other cells)
    seeds: int  # finished runs (0: not run yet)
    means: dict[str, float | None]
    stds: dict[str, float | None]
    published: dict[str, float | None]
    direction: str  # the study's direction here, as the table shows it

    def difference(self, metric: str) -> float | None:
        """(lossbench - study) / study in percent, when both exist."""
        mean, study = self.means.get(metric), self.published.get(metric)
        if mean is None or not study:
            return None
        return 100.0 * (mean - study) / study


@dataclass(frozen=True)
class ReproductionReport:
    table: str
    results: list[CellResult]
    far: list[str]  # one line per cell beyond the tolerance
    notes: list[str]  # what differs from the study's setting; datasets without numbers


def cell_results(
    record: dict[str, Any], summary: pl.DataFrame, options: SummaryOptions
) -> list[CellResult]:
    """The reproduction's cells (from `reproduction.json`) joined with the summary's rows."""
    table, sig = record["table"], options.significance_metric
    rows = {(r["dataset"], r["model"], r["loss"]): r for r in summary.iter_rows(named=True)}
    cells = {(c["dataset"], c["model"], c["label"]): c for c in record["rows"]}
    metrics = list(dict.fromkeys([*options.metrics, sig]))

    def study(cell: dict[str, Any], metric: str) -> float | None:
        return published_value(
            table, cell["dataset"], cell["model"], cell["loss"], metric, cell["negatives"]
        )

    results: list[CellResult] = []
    for key, cell in cells.items():
        row = rows.get(key)
        original = cell["label"] == cell["baseline"]
        base_key = (cell["dataset"], cell["model"], cell["baseline"])
        base = cells[base_key]
        if original:
            direction = "—"
        elif base_key not in rows:  # nothing to pair with (the summary would pick another)
            direction = "original not run yet"
        else:
            direction = _direction(row, sig, study(cell, sig), study(base, sig))
        results.append(
            CellResult(
                dataset=cell["dataset"],
                model=cell["model"],
                label=cell["label"],
                original=original,
                seeds=int(row["seeds"]) if row else 0,
                means={name: row[f"{name}_mean"] if row else None for name in metrics},
                stds={name: row[f"{name}_std"] if row else None for name in metrics},
                published={name: study(cell, name) for name in metrics},
                direction=direction,
            )
        )
    return results


def _direction(
    row: dict[str, Any] | None, metric: str, study: float | None, study_base: float | None
) -> str:
    """'yes ▲ (+70.1%, p = 1.0e-04)', 'no (+15.5%, p = 0.120)', 'opposite ▼ (...)'; without a
    published pair, lossbench's own result: 'not published; here ▲ (...)'."""
    if row is None:
        return "not run yet"
    detail = f"({_percent(row[f'{metric}_change'])}, p = {_p_value(row['p_holm'])})"
    if study is None or study_base is None:
        return f"{NOT_PUBLISHED}; here {row['mark'] or 'n.s.'} {detail}"
    expected = BETTER if study > study_base else WORSE if study < study_base else ""
    if not expected:
        return f"study: equal {detail}"
    if not row["mark"]:
        return f"no {detail}"
    return f"{'yes' if row['mark'] == expected else 'opposite'} {row['mark']} {detail}"


def far_lines(results: list[CellResult], metrics: list[str], tolerance: float) -> list[str]:
    """One line per cell with a metric beyond `tolerance` of its published value."""
    lines = []
    for result in results:
        far = [
            f"{_label(name)} {_mean_std(result.means[name], None, '')} against "
            f"{result.published[name]:.4f} ({_percent(difference)})"
            for name in metrics
            if (difference := result.difference(name)) is not None
            and abs(difference) > 100 * tolerance
            and result.published[name] is not None
        ]
        if far:
            lines.append(
                f"{result.dataset} {result.model} + {result.label}: far from the study "
                f"(beyond ±{100 * tolerance:g}%): {'; '.join(far)}"
            )
    return lines


def setting_notes(record: dict[str, Any]) -> list[str]:
    """What the runs did differently from the study, and datasets the study has no numbers for."""
    table = TABLES[record["table"]]
    notes = []
    given = record.get("given") or {}
    if given:
        text = ", ".join(f"{name} {value}" for name, value in sorted(given.items()))
        notes.append(f"Settings over the {table.preset} preset: {text}.")
    for step in record.get("pretraining", []):
        study = pretrain_epochs(step["dataset"])
        if step["epochs"] != study:
            notes.append(
                f"{step['model']} on {step['dataset']} was pre-trained for "
                f"{_epochs(step['epochs'])}; the study pre-trained for {_epochs(study)}."
            )
    for dataset in record["datasets"]:
        if not published_for(table.name, dataset):
            known = ", ".join(published_datasets(table.name))
            notes.append(
                f"The study published no {table.name} numbers for {dataset} (it did for {known})."
            )
    return notes


def cells_table(
    results: list[CellResult], options: SummaryOptions
) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows of one dataset's reproduction table."""
    headers = ["model", "loss", "seeds"]
    for name in options.metrics:
        headers += [_label(name), "study", "vs study"]
    headers.append(f"study's direction ({_label(options.significance_metric)})")
    rows = []
    for result in results:
        cells = [result.model, f"{result.label} (original)" if result.original else result.label]
        cells.append(str(result.seeds) if result.seeds else "not run yet")
        for name in options.metrics:
            study = result.published[name]
            cells += [
                _mean_std(result.means[name], result.stds[name], " ± "),
                NOT_PUBLISHED if study is None else f"{study:.4f}",
                _percent(result.difference(name)),
            ]
        cells.append(result.direction)
        rows.append(cells)
    return headers, rows


def legend(table: str, results: list[CellResult], options: SummaryOptions, tolerance: float) -> str:
    sources = sorted(
        {row.source for row in published_for(table) if row.dataset in {r.dataset for r in results}}
    )
    metric = _label(options.significance_metric)
    return (
        "Values are lossbench's test mean ± std over seeds; study: the published value; "
        "vs study: (lossbench - study) / study. The study's direction: the sign of a cell's "
        f"published {metric} minus its model's original loss's; yes: lossbench's paired "
        "sign-flip permutation test over (user, seed) pairs finds that change significant "
        f"(Holm-corrected, alpha = {options.alpha:g}), no: not significant, opposite: "
        f"significant the other way. Cells beyond ±{100 * tolerance:g}% of the study are "
        f"named below. Published numbers: {'; '.join(sources) or 'none'}."
    )


def build_report(
    record: dict[str, Any], summary: pl.DataFrame, options: SummaryOptions, tolerance: float
) -> ReproductionReport:
    results = cell_results(record, summary, options)
    return ReproductionReport(
        table=record["table"],
        results=results,
        far=far_lines(results, options.metrics, tolerance),
        notes=setting_notes(record),
    )


def rich_tables(
    report: ReproductionReport, options: SummaryOptions, tolerance: float
) -> list[Table]:
    """One table per dataset: right-aligned numbers, green where the study's direction holds."""
    tables = []
    for dataset in dict.fromkeys(result.dataset for result in report.results):
        part = [result for result in report.results if result.dataset == dataset]
        headers, rows = cells_table(part, options)
        table = Table(
            title=f"{TABLES[report.table].title}, on {dataset}",
            caption=legend(report.table, part, options, tolerance),
            box=box.SIMPLE_HEAD,
            collapse_padding=True,
        )
        for i, header in enumerate(headers):
            table.add_column(header, justify="right" if 2 <= i < len(headers) - 1 else "left")
        for cells in rows:
            verdict = cells[-1]
            style = (
                "green" if verdict.startswith("yes") else "red" if "opposite" in verdict else None
            )
            table.add_row(*cells, style=style)
        tables.append(table)
    return tables


def markdown(report: ReproductionReport, options: SummaryOptions, tolerance: float) -> str:
    """Ready-to-paste markdown: one section and table per dataset, then the notes."""
    title = TABLES[report.table].title
    sections = [f"# {title}", ""]
    for dataset in dict.fromkeys(result.dataset for result in report.results):
        part = [result for result in report.results if result.dataset == dataset]
        headers, rows = cells_table(part, options)
        align = ["---" if i < 2 or i == len(headers) - 1 else "---:" for i in range(len(headers))]
        sections += [f"## {dataset}", "", _md_row(headers), _md_row(align)]
        sections += [_md_row(cells) for cells in rows]
        sections += ["", legend(report.table, part, options, tolerance), ""]
    sections += [f"- {line}" for line in [*report.notes, *report.far]]
    return "\n".join(sections).rstrip("\n") + "\n"


def render_reproduction(
    out_dir: Path,
    options: SummaryOptions,
    console: Console | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    markdown_file: Path | None = None,
) -> ReproductionReport:
    """The reproduction table of DIR's finished runs, with the comparison's own files."""
    from lossbench.compare.report.render import load_comparison, write_report_files

    console = console or Console(quiet=True)
    record = load_reproduction_record(out_dir)
    if record is None:
        raise LossbenchError(
            f"{out_dir} holds no reproduction; run `lossbench reproduce TABLE --out {out_dir}`"
        )
    comparison = load_comparison(out_dir, options)
    if comparison.warning is not None:
        console.print(f"[yellow]{escape(comparison.warning)}[/]", highlight=False)
    report = build_report(record, comparison.summary, options, tolerance)
    for table in rich_tables(report, options, tolerance):
        print_unsqueezed(console, table)
    for line in report.notes:  # one line each, however narrow the terminal (soft wrap)
        console.print(escape(line), highlight=False, soft_wrap=True)
    for line in report.far:
        console.print(f"[yellow]{escape(line)}[/]", highlight=False, soft_wrap=True)
    write_report_files(comparison, out_dir, options, console)
    text = markdown(report, options, tolerance)
    write_text(out_dir / REPRODUCTION_MD, text)
    if markdown_file is not None:
        write_text(markdown_file, text)
        console.print(f"wrote the reproduction table as markdown to {markdown_file}")
    return report


def reproduction_document(report: ReproductionReport, failed_runs: int) -> dict[str, Any]:
    """`reproduce --json`: every cell beside the study's number, as the table shows it."""
    cells = [
        {
            "dataset": cell.dataset,
            "model": cell.model,
            "loss": cell.label,
            "original": cell.original,
            "seeds": cell.seeds,
            "metrics": {
                name: {
                    "mean": cell.means[name],
                    "std": cell.stds[name],
                    "study": cell.published.get(name),
                    "difference_percent": cell.difference(name),
                }
                for name in cell.means
            },
            "direction": cell.direction,
        }
        for cell in report.results
    ]
    return {
        "table": report.table,
        "cells": cells,
        "far": report.far,
        "notes": report.notes,
        "failed_runs": failed_runs,
    }


def _epochs(count: int) -> str:
    return f"{count} epoch{'s' if count != 1 else ''}"
