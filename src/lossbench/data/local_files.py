"""A user's own file of interactions (csv, tsv or parquet) -> the readers' long table.

The file stays where it is; its registry entry pins its size and sha256, and preparing
refuses a file that changed since, so that no result mixes two versions of the data.
Columns are named in the entry (`[NAME.columns]`); ids may be strings or integers. Times
must be numeric: integers are kept, fractional numbers are scaled by a million and rounded
(kept to a millionth of their unit, spacing intact for a temporal split), parquet dates and
datetimes become epoch milliseconds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl

from lossbench.data.registry import DatasetEntry
from lossbench.errors import LossbenchError

SEPARATORS = {"csv": ",", "tsv": "\t"}
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet"}
HASH_CHUNK = 1 << 20
MICRO = 1_000_000  # fractional times are kept to a millionth of their unit


def format_of(path: Path, given: str | None = None) -> str:
    """csv / tsv / parquet: `given`, else from the file's suffix."""
    if given is not None:
        if given not in (*SEPARATORS, "parquet"):
            raise LossbenchError(f"unknown file format {given!r}; use csv, tsv or parquet")
        return given
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise LossbenchError(
            f"{path.name}: cannot tell the format from the suffix {suffix or '(none)'}; "
            "pass --format csv, tsv or parquet"
        )
    return SUFFIXES[suffix]


def hash_file(path: Path) -> tuple[int, str]:
    """(size in bytes, sha256) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as stream:
        while block := stream.read(HASH_CHUNK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def unreadable(path: Path, error: OSError) -> LossbenchError:
    reason = "is a folder" if path.is_dir() else error.strerror or str(error)
    return LossbenchError(f"{path} cannot be read ({reason}); give a readable file")


def local_sources(entry: DatasetEntry) -> dict[str, dict[str, str]]:
    """The entry's file as preparation records it, refusing a file changed since it was
    registered (its content would no longer be what the entry names)."""
    assert entry.local_file is not None
    path = Path(entry.local_file.path)
    fix = f"`lossbench add-dataset {entry.name} --file {path} --force`"
    try:
        size, sha256 = hash_file(path)
    except OSError as error:
        raise LossbenchError(
            f"dataset {entry.name}: its file {path} cannot be read ({error.strerror}); "
            f"restore it, or register the new location with `lossbench add-dataset "
            f"{entry.name} --file NEW --force`"
        ) from None
    if sha256 != entry.local_file.sha256:
        raise LossbenchError(
            f"dataset {entry.name}: {path} changed since it was registered "
            f"({entry.local_file.size:,} bytes, sha256 {entry.local_file.sha256[:12]} then; "
            f"{size:,} bytes, sha256 {sha256[:12]} now); restore that version, or register "
            f"this one with {fix} (it is then prepared anew)"
        )
    return {"sha256": {path.name: sha256}}


def read_local_interactions(entry: DatasetEntry) -> pl.DataFrame:
    """`user`, `item` (Int64 or String), `timestamp` (Int64), `rating` (Float64 or null)."""
    assert entry.local_file is not None
    path = Path(entry.local_file.path)
    columns = entry.columns
    wanted = [columns.user, columns.item, columns.time]
    wanted += [columns.rating] if columns.rating is not None else []
    frame = _read_columns(path, entry.format, wanted)
    rating = (
        _ratings(path, frame[columns.rating])
        if columns.rating is not None
        else pl.Series("rating", [None] * frame.height, dtype=pl.Float64)
    )
    return pl.DataFrame(
        [
            _ids(path, frame[columns.user]).alias("user"),
            _ids(path, frame[columns.item]).alias("item"),
            _times(path, frame[columns.time]).alias("timestamp"),
            rating.alias("rating"),
        ]
    )


def _read_columns(path: Path, file_format: str, wanted: list[str]) -> pl.DataFrame:
    """The `wanted` columns (csv / tsv: as text); a missing one lists those found."""
    try:
        if file_format == "parquet":
            found = list(pl.read_parquet_schema(path))
        else:
            found = _csv(path, file_format, n_rows=0).columns
        missing = [name for name in dict.fromkeys(wanted) if name not in found]
        if missing:
            raise LossbenchError(
                f"{path.name} has no column {', '.join(repr(m) for m in missing)} (columns "
                f"found: {', '.join(found) or 'none'}); name them with --user-col, --item-col, "
                "--time-col (and --rating-col)"
            )
        if file_format == "parquet":
            return pl.read_parquet(path, columns=list(dict.fromkeys(wanted)))
        return _csv(path, file_format, columns=list(dict.fromkeys(wanted)))
    except OSError as error:
        raise unreadable(path, error) from None
    except pl.exceptions.PolarsError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LossbenchError(
            f"{path} cannot be read as {file_format} ({first}); check the file and --format"
        ) from None


def _csv(path: Path, file_format: str, **options: object) -> pl.DataFrame:
    return pl.read_csv(
        path,
        separator=SEPARATORS[file_format],
        infer_schema=False,  # every column as text: ids keep leading zeros, types checked here
        encoding="utf8-lossy",
        **options,  # type: ignore[arg-type]
    )


def _first_bad(path: Path, column: pl.Series, bad: pl.Series, expected: str) -> None:
    """One line naming the first offending row (line numbers count the header as line 1)."""
    rows = bad.arg_true()
    if len(rows):
        row = int(rows[0])
        value = column[row]
        shown = "nothing" if value is None or value == "" else repr(value)
        raise LossbenchError(
            f"{path.name} line {row + 2}: column {column.name!r} holds {shown}, "
            f"{expected}; fix the file"
        )


def _ids(path: Path, column: pl.Series) -> pl.Series:
    if column.dtype.is_integer():
        values = column.cast(pl.Int64)
        _first_bad(path, values, values.is_null(), "not an id")
        return values
    text = column.cast(pl.String).str.strip_chars()
    _first_bad(path, column, text.is_null() | (text == ""), "not an id")
    return text


def _times(path: Path, column: pl.Series) -> pl.Series:
    if column.dtype in (pl.Date, pl.Datetime) or isinstance(column.dtype, pl.Datetime):
        times = column.cast(pl.Datetime("ms")).dt.epoch("ms")
        _first_bad(path, column, times.is_null(), "not a time")
        return times
    text = column.cast(pl.String).str.strip_chars()
    numbers = text.cast(pl.Float64, strict=False)
    numeric = "not a number: give times as numbers, such as unix seconds"
    _first_bad(path, column, numbers.is_null() | numbers.is_nan() | numbers.is_infinite(), numeric)
    whole = text.cast(pl.Int64, strict=False)
    if whole.null_count() == 0:
        return whole
    largest = float(numbers.abs().max() or 0.0)  # type: ignore[arg-type]
    if (numbers == numbers.floor()).all() and largest < 2**53:
        return numbers.cast(pl.Int64)  # "978300760.0"
    if largest * MICRO >= 2**62:
        raise LossbenchError(
            f"{path.name}: column {column.name!r} holds fractional times up to {largest:g}, "
            "too large to keep to a millionth; give integer times"
        )
    return (numbers * MICRO).round().cast(pl.Int64)


def _ratings(path: Path, column: pl.Series) -> pl.Series:
    text = column.cast(pl.String).str.strip_chars()
    numbers = text.cast(pl.Float64, strict=False)
    given = text.is_not_null() & (text != "")
    _first_bad(path, column, given & numbers.is_null(), "not a number")
    return numbers
