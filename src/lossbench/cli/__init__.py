"""Command-line interface. Commands are thin: collect options, call one plain function.

Each `*_commands.py` module registers its commands on `app`. Typer itself reports usage errors
(exit 2); `LossbenchGroup` turns Ctrl-C into exit 130; `main` is the only place that turns a
`LossbenchError` into a one-line message and exit 2.

Exit codes: 0 done, 1 a check failed (`verify`), 2 a usage or domain error, 130 interrupted.
"""

from __future__ import annotations

import os
import signal
import sys

from rich.markup import escape

from lossbench.cli.app import EXIT_INTERRUPTED, INTERRUPTED, app, console_err
from lossbench.cli.pipes import guard_standard_streams
from lossbench.errors import LossbenchError

# Importing the command modules registers their commands on `app`.
from lossbench.cli import check_commands, compare_commands, data_commands  # noqa: E402,F401  isort: skip
from lossbench.cli import pretrain_commands, train_commands, user_data_commands  # noqa: E402,F401  isort: skip
from lossbench.cli import tune_commands  # noqa: E402,F401  isort: skip
from lossbench.cli import ci_commands  # noqa: E402,F401  isort: skip
from lossbench.cli import reproduce_commands  # noqa: E402,F401  isort: skip

EXIT_ERROR = 2


def main() -> None:
    guard_standard_streams()  # `lossbench compare | head -1` finishes the comparison silently
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A rank of a data-parallel run: torch's C++ collectives would print a stack of frames
        # above lossbench's one-line message when a rendezvous or a peer fails.
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
        # torchrun stops the other ranks with SIGTERM when one dies: end like Ctrl-C (one
        # line, exit 130), so the rerun resumes from the last checkpoint.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        app(prog_name="lossbench")  # standalone: always ends in SystemExit
    except LossbenchError as error:
        # escape: a message may name TOML tables such as [tune.space], which are not markup
        console_err.print(
            f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True
        )
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:  # before a command started (the group handles it inside one)
        console_err.print(f"[yellow]{INTERRUPTED}[/]", highlight=False)
        sys.exit(EXIT_INTERRUPTED)


__all__ = ["app", "main"]
