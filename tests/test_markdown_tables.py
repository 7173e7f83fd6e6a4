"""`--markdown` tables, and the results page's tables in exactly their format.

The tables of docs/results.md that come from saved runs are the ones `lossbench reproduce
--markdown` and `lossbench report --markdown` write. Here both are regenerated from small
saved runs, and every docs table with a generated header must have the same alignment row
and cells of the same form, column by column.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.compare.report.render import SUMMARY_FILE
from lossbench.compare.report.summary import SummaryOptions
from lossbench.errors import LossbenchError
from lossbench.reproduce.report import render_reproduction
from reproduce_fixture import save_fake_comparison, save_fake_table2

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"
Table = tuple[list[str], list[str], list[list[str]]]  # header, alignment, rows

NUMBER = r"\d\.\d{4}"
PERCENT = r"[+-]\d+\.\d%"
P_VALUE = r"(\d\.\de-\d\d|\d\.\d{3})"
CHANGE = rf"\({PERCENT}(, p = {P_VALUE})?\)"
CELL_FORMS = {  # column header -> the form of its cells
    "model": r"[\w-]+",
    "loss": r"[\w-]+( [\w-]+)*( \((original|base|floor)\))?",
    "seeds": r"\d+( \(\+\d+ collapsed\))?|not run yet|—",
    "metric": rf"{NUMBER}( ± {NUMBER})?|—",
    "study": rf"{NUMBER}|not published",
    "vs study": rf"{PERCENT}|—",
    "change": rf"({PERCENT}( [▲▼])?)|—|\({PERCENT}\)",  # (in parentheses): the pop floor's
    "loss %": r"\d+%|—",
    "tokens / s": r"[\d,]+k?|—",
    "p": rf"{P_VALUE}|—",
    "direction": rf"—|(original )?not run yet|(yes|opposite) [▲▼]( {CHANGE})?|no( {CHANGE})?"
    rf"|not published; here ([▲▼]|n\.s\.) {CHANGE}",
    "number": r"\d+(\.\d+)?|—",
}


def column_form(header: str) -> str:
    if header in CELL_FORMS:
        return CELL_FORMS[header]
    if header.startswith("study's direction"):
        return CELL_FORMS["direction"]
    if header.startswith("Δ "):
        return CELL_FORMS["change"]
    if re.fullmatch(r"(HR|NDCG|Recall)@\d+|MRR", header):
        return CELL_FORMS["metric"]
    return CELL_FORMS["number"]  # s / epoch, best epoch, peak MB


def tables_in(text: str) -> list[Table]:
    tables: list[Table] = []
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if (
            line.startswith("| ")
            and lines[i + 1].startswith("| ---")
            and (i == 0 or not lines[i - 1].startswith("|"))
        ):
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("| "):
                    break
                rows.append(cells(row))
            tables.append((cells(line), cells(lines[i + 1]), rows))
    return tables


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split(" | ")]


def check_form(table: Table) -> None:
    headers, _, rows = table
    for row in rows:
        assert len(row) == len(headers), row
        for header, cell in zip(headers, row, strict=True):
            assert re.fullmatch(column_form(header), cell), f"{header}: {cell!r}"


@pytest.fixture
def generated(tmp_path: Path) -> dict[str, Table]:
    """A reproduction table and a comparison table, as `--markdown` writes them."""
    options = SummaryOptions(n_permutations=199)
    reproduction_md = tmp_path / "reproduction.md"
    out = save_fake_table2(tmp_path / "table2")
    render_reproduction(out, options, Console(file=io.StringIO()), markdown_file=reproduction_md)
    comparison_md = tmp_path / "comparison.md"
    saved = save_fake_comparison(tmp_path / "compare")
    arguments = ["report", str(saved), "--permutations", "199", "--markdown", str(comparison_md)]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert comparison_md.read_text() == (saved / SUMMARY_FILE).read_text()
    (reproduction,) = tables_in(reproduction_md.read_text())
    (comparison,) = tables_in(comparison_md.read_text())
    return {"reproduction": reproduction, "comparison": comparison}


def test_generated_tables_have_the_forms_the_docs_are_checked_against(
    generated: dict[str, Table],
) -> None:
    for table in generated.values():
        check_form(table)
    headers, alignment, rows = generated["reproduction"]
    assert headers[:5] == ["model", "loss", "seeds", "HR@10", "study"]
    assert rows[4][:6] == ["sasrec", "bce (original)", "2", "0.0200 ± 0.0000", "0.0404", "-50.5%"]


def test_results_page_tables_are_in_the_generated_format(generated: dict[str, Table]) -> None:
    documented = tables_in(RESULTS.read_text())
    matched = {"reproduction": 0, "comparison": 0}
    for table in documented:
        for kind, (headers, alignment, _) in generated.items():
            if table[0] == headers:
                assert table[1] == alignment, f"alignment of the {kind} table {headers}"
                check_form(table)
                matched[kind] += 1
    assert matched["reproduction"] >= 3 and matched["comparison"] >= 1, matched


def test_compare_writes_its_table_as_markdown(tmp_path: Path) -> None:
    """A tiny comparison: `--markdown` holds the text of summary.md, written whole."""
    table = tmp_path / "docs" / "table.md"  # its folder is created
    arguments = ["compare", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    arguments += ["--losses", "bce,improved", "--seeds", "0", "--max-epochs", "1"]
    arguments += ["--hidden-size", "8", "--num-layers", "1", "--num-heads", "1", "--max-len", "10"]
    result = CliRunner().invoke(app, [*arguments, "--permutations", "99", "--markdown", str(table)])
    assert result.exit_code == 0, result.output
    assert table.read_text() == (tmp_path / "out" / SUMMARY_FILE).read_text()
    (comparison,) = tables_in(table.read_text())
    check_form(comparison)
    assert [row[0] for row in comparison[2]] == ["bce (base)", "improved", "pop (floor)"]
    assert not list(table.parent.glob(".*.tmp"))  # no temporary file left beside it


def test_a_markdown_file_that_cannot_be_written_is_refused_first(tmp_path: Path) -> None:
    saved = save_fake_comparison(tmp_path / "compare")
    (tmp_path / "plain").write_text("a file")
    for target, words in (
        (tmp_path, f"--markdown {tmp_path} is a folder"),
        (tmp_path / "plain" / "t.md", f"--markdown {tmp_path / 'plain'} is a file, not a folder"),
    ):
        result = CliRunner().invoke(app, ["report", str(saved), "--markdown", str(target)])
        assert isinstance(result.exception, LossbenchError), result.output
        assert words in str(result.exception)
    arguments = ["reproduce", "table2", "--dataset", "lastfm", "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(app, [*arguments, "--markdown", str(tmp_path)])
    assert isinstance(result.exception, LossbenchError) and "is a folder" in str(result.exception)
    assert not (tmp_path / "r").exists()  # refused before anything was planned or trained
