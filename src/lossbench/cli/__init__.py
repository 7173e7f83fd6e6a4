"""Command-line interface. Commands are thin: collect options, call one plain function.

Each `*_commands.py` module registers its commands on `app`; `main` is the only place that
turns a `LossbenchError` into a one-line message and a non-zero exit code.
"""

from __future__ import annotations

import sys

from rich.markup import escape

from lossbench.cli.app import app, console_err
from lossbench.errors import LossbenchError

# Importing the command modules registers their commands on `app`.
from lossbench.cli import check_commands, compare_commands, data_commands  # noqa: E402,F401  isort: skip
from lossbench.cli import pretrain_commands, train_commands, user_data_commands  # noqa: E402,F401  isort: skip
from lossbench.cli import tune_commands  # noqa: E402,F401  isort: skip
from lossbench.cli import ci_commands  # noqa: E402,F401  isort: skip


def main() -> None:
    try:
        code = app(standalone_mode=False)  # a command's `typer.Exit(code)` comes back here
    except LossbenchError as error:
        # escape: a message may name TOML tables such as [tune.space], which are not markup
        console_err.print(
            f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True
        )
        sys.exit(2)
    except KeyboardInterrupt:
        console_err.print("[yellow]interrupted[/]")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as error:  # click's usage errors arrive here in non-standalone mode
        if _is_abort(error):
            sys.exit(130)
        if _is_usage_error(error):
            error.show()  # type: ignore[attr-defined]
            sys.exit(error.exit_code)  # type: ignore[attr-defined]
        raise
    if isinstance(code, int) and code != 0:
        sys.exit(code)  # e.g. 1: an expectation of `compare` failed


def _is_abort(error: Exception) -> bool:
    import click
    import typer

    return isinstance(error, (click.exceptions.Abort, typer.Abort))


def _is_usage_error(error: Exception) -> bool:
    """click's ClickException, or the same class from the copy of click that typer >= 0.20
    vendors (`typer._click`): without this, `--threads 0` or `--bogus` end in a traceback."""
    import click

    if isinstance(error, click.ClickException):
        return True
    vendored = type(error).__module__.startswith("typer.")
    return (
        vendored and hasattr(error, "show") and isinstance(getattr(error, "exit_code", None), int)
    )


__all__ = ["app", "main"]
