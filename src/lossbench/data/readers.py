"""One reader per raw format, each returning the same long table.

Columns: `user` and `item` (Int64 when every id is numeric, else String), `timestamp` (Int64;
a position where the format has no time), `rating` (Float64, null where the format has none),
and `organic` (Boolean) for the formats that flag organic events (Yambda). Rows keep the file's
order, which later breaks timestamp ties. A malformed row raises
`LossbenchError` naming the file and its 1-based line number.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl

from lossbench.errors import LossbenchError

COLUMNS = ("user", "item", "timestamp", "rating")
ORGANIC = "organic"  # Yambda's `is_organic`: the user chose the track, no recommender did
NO_ORGANIC_FLAG = (
    "--organic-only needs a file with an organic flag (the Yambda formats); "
    "this dataset has none: drop --organic-only"
)
# Python-literal dicts (steam): a quoted string may use either quote and backslash escapes.
_QUOTED = r"""(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")"""
STEAM_CHUNK_BYTES = 64 << 20


def _malformed(path: Path, line_no: int, line: str, expected: str) -> LossbenchError:
    return LossbenchError(
        f"{path} line {line_no}: malformed row {line[:80]!r} (expected {expected}); "
        "fix the file or run `lossbench download NAME --force`"
    )


def _numeric_if_possible(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """Cast an id column to Int64 when every value is an integer (ids then sort numerically)."""
    as_int = frame[column].cast(pl.Int64, strict=False)
    return frame.with_columns(as_int) if as_int.null_count() == 0 else frame


def _finish(frame: pl.DataFrame) -> pl.DataFrame:
    for column in ("user", "item"):
        frame = _numeric_if_possible(frame, column)
    flags = [pl.col(ORGANIC).cast(pl.Boolean)] if ORGANIC in frame.columns else []
    return frame.select(
        "user",
        "item",
        pl.col("timestamp").cast(pl.Int64),
        pl.col("rating").cast(pl.Float64),
        *flags,
    )


def _lines(path: Path) -> pl.DataFrame:
    """(line_no, line) of every non-blank line; Python split keeps exact line numbers."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    frame = pl.DataFrame({"line": text.split("\n")}).with_row_index("line_no", offset=1)
    return frame.with_columns(pl.col("line").str.strip_chars()).filter(pl.col("line") != "")


def _tokens(path: Path, separator: str | None = None) -> pl.DataFrame:
    """Lines split on `separator` (default: runs of whitespace)."""
    line = pl.col("line")
    split = (
        line.str.split(separator) if separator else line.str.replace_all(r"\s+", " ").str.split(" ")
    )
    return _lines(path).with_columns(split.alias("tokens"))


def _first_bad(path: Path, rows: pl.DataFrame, bad: pl.Expr, expected: str) -> None:
    offenders = rows.filter(bad)
    if offenders.height:
        raise _malformed(path, int(offenders["line_no"][0]), str(offenders["line"][0]), expected)


def read_s3rec(path: Path) -> pl.DataFrame:
    """`user item item ...` per line; the timestamp is the position in the line."""
    expected = "'user item item ...'"
    rows = _tokens(path)
    _first_bad(path, rows, pl.col("tokens").list.len() < 2, expected)
    long = rows.select(
        "line_no",
        "line",
        user=pl.col("tokens").list.first(),
        item=pl.col("tokens").list.slice(1),
        timestamp=pl.int_ranges(0, pl.col("tokens").list.len() - 1),
    ).explode("item", "timestamp")
    return _finish(long.with_columns(rating=pl.lit(None, pl.Float64)))


def read_bert4rec(path: Path) -> pl.DataFrame:
    """`user item` per line, chronological; the timestamp is the line number."""
    rows = _tokens(path)
    _first_bad(path, rows, pl.col("tokens").list.len() != 2, "'user item'")
    return _finish(
        rows.select(
            user=pl.col("tokens").list.get(0),
            item=pl.col("tokens").list.get(1),
            timestamp=pl.col("line_no"),
            rating=pl.lit(None, pl.Float64),
        )
    )


def read_movielens_dat(path: Path) -> pl.DataFrame:
    """`UserID::MovieID::Rating::Timestamp` (ml-1m)."""
    expected = "'UserID::MovieID::Rating::Timestamp'"
    rows = _tokens(path, "::")
    _first_bad(path, rows, pl.col("tokens").list.len() != 4, expected)
    typed = rows.with_columns(
        user=pl.col("tokens").list.get(0),
        item=pl.col("tokens").list.get(1),
        rating=pl.col("tokens").list.get(2).cast(pl.Float64, strict=False),
        timestamp=pl.col("tokens").list.get(3).cast(pl.Int64, strict=False),
    )
    _first_bad(path, typed, pl.any_horizontal(pl.col("rating", "timestamp").is_null()), expected)
    return _finish(typed)


def _delimited(
    path: Path, separator: str, has_header: bool, id_type: type[pl.DataType], expected: str
) -> pl.DataFrame:
    """Fast typed polars read; on any failure a Python scan finds the first bad line."""
    schema: dict[str, pl.DataType | type[pl.DataType]] = {
        "user": id_type,
        "item": id_type,
        "rating": pl.Float64,
        "timestamp": pl.Int64,
    }
    try:
        frame = pl.read_csv(
            path,
            has_header=has_header,
            separator=separator,
            new_columns=list(schema),
            schema_overrides=list(schema.values()),
            quote_char='"',
        )
        if frame.null_count().sum_horizontal().item() == 0:
            return _finish(frame)
    except (pl.exceptions.PolarsError, OSError):
        pass
    _scan_for_bad_line(path, separator, has_header, id_type is pl.Int64, expected)
    raise LossbenchError(f"{path} cannot be parsed as {expected}; re-download it with --force")


def _scan_for_bad_line(
    path: Path, separator: str, has_header: bool, int_ids: bool, expected: str
) -> None:
    id_parser: Callable[[str], object] = int if int_ids else str
    parsers: tuple[Callable[[str], object], ...] = (id_parser, id_parser, float, int)
    with path.open(newline="", errors="replace") as stream:
        for line_no, row in enumerate(csv.reader(stream, delimiter=separator), start=1):
            if line_no == 1 and has_header:
                continue
            try:
                if len(row) != 4 or any(value == "" for value in row):
                    raise ValueError
                for parse, value in zip(parsers, row, strict=True):
                    parse(value)
            except ValueError:
                raise _malformed(path, line_no, separator.join(row), expected) from None


def read_movielens_csv(path: Path) -> pl.DataFrame:
    """`userId,movieId,rating,timestamp` with a header (ml-20m, ml-latest-small)."""
    return _delimited(path, ",", True, pl.Int64, "'userId,movieId,rating,timestamp'")


def read_movielens_tsv(path: Path) -> pl.DataFrame:
    """ml-100k `u.data`: `user<TAB>item<TAB>rating<TAB>timestamp`, no header."""
    return _delimited(path, "\t", False, pl.Int64, "'user<TAB>item<TAB>rating<TAB>timestamp'")


def read_amazon_csv(path: Path) -> pl.DataFrame:
    """Amazon 2014 ratings: `user,item,rating,timestamp`, no header, string ids."""
    return _delimited(path, ",", False, pl.String, "'user,item,rating,timestamp'")


def read_amazon23_csv(path: Path) -> pl.DataFrame:
    """Amazon Reviews 2023 benchmark files: `user_id,parent_asin,rating,timestamp` with a
    header, string ids, times in milliseconds."""
    return _delimited(path, ",", True, pl.String, "'user_id,parent_asin,rating,timestamp'")


# Yambda's flat layout: one row per event; `timestamp` counts 5-second steps from the log start.
YAMBDA_COLUMNS = {"uid": "user", "item_id": "item", "timestamp": "timestamp", "is_organic": ORGANIC}


def read_yambda_parquet(path: Path) -> pl.DataFrame:
    """Yambda `flat/<size>/listens.parquet`: `uid`, `item_id`, `timestamp`, `is_organic`
    (and columns lossbench does not read); only those four columns are loaded."""
    try:
        schema = pl.read_parquet_schema(path)
    except (pl.exceptions.PolarsError, OSError) as error:
        raise LossbenchError(
            f"{path} is not a parquet file ({error}); re-download it with --force"
        ) from None
    if missing := [column for column in YAMBDA_COLUMNS if column not in schema]:
        raise LossbenchError(
            f"{path} lacks the Yambda column(s) {', '.join(missing)} (it has "
            f"{', '.join(schema)}); re-download it with --force"
        )
    frame = pl.read_parquet(path, columns=list(YAMBDA_COLUMNS)).rename(YAMBDA_COLUMNS)
    if frame.null_count().sum_horizontal().item():
        raise LossbenchError(f"{path} has empty values; re-download it with --force")
    return _finish(frame.with_columns(rating=pl.lit(None, pl.Float64)))


def _line_chunks(path: Path) -> Iterator[list[str]]:
    """Lists of lines, about STEAM_CHUNK_BYTES each, from a plain or gzip file."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        while block := stream.read(STEAM_CHUNK_BYTES):
            block += stream.readline()  # finish the last line of the block
            yield block.decode("utf-8", errors="replace").splitlines()


def read_steam(path: Path) -> pl.DataFrame:
    """SASRec's steam reviews: one Python-literal dict per line; vectorized regex extraction."""
    expected = "a dict with 'username' or 'user_id', 'product_id' and 'date'"
    frames, offset = [], 1
    try:
        for lines in _line_chunks(path):
            rows = pl.DataFrame({"line": lines}).with_row_index("line_no", offset=offset)
            offset += len(lines)
            rows = rows.filter(pl.col("line").str.strip_chars() != "")
            line = pl.col("line")
            typed = rows.with_columns(
                user=pl.coalesce(
                    line.str.extract(r"'username': " + _QUOTED, 1),
                    line.str.extract(r"'username': " + _QUOTED, 2),
                    line.str.extract(r"'user_id': " + _QUOTED, 1),
                ),
                item=line.str.extract(r"'product_id': '(\d+)'", 1),
                timestamp=line.str.extract(r"'date': '(\d{4}-\d{2}-\d{2})'", 1)
                .str.to_date("%Y-%m-%d", strict=False)
                .cast(pl.Datetime("ms"))
                .dt.epoch("s"),
                rating=pl.lit(None, pl.Float64),
            )
            bad = pl.any_horizontal(pl.col("user", "item", "timestamp").is_null())
            _first_bad(path, typed, bad, expected)
            frames.append(typed.select(COLUMNS))
    except (OSError, EOFError) as error:
        raise LossbenchError(
            f"{path} cannot be read ({error}); run `lossbench download steam --force`"
        ) from None
    if not frames:
        return _finish(pl.DataFrame(schema=dict.fromkeys(COLUMNS, pl.String)))
    return _finish(pl.concat(frames))


READERS: dict[str, Callable[[Path], pl.DataFrame]] = {
    "movielens-dat": read_movielens_dat,
    "movielens-csv": read_movielens_csv,
    "movielens-tsv": read_movielens_tsv,
    "s3rec": read_s3rec,
    "bert4rec": read_bert4rec,
    "steam": read_steam,
    "amazon-csv": read_amazon_csv,
    "amazon23-csv": read_amazon23_csv,
    "yambda-parquet": read_yambda_parquet,
}


def read_interactions(path: Path, format: str) -> pl.DataFrame:
    try:
        return READERS[format](path)
    except OSError as error:
        raise LossbenchError(f"{path} cannot be read ({error.strerror}); re-download it") from None


def read_item_attributes(path: Path) -> pl.DataFrame:
    """S3Rec `item2attributes.json` ({"item": [attribute, ...]}) -> long `item`, `attribute`."""
    try:
        mapping = json.loads(path.read_bytes())
        if not isinstance(mapping, dict):
            raise ValueError("the top level is not an object")
        long = pl.DataFrame(
            {"item": list(mapping), "attribute": list(mapping.values())},
            schema={"item": pl.String, "attribute": pl.List(pl.Int64)},
        ).explode("attribute")
    except (OSError, ValueError, TypeError, pl.exceptions.PolarsError) as error:
        raise LossbenchError(
            f"{path} is not an item -> attribute-list JSON object ({error}); re-download it"
        ) from None
    return _numeric_if_possible(long.drop_nulls(), "item")
