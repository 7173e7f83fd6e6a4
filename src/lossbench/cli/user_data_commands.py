"""`lossbench add-dataset`: a local interactions file as a dataset, by name from then on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lossbench.cli import ci_options as ci
from lossbench.cli.app import DataDir, app, console, console_err, current_data_dir
from lossbench.cli.outputs import print_json

FILE = "File"
PROTOCOL = "Protocol"


@app.command("add-dataset")
def add_dataset_command(
    context: typer.Context,
    name: Annotated[str, typer.Argument(help="Name to use with --dataset from now on.")],
    file: Annotated[
        Path,
        typer.Option("--file", help="Interactions: .csv, .tsv or .parquet.", rich_help_panel=FILE),
    ],
    user_col: Annotated[
        str, typer.Option(help="Column of user ids.", rich_help_panel=FILE)
    ] = "user",
    item_col: Annotated[
        str, typer.Option(help="Column of item ids.", rich_help_panel=FILE)
    ] = "item",
    time_col: Annotated[
        str,
        typer.Option(help="Column of numeric times (orders each history).", rich_help_panel=FILE),
    ] = "timestamp",
    rating_col: Annotated[
        str | None, typer.Option(help="Column of ratings (for --min-rating).", rich_help_panel=FILE)
    ] = None,
    file_format: Annotated[
        str | None,
        typer.Option(
            "--format", help="csv, tsv or parquet (default: from the suffix).", rich_help_panel=FILE
        ),
    ] = None,
    min_rating: Annotated[
        float | None, typer.Option(help="Keep ratings >= this.", rich_help_panel=PROTOCOL)
    ] = None,
    user_core: Annotated[
        int,
        typer.Option(
            min=0, help="Users keep >= this many items (0: off).", rich_help_panel=PROTOCOL
        ),
    ] = 0,
    item_core: Annotated[
        int,
        typer.Option(
            min=0, help="Items keep >= this many users (0: off).", rich_help_panel=PROTOCOL
        ),
    ] = 0,
    dedup: Annotated[
        bool,
        typer.Option(
            "--dedup/--no-dedup", help="Keep the first (user, item) only.", rich_help_panel=PROTOCOL
        ),
    ] = True,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an entry of the same name.")
    ] = False,
    json_output: ci.JsonOutput = False,
    data_dir: DataDir = None,
) -> None:
    """Register your own interactions file, check and prepare it; then use --dataset NAME."""
    from lossbench.cli.data_commands import summary_table
    from lossbench.data.registry import Columns, Protocol
    from lossbench.data.user_registry import add_dataset

    columns = Columns(user=user_col, item=item_col, time=time_col, rating=rating_col)
    protocol = Protocol(
        min_rating=min_rating,
        user_core=user_core,
        item_core=item_core,
        dedup=dedup,
    )
    added = add_dataset(
        current_data_dir(context),
        name,
        file,
        columns=columns,
        protocol=protocol,
        file_format=file_format,
        force=force,
    )
    display = console_err if json_output else console
    display.print(summary_table([added.prepared]))
    verb = "replaced" if added.replaced else "registered"
    local = added.entry.local_file
    assert local is not None  # add_dataset registers a local file
    display.print(
        f"{verb} {name} in {added.registry} ({local.size:,} bytes, sha256 "
        f"{local.sha256[:12]}); use it with --dataset {name}",
        highlight=False,
    )
    if json_output:  # the registered file, and the prepared folder's meta.json
        recorded = {"path": local.path, "size": local.size, "sha256": local.sha256}
        document = {"name": name, "registry": str(added.registry), "replaced": added.replaced}
        print_json({**document, "file": recorded, "meta": added.prepared.meta})
