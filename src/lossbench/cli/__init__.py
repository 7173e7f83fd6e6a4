"""Command-line interface. Commands are thin: collect options, call one plain function.

Each `*_commands.py` module registers its commands on `app`; `main` is the only place that
turns a `LossbenchError` into a one-line message and a non-zero exit code.
"""

from __future__ import annotations

import sys

from lossbench.cli.app import app, console_err
from lossbench.errors import LossbenchError

# Importing the command modules registers their commands on `app`.
from lossbench.cli import compare_commands, data_commands, pretrain_commands, train_commands  # noqa: E402,F401  isort: skip


def main() -> None:
    try:
        app(standalone_mode=False)
    except LossbenchError as error:
        console_err.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console_err.print("[yellow]interrupted[/]")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as error:  # click's usage errors arrive here in non-standalone mode
        import click

        if isinstance(error, click.exceptions.Abort):
            sys.exit(130)
        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise


__all__ = ["app", "main"]
