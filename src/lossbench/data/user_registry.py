"""`lossbench add-dataset`: register a user's own interactions file, then prepare it.

The entry goes into the user registry (`registry.user_registry_path`), a TOML file with the
schema of `datasets.toml`, pinning the file's size and sha256. The file is read, filtered and
split before anything is written, so a bad file leaves no entry and no prepared folder.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lossbench.atomic import atomic_path
from lossbench.data.local_files import format_of, hash_file, unreadable
from lossbench.data.prepared import prepared_dir
from lossbench.data.preprocess import PrepareResult, preprocess_dataset
from lossbench.data.registry import (
    Columns,
    DatasetEntry,
    LocalFile,
    Protocol,
    load_registry_file,
    registry_path,
    user_registry_path,
)
from lossbench.errors import LossbenchError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
HEADER = (
    "# lossbench user datasets (schema of datasets.toml), written by `lossbench add-dataset`.\n"
    "# Each entry pins its file's size and sha256: a changed file is refused until registered\n"
    "# again with `lossbench add-dataset NAME --file PATH --force`.\n"
)


@dataclass(frozen=True)
class AddedDataset:
    entry: DatasetEntry
    registry: Path  # the user registry file written
    prepared: PrepareResult
    replaced: bool  # True: an entry of that name was replaced (--force)


def add_dataset(
    data_dir: Path,
    name: str,
    file: Path,
    *,
    columns: Columns,
    protocol: Protocol,
    file_format: str | None = None,
    force: bool = False,
) -> AddedDataset:
    """Validate, prepare and register `file` as dataset `name` (see the module docstring)."""
    registry_file = user_registry_path(data_dir)
    assert registry_file is not None
    existing = _check_new_name(name, registry_file, force)
    if protocol.min_rating is not None and columns.rating is None:
        raise LossbenchError("--min-rating needs --rating-col, the column of ratings to filter")
    path = file.expanduser().resolve()
    file_format = format_of(path, file_format)
    try:
        size, sha256 = hash_file(path)
    except OSError as error:
        raise unreadable(path, error) from None
    entry = DatasetEntry(
        name=name,
        source=f"local file {path.name}",
        format=file_format,
        local_file=LocalFile(path=str(path), size=size, sha256=sha256),
        columns=columns,
        protocol=protocol,
    )
    folder = prepared_dir(data_dir, name).parent
    existed = folder.exists()
    # Reads, filters and splits the file (any bad input fails here), then writes atomically.
    prepared = preprocess_dataset(data_dir, name, registry={name: entry}, force=True)
    try:
        write_registry(registry_file, {**existing, name: entry_table(entry)})
    except BaseException:
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return AddedDataset(entry, registry_file, prepared, name in existing)


def _check_new_name(name: str, registry_file: Path, force: bool) -> dict[str, Any]:
    """The user registry's current tables, once `name` is known to be free (or `force`)."""
    if not NAME.match(name):
        raise LossbenchError(
            f"dataset name {name!r} must start with a letter or digit and hold only letters, "
            "digits, '-' and '_'"
        )
    if name in load_registry_file(registry_path()):
        raise LossbenchError(f"{name!r} is a built-in dataset; choose another name")
    existing = read_tables(registry_file)
    if name in existing and not force:
        raise LossbenchError(
            f"dataset {name!r} is already registered in {registry_file}; pass --force to replace it"
        )
    return existing


def read_tables(registry_file: Path) -> dict[str, Any]:
    """The user registry's tables as written (validated first), {} when there is none."""
    if not registry_file.is_file():
        return {}
    load_registry_file(registry_file)  # a broken registry fails before it is rewritten
    return dict(tomllib.loads(registry_file.read_text()))


def entry_table(entry: DatasetEntry) -> dict[str, Any]:
    """The entry as its registry table: every field but the name, none left out as null."""
    return entry.model_dump(mode="json", exclude={"name"}, exclude_none=True)


def write_registry(path: Path, tables: Mapping[str, Mapping[str, Any]]) -> None:
    """Write the registry atomically; the text must read back as exactly `tables`."""
    text = toml_text(tables)
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise LossbenchError(f"cannot write {path}: a value is not expressible ({error})") from None
    if parsed != tables:
        raise LossbenchError(f"cannot write {path}: the registry does not read back as written")
    try:
        with atomic_path(path) as temporary:
            temporary.write_text(text)
    except OSError as error:
        raise LossbenchError(
            f"cannot write {path} ({error.strerror}); pass --data-dir or --registry a writable "
            "location"
        ) from None


def toml_text(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """TOML for the registry schema: one table per dataset, holding scalars and tables of
    scalars ([NAME], [NAME.local_file], [NAME.protocol], ...)."""
    lines = [HEADER]
    for name, table in tables.items():
        lines.append(f"[{_key(name)}]")
        nested = {key: value for key, value in table.items() if isinstance(value, Mapping)}
        lines += [f"{_key(k)} = {_value(v)}" for k, v in table.items() if k not in nested]
        for key, values in nested.items():
            lines += ["", f"[{_key(name)}.{_key(key)}]"]
            lines += [f"{_key(k)} = {_value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string
    raise LossbenchError(f"the registry holds a value TOML cannot hold here: {value!r}")
