"""`lossbench checksums`: the sha256 of each dataset's source files (a CI cache key)."""

from __future__ import annotations

from typing import Annotated

import typer

from lossbench.cli import options as opt
from lossbench.cli.app import command, current_data_dir
from lossbench.cli.outputs import print_json


@command()
def checksums(
    context: typer.Context,
    names: Annotated[list[str], typer.Argument(help="Dataset names (see `lossbench datasets`).")],
    json_output: opt.JsonOutput = False,
) -> None:
    """Print `SHA256  NAME/raw/FILE` per source file, as sha256sum does (generated datasets
    have none): key a CI cache of the data folder on it, or check it with `sha256sum -c`."""
    from lossbench.data.download import source_sha256
    from lossbench.data.registry import get_dataset

    entries = [get_dataset(name, data_dir=current_data_dir(context)) for name in names]
    files = [
        {"dataset": entry.name, "file": f"{entry.name}/raw/{file_name}", "sha256": sha256}
        for entry in entries
        for file_name, sha256 in source_sha256(current_data_dir(context), entry).items()
    ]
    for file in files:  # with --json, on standard error: the document alone on output
        typer.echo(f"{file['sha256']}  {file['file']}", err=json_output)
    if json_output:
        print_json({"files": files})
