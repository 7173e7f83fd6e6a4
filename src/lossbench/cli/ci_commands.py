"""`lossbench checksums`: the sha256 of each dataset's source files (a CI cache key)."""

from __future__ import annotations

from typing import Annotated

import typer

from lossbench.cli.app import GlobalOptions, app


@app.command()
def checksums(
    names: Annotated[list[str], typer.Argument(help="Dataset names (see `lossbench datasets`).")],
) -> None:
    """Print `SHA256  NAME/raw/FILE` per source file, as sha256sum does (generated datasets
    have none): key a CI cache of the data folder on it, or check it with `sha256sum -c`."""
    from lossbench.data.download import source_sha256
    from lossbench.data.registry import get_dataset

    entries = [get_dataset(name) for name in names]
    for entry in entries:
        for file_name, sha256 in source_sha256(GlobalOptions.data_dir, entry).items():
            typer.echo(f"{sha256}  {entry.name}/raw/{file_name}")
