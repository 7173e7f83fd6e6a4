"""Reading a large interactions file in bounded blocks, into compact columns.

The in-memory readers (`readers.py`) hold every column of the file at once (ids as Int64 or
strings, ratings as Float64, plus copies while casting). Here a text file with integer ids
(MovieLens) is read `LOSSBENCH_STREAM_BYTES` at a time (default 16 MiB) and the other formats
(string ids, Yambda's parquet) on polars' streaming engine in batches of about that size: the
organic and rating filters run per block, ratings are never kept, and what remains is one
Int32 key per user and item (1..n in the order of the original ids, as `preprocess.id_keys`
numbers them) and the Int64 time: 16 bytes a kept row. `clean_columns` then orders,
de-duplicates and k-cores those columns in numpy, one column copied at a time, with the same
rules as `preprocess.clean`, so both paths prepare identical files.

Formats: the delimited ones (MovieLens csv / tsv, Amazon 2014 and 2023 csv) and Yambda's
parquet; `preprocess` uses this path for them and the in-memory readers for the rest.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from lossbench.data.cleaning import MIN_SEQUENCE, id_keys, nothing_left
from lossbench.data.readers import NO_ORGANIC_FLAG, ORGANIC, YAMBDA_COLUMNS, read_interactions
from lossbench.data.registry import Protocol
from lossbench.errors import LossbenchError

BLOCK_ENV = "LOSSBENCH_STREAM_BYTES"
DEFAULT_BLOCK = 16 << 20
ROW_BYTES = 32  # about a text row of MovieLens: turns the block into a row count for polars


@dataclass(frozen=True)
class Delimited:
    """A headed or headless four-column text file: user, item, rating, timestamp."""

    separator: str
    has_header: bool
    id_type: type[pl.DataType]


STREAMED: dict[str, Delimited | None] = {
    "movielens-csv": Delimited(",", True, pl.Int64),
    "movielens-tsv": Delimited("\t", False, pl.Int64),
    "amazon-csv": Delimited(",", False, pl.String),
    "amazon23-csv": Delimited(",", True, pl.String),
    "yambda-parquet": None,  # parquet: columns by name
}


@dataclass
class CompactInteractions:
    """A file's kept rows in file order: keys 1..n of `user_originals` / `item_originals`.
    `clean_columns` takes the frame over (and empties it), so its memory is freed early."""

    frame: pl.DataFrame  # user, item (Int32 keys), timestamp (Int64)
    user_originals: pl.Series  # (n_users,) String: original id of key k at k - 1
    item_originals: pl.Series  # (n_items,) String
    raw_rows: int  # rows of the file before any filter


def block_bytes() -> int:
    """Bytes read and parsed at a time: `LOSSBENCH_STREAM_BYTES`, default 16 MiB."""
    value = os.environ.get(BLOCK_ENV, "")
    if not value:
        return DEFAULT_BLOCK
    if not value.isdigit() or int(value) < 1:
        raise LossbenchError(f"{BLOCK_ENV}={value!r} is not a positive byte count; unset it")
    return int(value)


def scan(path: Path, format: str) -> pl.LazyFrame:
    """The file as a lazy frame with columns user, item, timestamp, rating (and organic)."""
    spec = STREAMED[format]
    if spec is None:
        columns = pl.scan_parquet(path).select(list(YAMBDA_COLUMNS)).rename(YAMBDA_COLUMNS)
        return columns.with_columns(
            pl.col("user", "item", "timestamp").cast(pl.Int64),
            pl.col(ORGANIC).cast(pl.Boolean),
            rating=pl.lit(None, pl.Float64),
        )
    return pl.scan_csv(
        path,
        has_header=spec.has_header,
        separator=spec.separator,
        new_columns=["user", "item", "rating", "timestamp"],
        schema_overrides=[spec.id_type, spec.id_type, pl.Float64, pl.Int64],
        quote_char='"',
    )


def read_compact(path: Path, format: str, protocol: Protocol) -> CompactInteractions:
    """The kept rows of `path` as keys and times (see the module docstring); a malformed file
    is reported by the in-memory reader, which names the first bad line."""
    if protocol.organic_only and STREAMED[format] is not None:
        raise LossbenchError(NO_ORGANIC_FLAG)
    block = block_bytes()
    pl.Config.set_streaming_chunk_size(max(1, block // ROW_BYTES))
    spec = STREAMED[format]
    try:
        if spec is not None and spec.id_type == pl.Int64:
            return _read_integer_blocks(path, spec, protocol, block)
        return _read_compact(path, format, protocol)
    except (pl.exceptions.PolarsError, OSError):
        read_interactions(path, format)  # raises the one-line message naming the bad line
        raise LossbenchError(f"{path} cannot be read as {format}; re-download it") from None


def _read_compact(path: Path, format: str, protocol: Protocol) -> CompactInteractions:
    """Two scans on the streaming engine: the distinct ids, then the kept rows as keys."""
    lazy = scan(path, format)
    raw_rows, user_ids, item_ids = pl.collect_all(
        [
            lazy.select(pl.len()),
            lazy.select(pl.col("user").unique()),
            lazy.select(pl.col("item").unique()),
        ],
        engine="streaming",
    )
    if user_ids["user"].null_count() or item_ids["item"].null_count():
        raise pl.exceptions.ComputeError("empty id")
    user_table, user_originals = key_table(user_ids["user"])
    item_table, item_originals = key_table(item_ids["item"])
    kept = lazy
    if protocol.organic_only:
        kept = kept.filter(pl.col(ORGANIC))
    if protocol.min_rating is not None:
        rating = pl.col("rating")
        kept = kept.filter(rating.is_null() | (rating >= protocol.min_rating))
    frame = kept.select(
        user=_keys(pl.col("user"), user_table),
        item=_keys(pl.col("item"), item_table),
        timestamp="timestamp",
    ).collect(engine="streaming")
    if frame["timestamp"].null_count():
        raise pl.exceptions.ComputeError("empty timestamp")
    return CompactInteractions(frame, user_originals, item_originals, int(raw_rows.item()))


def _read_integer_blocks(
    path: Path, spec: Delimited, protocol: Protocol, block: int
) -> CompactInteractions:
    """One pass over a text file with integer ids, `block` bytes at a time (no mapping of the
    whole file): keep the rows the rating filter keeps as Int32 ids and Int64 times, and the
    distinct ids of every row; key the ids at the end (16 bytes a kept row in all)."""
    parts: dict[str, list[np.ndarray]] = {"user": [], "item": [], "timestamp": []}
    distinct: dict[str, list[np.ndarray]] = {"user": [], "item": []}
    raw_rows = 0
    for frame in _text_blocks(path, spec, block):
        if frame.null_count().sum_horizontal().item():
            raise pl.exceptions.ComputeError("empty value")
        raw_rows += frame.height
        for name in distinct:
            distinct[name].append(frame[name].unique().to_numpy())
        if protocol.min_rating is not None:
            frame = frame.filter(pl.col("rating") >= protocol.min_rating)
        for name in ("user", "item"):
            ids = frame[name]
            if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= 1 << 31):  # type: ignore[arg-type]
                raise pl.exceptions.ComputeError("ids beyond Int32")
            parts[name].append(ids.cast(pl.Int32).to_numpy())
        parts["timestamp"].append(frame["timestamp"].to_numpy())
    columns, originals = {}, {}
    for name in ("user", "item"):
        ids = pl.Series(name, np.unique(np.concatenate(distinct[name] or [np.empty(0, np.int64)])))
        table, originals[name] = key_table(ids)
        lookup = np.zeros(int(ids.max()) + 1 if len(ids) else 1, dtype=np.int32)  # type: ignore[arg-type]
        lookup[table["id"].to_numpy()] = table["key"].to_numpy()
        columns[name] = _concatenate(parts[name], np.int32)
        np.take(lookup, columns[name], out=columns[name])  # (N,) int32 ids -> keys, in place
    columns["timestamp"] = _concatenate(parts["timestamp"], np.int64)
    frame = pl.DataFrame(columns)
    return CompactInteractions(frame, originals["user"], originals["item"], raw_rows)


def _concatenate(parts: list[np.ndarray], dtype: type[np.generic]) -> np.ndarray:
    """The blocks as one array, each block freed once copied."""
    whole = np.empty(sum(len(part) for part in parts), dtype=dtype)
    start = 0
    while parts:
        part = parts.pop(0)
        whole[start : start + len(part)] = part
        start += len(part)
    return whole


def _text_blocks(path: Path, spec: Delimited, block: int) -> Iterator[pl.DataFrame]:
    """The file as typed frames (user, item Int64; rating Float64; timestamp Int64) of about
    `block` bytes each, cut at line ends."""
    with path.open("rb") as stream:
        if spec.has_header:
            stream.readline()
        while chunk := stream.read(block):
            chunk += stream.readline()  # finish the block's last line
            yield pl.read_csv(
                io.BytesIO(chunk),
                has_header=False,
                separator=spec.separator,
                new_columns=["user", "item", "rating", "timestamp"],
                schema_overrides=[pl.Int64, pl.Int64, pl.Float64, pl.Int64],
                quote_char='"',
            )


def _keys(ids: pl.Expr, table: pl.DataFrame) -> pl.Expr:
    """Each id's Int32 key, row by row (the file order is kept): integer ids that fit an array
    index through a lookup array, others through a hash map of the distinct ids."""
    distinct = table["id"]
    if distinct.dtype.is_integer() and 0 <= int(distinct.min()) and int(distinct.max()) < 1 << 26:  # type: ignore[arg-type]
        lookup = np.zeros(int(distinct.max()) + 1, dtype=np.int32)  # type: ignore[arg-type]
        lookup[distinct.to_numpy()] = table["key"].to_numpy()
        return ids.cast(pl.Int32).map_batches(
            lambda batch: pl.Series(lookup[batch.to_numpy()]), return_dtype=pl.Int32
        )
    return ids.replace_strict(distinct, table["key"])


def key_table(distinct: pl.Series) -> tuple[pl.DataFrame, pl.Series]:
    """(original id -> Int32 key, original id of key k at k - 1): keys follow the numeric
    order of the ids when every id is an integer (as the in-memory reader casts them), else
    their string order, exactly as `cleaning.id_keys` numbers them."""
    values = distinct
    if values.dtype == pl.String:
        as_int = values.cast(pl.Int64, strict=False)
        if as_int.null_count() == 0:
            values = as_int  # the in-memory reader's `_numeric_if_possible`
    keys, originals = id_keys(values)
    table = pl.DataFrame({"id": distinct, "key": keys.cast(pl.Int32)})
    return table, originals


def is_streamed(format: str) -> bool:
    """Whether `format` is read here (else only by the in-memory reader)."""
    return format in STREAMED


def clean_columns(
    compact: CompactInteractions, protocol: Protocol
) -> tuple[pl.DataFrame, dict[str, int]]:
    """`preprocess.clean` on compact columns, step by step in numpy so that at most one
    column is copied at a time (the frame is emptied as it is read): the same rows in the same
    order, the same report. The scan already applied the organic and rating filters."""
    columns = {name: compact.frame[name].to_numpy() for name in ("user", "item", "timestamp")}
    compact.frame = compact.frame.clear()  # (N, 3) -> the numpy columns only
    report = {"after_rating_filter": len(columns["user"])}
    _chronological(columns)
    if protocol.dedup and len(columns["user"]):
        _keep(columns, _first_of_each_pair(columns["user"], columns["item"]))
    report["after_dedup"] = len(columns["user"])
    _k_core(columns, protocol.user_core, protocol.item_core)
    report["after_k_core"] = len(columns["user"])
    lengths = np.bincount(columns["user"])
    report["users_too_short"] = int(((lengths > 0) & (lengths < MIN_SEQUENCE)).sum())
    if report["users_too_short"]:
        _k_core(columns, max(protocol.user_core, MIN_SEQUENCE), protocol.item_core)
    report["interactions"] = len(columns["user"])
    if not report["interactions"]:
        raise nothing_left()
    return pl.DataFrame(columns), report


def _chronological(columns: dict[str, np.ndarray]) -> None:
    """Stable sort by (user, timestamp): the file order breaks ties (see `preprocess`)."""
    user, time = columns["user"], columns["timestamp"]
    low, high = (int(time.min()), int(time.max())) if len(time) else (0, 0)
    if high - low < 1 << 31:  # one int64 key: user keys are < 2**31
        key = (user.astype(np.int64) << 31) | (time - low)  # (N,)
        order = _stable_order(key)
        del key
    else:
        order = np.lexsort((time, user)).astype(np.int64)  # lexsort is stable
    for name in columns:
        columns[name] = columns[name][order]


def _stable_order(key: np.ndarray) -> np.ndarray:
    """Row order sorting `key`, ties in row order (polars' parallel sort, kept stable)."""
    rows = pl.DataFrame({"key": key}).with_row_index("row")
    return rows.sort("key", maintain_order=True)["row"].to_numpy()


def _first_of_each_pair(user: np.ndarray, item: np.ndarray) -> np.ndarray:
    """(N,) bool: the row is the first (in the current order) of its (user, item) pair."""
    pair = user.astype(np.int64) * (int(item.max()) + 1) + item  # (N,)
    order = _stable_order(pair)
    ordered = pair[order]
    del pair
    first = np.empty(len(ordered), dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    keep = np.zeros(len(ordered), dtype=bool)
    keep[order[first]] = True
    return keep


def _k_core(columns: dict[str, np.ndarray], user_core: int, item_core: int) -> None:
    """Iterative k-core on the columns, as `preprocess.k_core` does it."""
    cores = [(name, core) for name, core in (("user", user_core), ("item", item_core)) if core > 1]
    while cores and len(columns["user"]):
        keep = np.ones(len(columns["user"]), dtype=bool)
        for name, core in cores:
            ids = columns[name]
            keep &= (np.bincount(ids) >= core)[ids]
        if keep.all():
            return
        _keep(columns, keep)


def _keep(columns: dict[str, np.ndarray], keep: np.ndarray) -> None:
    for name in columns:
        columns[name] = columns[name][keep]
