"""The Typer application, the shared consoles and the global options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lossbench.data.registry import USER_REGISTRY_ENV, USER_REGISTRY_FILE, UserRegistry
from lossbench.paths import default_data_dir

console = Console()
console_err = Console(stderr=True)

app = typer.Typer(
    name="lossbench",
    help="Benchmark the training losses of sequential recommenders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class GlobalOptions:
    """Options given before the command (`lossbench --data-dir D download lastfm`)."""

    data_dir: Path = default_data_dir()


@app.callback()
def global_options(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            envvar="LOSSBENCH_DATA_DIR",
            help="Where datasets are downloaded and prepared.",
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
) -> None:
    GlobalOptions.data_dir = data_dir if data_dir is not None else default_data_dir()
    UserRegistry.path, UserRegistry.data_dir = registry, GlobalOptions.data_dir
