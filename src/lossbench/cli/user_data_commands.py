"""`lossbench add-dataset`: a local interactions file as a dataset, by name from then on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lossbench.cli import options as opt
from lossbench.cli.app import DataDir, command, current_data_dir, display
from lossbench.cli.outputs import print_json

if TYPE_CHECKING:
    from lossbench.data.registry import Columns, Protocol
    from lossbench.data.user_registry import AddedDataset

FILE = "File"
PROTOCOL = "Protocol"

Name = Annotated[str, typer.Argument(help="Name to use with --dataset from now on.")]
File = Annotated[
    Path,
    typer.Option("--file", help="Interactions: .csv, .tsv or .parquet.", rich_help_panel=FILE),
]
UserCol = Annotated[str, typer.Option(help="Column of user ids.", rich_help_panel=FILE)]
ItemCol = Annotated[str, typer.Option(help="Column of item ids.", rich_help_panel=FILE)]
TimeCol = Annotated[
    str,
    typer.Option(help="Column of numeric times (orders each history).", rich_help_panel=FILE),
]
RatingCol = Annotated[
    str | None, typer.Option(help="Column of ratings (for --min-rating).", rich_help_panel=FILE)
]
FileFormat = Annotated[
    str | None,
    typer.Option(
        "--format", help="csv, tsv or parquet (default: from the suffix).", rich_help_panel=FILE
    ),
]
MinRating = Annotated[
    float | None, typer.Option(help="Keep ratings >= this.", rich_help_panel=PROTOCOL)
]
UserCore = Annotated[
    int,
    typer.Option(min=0, help="Users keep >= this many items (0: off).", rich_help_panel=PROTOCOL),
]
ItemCore = Annotated[
    int,
    typer.Option(min=0, help="Items keep >= this many users (0: off).", rich_help_panel=PROTOCOL),
]
Dedup = Annotated[
    bool,
    typer.Option(
        "--dedup/--no-dedup", help="Keep the first (user, item) only.", rich_help_panel=PROTOCOL
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Replace an entry of the same name.")]


@dataclass(frozen=True)
class FileOptions:
    """The interactions file and how to read it (an option group)."""

    file: File
    user_col: UserCol = "user"
    item_col: ItemCol = "item"
    time_col: TimeCol = "timestamp"
    rating_col: RatingCol = None
    file_format: FileFormat = None

    def columns(self) -> Columns:
        from lossbench.data.registry import Columns

        return Columns(
            user=self.user_col, item=self.item_col, time=self.time_col, rating=self.rating_col
        )


@dataclass(frozen=True)
class ProtocolOptions:
    """How the interactions are filtered (an option group)."""

    min_rating: MinRating = None
    user_core: UserCore = 0
    item_core: ItemCore = 0
    dedup: Dedup = True

    def protocol(self) -> Protocol:
        from lossbench.data.registry import Protocol

        return Protocol(**vars(self))


@command("add-dataset")
def add_dataset_command(
    context: typer.Context,
    name: Name,
    *,
    source: FileOptions,
    filtering: ProtocolOptions,
    force: Force = False,
    json_output: opt.JsonOutput = False,
    data_dir: DataDir = None,
) -> None:
    """Register your own interactions file, check and prepare it; then use --dataset NAME."""
    from lossbench.data.user_registry import add_dataset

    added = add_dataset(
        current_data_dir(context),
        name,
        source.file,
        columns=source.columns(),
        protocol=filtering.protocol(),
        file_format=source.file_format,
        force=force,
    )
    show_added(name, added, json_output)


def show_added(name: str, added: AddedDataset, json_output: bool) -> None:
    """The prepared dataset's summary and where it is registered; with `--json`, the
    registered file and the prepared folder's meta.json."""
    from lossbench.cli.data_commands import summary_table

    shown = display(json_output)
    shown.print(summary_table([added.prepared]))
    verb = "replaced" if added.replaced else "registered"
    local = added.entry.local_file
    assert local is not None  # add_dataset registers a local file
    shown.print(
        f"{verb} {name} in {added.registry} ({local.size:,} bytes, sha256 "
        f"{local.sha256[:12]}); use it with --dataset {name}",
        highlight=False,
    )
    if json_output:
        recorded = {"path": local.path, "size": local.size, "sha256": local.sha256}
        document = {"name": name, "registry": str(added.registry), "replaced": added.replaced}
        print_json({**document, "file": recorded, "meta": added.prepared.meta})
