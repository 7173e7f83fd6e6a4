"""`lossbench check-loss`: the loss contract (`lossbench.losses.contract`) on any loss."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from lossbench.cli import options as opt
from lossbench.cli.app import command, console_err, display
from lossbench.cli.outputs import print_json

if TYPE_CHECKING:
    from lossbench.losses.contract import CheckResult


@command("check-loss")
def check_loss_command(
    name: Annotated[
        str,
        typer.Argument(
            help="A loss: a built-in or installed name, package.module:name or ./file.py:name."
        ),
    ],
    negatives: Annotated[
        int | None,
        typer.Option(
            min=0, help="Negatives per position fed to the loss (default: the loss's own)."
        ),
    ] = None,
    gbce_t: Annotated[
        float, typer.Option("--gbce-t", help="LossParams.gbce_t given to the loss.")
    ] = 0.75,
    json_output: opt.JsonOutput = False,
) -> None:
    """Check a loss against the contract every built-in loss meets (exit 1 if it fails)."""
    from lossbench.losses import find_loss
    from lossbench.losses.base import LossParams
    from lossbench.losses.contract import check_loss

    found = find_loss(name)
    results = check_loss(found.value, LossParams(gbce_t=gbce_t), negatives)
    if not show_contract(name, found.source.describe(), results, json_output):
        raise SystemExit(1)


def show_contract(name: str, source: str, results: list[CheckResult], json_output: bool) -> bool:
    """The checks as a table and each failure as a line; with `--json`, the document. Whether
    the loss meets the contract."""
    table = Table(title=f"loss contract: {name} ({source})")
    for column in ("check", "result", "detail"):
        table.add_column(column)
    mark = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[dim]not run[/]"}
    for result in results:
        table.add_row(result.name, mark[result.passed], result.detail)
    shown = display(json_output)
    shown.print(table)
    failed = [result for result in results if result.passed is False]
    for result in failed:
        console_err.print(f"FAIL {result.name}: {result.detail}", highlight=False, soft_wrap=True)
    if not failed:
        shown.print(f"{name} meets the loss contract", highlight=False)
    if json_output:
        checks = [{"check": r.name, "passed": r.passed, "detail": r.detail} for r in results]
        print_json({"loss": name, "from": source, "passed": not failed, "checks": checks})
    return not failed
