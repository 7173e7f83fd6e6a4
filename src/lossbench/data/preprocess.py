"""Raw interactions -> the prepared format (see `prepared.py`), with polars.

Steps, in order: organic filter (Yambda, on request), rating threshold, chronological order
(stable: file order breaks ties, see `fingerprint.TIE_RULE`), deduplication (first (user, item)
kept), iterative k-core until stable, users with fewer than 3 interactions dropped
(leave-one-out needs train, valid and test), contiguous ids 1..n (numeric order when every
original id is numeric), then the split (`splits.py`: leave-one-out or temporal). Both splits
start from the same cleaned interactions. The delimited and Yambda formats take the same steps
on compact columns read in bounded blocks (`streaming.py`); every prepared dataset records its
fingerprint (`fingerprint.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import ValidationError

from lossbench.atomic import remove_stale_folders, temporary_folder
from lossbench.data import fingerprint as content
from lossbench.data import repeats, synthetic
from lossbench.data.cleaning import MIN_SEQUENCE, dense_rank, id_keys, nothing_left
from lossbench.data.integrity import file_record
from lossbench.data.local_files import local_sources, read_local_interactions
from lossbench.data.prepared import (
    FORMAT_VERSION,
    prepared_dir,
    prepared_from_frames,
    prepared_problems,
    read_meta,
    write_arrays,
)
from lossbench.data.raw_files import (
    attributes_path,
    interactions_path,
    is_downloaded,
    verified_sources,
)
from lossbench.data.readers import (
    NO_ORGANIC_FLAG,
    ORGANIC,
    read_interactions,
    read_item_attributes,
)
from lossbench.data.registry import DatasetEntry, Protocol, Registry, get_dataset
from lossbench.data.splits import LOO, SplitSpec, check_timed, split_interactions
from lossbench.data.streaming import (
    CompactInteractions,
    clean_columns,
    is_streamed,
    read_compact,
)
from lossbench.errors import LossbenchError


@dataclass(frozen=True)
class PreparedTables:
    """The prepared files as polars frames, before (or instead of) writing them."""

    interactions: pl.DataFrame  # user, item (Int32), timestamp (Int64); chronological per user
    users: pl.DataFrame  # user (Int32) -> original_id (String)
    items: pl.DataFrame  # item (Int32) -> original_id (String)
    split: pl.DataFrame  # user, train_items, gap_items (list[Int32]), valid_item, test_item
    item_attributes: pl.DataFrame | None  # item, attributes (list[Int32]); every item 1..n
    n_attributes: int
    report: dict[str, int]  # rows (or users) left after each step


@dataclass(frozen=True)
class PrepareResult:
    name: str
    meta: dict[str, Any]
    skipped: bool  # True when an identical preparation already existed
    path: Path


def k_core(frame: pl.DataFrame, user_core: int, item_core: int) -> pl.DataFrame:
    """Drop users with < user_core rows and items with < item_core rows until nothing changes.

    The k-core is unique, so removing both sides at once converges to the same result.
    """
    conditions = [
        pl.len().over(column) >= core
        for column, core in (("user", user_core), ("item", item_core))
        if core > 1
    ]
    while conditions:
        kept = frame.filter(*conditions)
        if kept.height == frame.height:
            break
        frame = kept
    return frame


def _chronological(frame: pl.DataFrame) -> pl.DataFrame:
    """Sort by (user key, timestamp), stable so that file order breaks timestamp ties."""
    low, high = frame["timestamp"].min(), frame["timestamp"].max()
    if isinstance(low, int) and isinstance(high, int) and high - low < 1 << 31:
        # One int64 key sorts faster than two columns (user keys are < 2**31).
        key = pl.col("user").cast(pl.Int64) * (1 << 31) + (pl.col("timestamp") - low)
        return frame.sort(key, maintain_order=True)
    return frame.sort("user", "timestamp", maintain_order=True)


def _first_of_each_pair(frame: pl.DataFrame) -> pl.DataFrame:
    """Keep the first (chronological) row of every (user, item) pair; order is kept.

    A stable sort by the pair puts repeats side by side: cheaper than hashing two columns.
    """
    n_items = int(frame.select(pl.col("item").max()).item())
    pair = frame["user"].cast(pl.Int64) * (n_items + 1) + frame["item"]  # (N,) int64
    by_pair = pl.DataFrame({"pair": pair}).with_row_index("row").sort("pair", maintain_order=True)
    firsts = by_pair.filter(pl.col("pair").ne_missing(pl.col("pair").shift(1)))["row"]
    keep = np.zeros(frame.height, dtype=bool)
    keep[firsts.to_numpy()] = True
    return frame.filter(pl.Series(keep))


def organic_events(raw: pl.DataFrame, protocol: Protocol) -> pl.DataFrame:
    """Only the organic events when the protocol asks for them; a file without the flag
    cannot honour that."""
    if not protocol.organic_only:
        return raw
    if ORGANIC not in raw.columns:
        raise LossbenchError(NO_ORGANIC_FLAG)
    return raw.filter(pl.col(ORGANIC))


def clean(raw: pl.DataFrame, protocol: Protocol) -> tuple[pl.DataFrame, dict[str, int]]:
    """Filter and order raw interactions: `user`, `item` keys (see `id_keys`), `timestamp`."""
    report = {"raw_interactions": raw.height}
    if protocol.organic_only:
        raw = organic_events(raw, protocol)
        report["after_organic_filter"] = raw.height
    if protocol.min_rating is not None:
        rating = pl.col("rating")
        raw = raw.filter(rating.is_null() | (rating >= protocol.min_rating))
    frame = _chronological(raw.select("user", "item", "timestamp"))
    report["after_rating_filter"] = frame.height
    if protocol.dedup and frame.height:
        frame = _first_of_each_pair(frame)
    report["after_dedup"] = frame.height
    frame = k_core(frame, protocol.user_core, protocol.item_core)
    report["after_k_core"] = frame.height
    lengths = frame.group_by("user").len()
    report["users_too_short"] = lengths.filter(pl.col("len") < MIN_SEQUENCE).height
    if report["users_too_short"]:
        frame = k_core(frame, max(protocol.user_core, MIN_SEQUENCE), protocol.item_core)
    report["interactions"] = frame.height
    if frame.height == 0:
        raise nothing_left()
    return frame, report


def build_tables(
    raw: pl.DataFrame,
    protocol: Protocol,
    attributes: pl.DataFrame | None = None,
    split_by: SplitSpec = LOO,
) -> PreparedTables:
    """Everything `preprocess` writes, in memory. `attributes`: long `item`, `attribute`."""
    user_keys, user_originals = id_keys(raw["user"])
    item_keys, item_originals = id_keys(raw["item"])
    keyed = raw.with_columns(user=user_keys, item=item_keys)
    frame, report = clean(keyed, protocol)
    return tables_from_clean(frame, report, user_originals, item_originals, attributes, split_by)


def build_tables_streamed(
    compact: CompactInteractions,
    protocol: Protocol,
    attributes: pl.DataFrame | None = None,
    split_by: SplitSpec = LOO,
) -> PreparedTables:
    """`build_tables` for a file read by `streaming.read_compact` (its organic and rating
    filters already applied in the scan): the same steps, the same tables."""
    kept = compact.frame.height  # what the scan's filters kept
    frame, counts = clean_columns(compact, protocol)
    report = {"raw_interactions": compact.raw_rows}
    if protocol.organic_only:
        report["after_organic_filter"] = kept
    report.update(counts)
    return tables_from_clean(
        frame, report, compact.user_originals, compact.item_originals, attributes, split_by
    )


def tables_from_clean(
    frame: pl.DataFrame,
    report: dict[str, int],
    user_originals: pl.Series,
    item_originals: pl.Series,
    attributes: pl.DataFrame | None,
    split_by: SplitSpec,
) -> PreparedTables:
    """Re-index the cleaned rows (keys of `*_originals`) 1..n, split them, map attributes."""
    # Keys of the kept ids -> contiguous 1..n (ranks keep the key order and the row order).
    user_ids, kept_users = dense_rank(frame["user"])
    item_ids, kept_items = dense_rank(frame["item"])
    users = _id_map(kept_users, user_originals, "user")
    items = _id_map(kept_items, item_originals, "item")
    interactions = pl.DataFrame(
        {
            "user": user_ids.cast(pl.Int32),
            "item": item_ids.cast(pl.Int32),
            "timestamp": frame["timestamp"],
        }
    )
    split, split_report = split_interactions(interactions, split_by)
    report.update(split_report)
    item_attributes, n_attributes = (None, 0)
    if attributes is not None:
        item_attributes, n_attributes = _map_attributes(attributes, items)
    return PreparedTables(interactions, users, items, split, item_attributes, n_attributes, report)


def _id_map(kept_keys: pl.Series, originals: pl.Series, column: str) -> pl.DataFrame:
    """`column` (Int32, 1..n) -> `original_id` (String); `kept_keys` sorted distinct keys."""
    ids = pl.int_range(1, len(kept_keys) + 1, eager=True).cast(pl.Int32)
    return pl.DataFrame({column: ids, "original_id": originals.gather(kept_keys - 1)})


def _map_attributes(attributes: pl.DataFrame, items: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Attributes of the kept items only, attribute ids made contiguous 1..n_attributes."""
    mapped = (
        attributes.select(original_id=pl.col("item").cast(pl.String), attribute="attribute")
        .join(items, on="original_id", how="inner")
        .select("item", "attribute")
        .unique()
    )
    mapped = mapped.with_columns(attribute=id_keys(mapped["attribute"])[0].cast(pl.Int32))
    n_attributes = mapped["attribute"].n_unique() if mapped.height else 0
    per_item = mapped.group_by("item").agg(attributes=pl.col("attribute").sort())
    table = items.select("item").join(per_item, on="item", how="left").sort("item")
    empty = pl.lit([], dtype=pl.List(pl.Int32))
    return table.with_columns(pl.col("attributes").fill_null(empty)), n_attributes


def summary_stats(tables: PreparedTables) -> dict[str, Any]:
    lengths = tables.interactions.group_by("user").len()["len"].cast(pl.Float64)  # sequences
    n_users, n_items = tables.users.height, tables.items.height
    return {
        "n_users": n_users,
        "n_items": n_items,
        "n_interactions": tables.interactions.height,
        "n_attributes": tables.n_attributes,
        "mean_length": float(lengths.mean() or 0.0),
        "median_length": float(lengths.median() or 0.0),
        "min_length": int(lengths.min() or 0),  # type: ignore[arg-type]
        "max_length": int(lengths.max() or 0),  # type: ignore[arg-type]
        "density": tables.interactions.height / (n_users * n_items),
        repeats.META_KEY: repeats.repeated_targets(
            prepared_from_frames("", tables.split, {"n_items": n_items})
        ),
    }


def protocol_identity(protocol: Protocol) -> dict[str, Any]:
    """The protocol as it defines a preparation; `organic_only` only when set, so the datasets
    without the flag keep the identity (and prepared folders) they had before it existed."""
    identity = protocol.model_dump()
    if not protocol.organic_only:
        identity.pop("organic_only")
    return identity


def preprocess_dataset(
    data_dir: Path,
    name: str,
    *,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
    registry: Registry | None = None,
    split: SplitSpec = LOO,
) -> PrepareResult:
    """Prepare `name` under its `prepared*` folder of `split`; a no-op when prepared alike."""
    entry = get_dataset(name, registry, data_dir)
    check_timed(name, entry.format, split)
    protocol = protocol_with(entry.protocol, overrides or {})
    if entry.generator is not None:
        sources: dict[str, Any] = {"generator": entry.generator.model_dump()}
    elif entry.local_file is not None:
        sources = local_sources(entry)  # refuses a file changed since it was registered
    elif not is_downloaded(data_dir, entry):
        raise LossbenchError(f"dataset {name} is not downloaded: run `lossbench download {name}`")
    else:  # the bytes read, hashed now: a changed or damaged file is never built upon
        sources = verified_sources(data_dir, entry)
    identity = {
        "format_version": FORMAT_VERSION,
        "format": entry.format,
        "member": entry.member,
        "protocol": protocol_identity(protocol),
        "split": split.identity(),
        "sources": sources,
    }
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    target = prepared_dir(data_dir, name, split)
    existing = read_meta(target)
    if (
        not force
        and existing is not None
        and existing.get("fingerprint") == fingerprint
        and repeats.META_KEY in existing  # else prepared by a version without the report
        and content.META_KEY in existing  # ... or without the dataset fingerprint
        and not prepared_problems(data_dir, name, existing, hashes=True, split=split)
    ):
        return PrepareResult(name, existing, True, target)

    tables = read_and_build(data_dir, entry, protocol, split)
    refuse_unsplittable(entry, tables.report)
    stats = summary_stats(tables)
    meta = {
        "name": name,
        **stats,
        content.META_KEY: content.fingerprint(
            stats["n_users"], stats["n_items"], stats["n_interactions"], tables.split
        ),
        "tie_rule": content.TIE_RULE,
        "report": tables.report,
        **identity,
        "fingerprint": fingerprint,
    }
    return PrepareResult(name, write_prepared(target, tables, meta), False, target)


def read_and_build(
    data_dir: Path, entry: DatasetEntry, protocol: Protocol, split: SplitSpec
) -> PreparedTables:
    """The entry's interactions, read and prepared: downloaded files of a streamed format
    (`streaming.py`) on the streaming engine, everything else in memory."""
    attributes: pl.DataFrame | None = None
    if entry.generator is not None:
        raw, attributes = synthetic.generate_interactions(**entry.generator.model_dump())
    elif entry.local_file is not None:
        raw = read_local_interactions(entry)
    else:
        path = interactions_path(data_dir, entry)
        attributes_file = attributes_path(data_dir, entry)
        attributes = read_item_attributes(attributes_file) if attributes_file else None
        if is_streamed(entry.format):
            compact = read_compact(path, entry.format, protocol)
            return build_tables_streamed(compact, protocol, attributes, split)
        raw = read_interactions(path, entry.format)
    return build_tables(raw, protocol, attributes, split)


def protocol_with(protocol: Protocol, overrides: dict[str, Any]) -> Protocol:
    """`protocol` with the `preprocess` flags' values; a value out of range is one line
    naming the flag."""
    try:
        return Protocol.model_validate({**protocol.model_dump(), **overrides})
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "protocol"
        raise LossbenchError(
            f"--{field.replace('_', '-')} {first.get('input')!r}: "
            + first["msg"].replace("Input should be", "must be")
        ) from None


def refuse_unsplittable(entry: DatasetEntry, report: dict[str, int]) -> None:
    """A user's own file keeps every user: one too short to split is an error, not a drop
    (registered datasets drop them, as their publishers' protocols do)."""
    short = report.get("users_too_short", 0)
    if entry.local_file is not None and short:
        raise LossbenchError(
            f"{short:,} users of {entry.name} have fewer than {MIN_SEQUENCE} interactions after "
            "filtering, so they cannot be split into train, validation and test; drop them "
            f"with --user-core {MIN_SEQUENCE} (or more)"
        )


TEMPORARY_PREFIX, RETIRED_PREFIX = ".prepared-", ".retired-"


def write_prepared(target: Path, tables: PreparedTables, meta: dict[str, Any]) -> dict[str, Any]:
    """Write every file into a temporary folder beside `target`, then swap it in; returns the
    `meta.json` written (`meta` plus each file's size and sha256). Leftovers of a killed run
    are removed first."""
    try:
        temporary = temporary_folder(target.parent, TEMPORARY_PREFIX)
        remove_stale_folders(target.parent, RETIRED_PREFIX)
    except OSError as error:
        raise LossbenchError(
            f"cannot write to {target.parent} ({error.strerror}); "
            "pass --data-dir (or LOSSBENCH_DATA_DIR) a writable folder"
        ) from None
    retired = target.parent / temporary.name.replace(TEMPORARY_PREFIX, RETIRED_PREFIX, 1)
    try:
        tables.split.write_parquet(temporary / "split.parquet")
        write_arrays(tables.split, temporary)
        tables.interactions.write_parquet(temporary / "interactions.parquet")
        tables.users.write_parquet(temporary / "users.parquet")
        tables.items.write_parquet(temporary / "items.parquet")
        if tables.item_attributes is not None:
            tables.item_attributes.write_parquet(temporary / "item_attributes.parquet")
        files = {path.name: file_record(path) for path in sorted(temporary.iterdir())}
        meta = {**meta, "files": files}
        (temporary / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        if target.exists():
            os.replace(target, retired)
        os.replace(temporary, target)
    except OSError as error:
        raise LossbenchError(f"cannot write {target} ({error}); free space and retry") from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
    return meta
