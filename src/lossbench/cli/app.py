"""The Typer application, the shared consoles and the global options.

Only typer, rich and small lossbench modules are imported here and at the top of the command
modules: `lossbench --help` and usage errors answer without loading torch, polars or matplotlib.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from lossbench import __version__
from lossbench.cli.groups import Command, option_groups
from lossbench.errors import LossbenchError
from lossbench.paths import USER_REGISTRY_ENV, USER_REGISTRY_FILE, UserRegistry, default_data_dir
from lossbench.training.progress import progress_seconds

console = Console()
console_err = Console(stderr=True)

INTERRUPTED = "interrupted; run the same command again to resume"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


class LossbenchGroup(TyperGroup):
    """Runs the chosen command, turning Ctrl-C into one line and exit 130 and any operating
    system error that escapes a command into a `LossbenchError` naming the path."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, logq_words(args))

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            console_err.print(f"[yellow]{INTERRUPTED}[/]", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except OSError as error:
            if error.errno == errno.EPIPE:
                raise  # `lossbench datasets | head`: the framework exits quietly
            raise LossbenchError(describe_os_error(error)) from None


def logq_words(args: list[str]) -> list[str]:
    """`--logq` takes an optional word: the bare flag means `--logq standard` (as before the
    corrected variant existed) and `--no-logq` means `--logq none`."""
    words = ("standard", "corrected", "none")
    out: list[str] = []
    for at, arg in enumerate(args):
        if arg == "--no-logq":
            out.append("--logq=none")
        elif arg == "--logq" and (at + 1 == len(args) or args[at + 1] not in words):
            out.append("--logq=standard")
        else:
            out.append(arg)
    return out


def display(json_output: bool) -> Console:
    """Where a command shows its tables and lines: standard output, or standard error when
    `--json` puts its document alone on standard output."""
    return console_err if json_output else console


def announce(line: str) -> None:
    """A line about work done on the way (preparing a dataset), on standard error: standard
    output may be a `--json` document."""
    console_err.print(line, highlight=False, soft_wrap=True)


def describe_os_error(error: OSError) -> str:
    """'PATH: problem' (and the second path of a rename), in the words of the system."""
    problem = (error.strerror or str(error)).lower()
    paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
    if not paths:
        return f"operating-system error: {problem}; check free space and permissions"
    return f"{' -> '.join(paths)}: {problem}; check the path and its permissions"


app = typer.Typer(
    name="lossbench",
    cls=LossbenchGroup,
    help="Benchmark the training losses of sequential recommenders.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def command(name: str | None = None) -> Callable[[Command], Command]:
    """Registers a command on `app`, its option groups expanded (`lossbench.cli.groups`)."""

    def register(function: Command) -> Command:
        return app.command(name)(option_groups(function))

    return register


def current_data_dir(context: typer.Context) -> Path:
    """The data directory of the command being run: its `--data-dir`, else the one given
    before the command, else `$LOSSBENCH_DATA_DIR` or the per-user cache folder. It lives in
    the command line's context and travels in each request from there."""
    given = context.find_root().obj
    return given if isinstance(given, Path) else default_data_dir()


def _set_data_dir(context: typer.Context, value: Path | None) -> None:
    if value is not None:
        context.find_root().obj = value


def _print_version(value: bool) -> None:
    if value:
        console.print(f"lossbench {__version__}", highlight=False)
        raise typer.Exit()


DATA_DIR_HELP = "Where datasets are downloaded and prepared."

# The same option on the commands that read datasets, so it may follow the command's name;
# its callback sets the context's data directory (`current_data_dir`) while the command's arguments
# are parsed.
DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help=DATA_DIR_HELP + " Also accepted before the command.",
        show_default="per-user cache folder",
        callback=_set_data_dir,
        expose_value=False,
    ),
]


def refuse_ranks_outside_train(command: str | None) -> None:
    """Under torchrun (several ranks in the environment) only `train` runs: it trains one run
    data-parallel; the other commands would repeat their whole work in every rank."""
    if command in (None, "train") or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    raise LossbenchError(
        f"`lossbench {command}` does not run under torchrun: torchrun trains one run over "
        "several processes with `lossbench train`; to train each run of a comparison over "
        "several processes use `compare --executor ray --workers-per-run N`"
    )


@app.callback()
def global_options(
    context: typer.Context,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            envvar="LOSSBENCH_DATA_DIR",
            help=DATA_DIR_HELP,
            show_default="per-user cache folder",
        ),
    ] = None,
    registry: Annotated[
        Path | None,
        typer.Option(
            "--registry",
            envvar=USER_REGISTRY_ENV,
            help="Registry of your own datasets (`lossbench add-dataset` writes it; "
            "a team can share one).",
            show_default=f"{USER_REGISTRY_FILE} in the data dir",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    refuse_ranks_outside_train(context.invoked_subcommand)
    progress_seconds()  # a bad $LOSSBENCH_PROGRESS_SECONDS stops here, before any work
    context.obj = data_dir if data_dir is not None else default_data_dir()
    UserRegistry.path = registry
