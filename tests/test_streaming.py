"""Streaming preparation (`streaming.py`) prepares exactly what the in-memory path prepares:
on generated files of every streamed format and on the real MovieLens file of the mirror."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from lossbench.data.preprocess import PreparedTables, build_tables, build_tables_streamed
from lossbench.data.readers import read_interactions
from lossbench.data.registry import Protocol
from lossbench.data.splits import LOO, SplitSpec
from lossbench.data.streaming import BLOCK_ENV, read_compact
from lossbench.errors import LossbenchError

MIRROR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mirror"
TEMPORAL = SplitSpec(kind="temporal", valid_quantile=0.7, test_quantile=0.85)


def generated(rows: int, seed: int) -> pl.DataFrame:
    """user, item, rating, timestamp with repeats, equal timestamps and low ratings."""
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "user": rng.integers(1, 300, rows),
            "item": rng.zipf(1.3, rows) % 500 + 1,  # popular items repeat within users
            "rating": rng.integers(1, 11, rows) / 2.0,
            "timestamp": rng.integers(0, 2000, rows),  # coarse: many ties within a user
        }
    )


def write(frame: pl.DataFrame, path: Path, format: str) -> None:
    if format == "movielens-csv":
        frame.rename({"user": "userId", "item": "movieId"}).write_csv(path)
    elif format == "movielens-tsv":
        frame.write_csv(path, separator="\t", include_header=False)
    elif format == "amazon-csv":  # string ids, item before rating, no header
        strings = frame.with_columns(
            ("A" + pl.col("user").cast(pl.String)).alias("user"),
            ("B" + pl.col("item").cast(pl.String)).alias("item"),
        )
        strings.write_csv(path, include_header=False)
    elif format == "amazon23-csv":
        strings = frame.with_columns(("U" + pl.col("user").cast(pl.String)).alias("user"))
        strings.rename({"user": "user_id", "item": "parent_asin"}).write_csv(path)
    else:  # yambda-parquet: uid, item_id, timestamp, is_organic, no rating
        frame.select(
            uid=pl.col("user").cast(pl.UInt32),
            timestamp=pl.col("timestamp").cast(pl.UInt32),
            item_id=pl.col("item").cast(pl.UInt32),
            is_organic=(pl.col("rating") > 1.5).cast(pl.UInt8),
        ).write_parquet(path, row_group_size=1000)


def assert_same_tables(memory: PreparedTables, streamed: PreparedTables) -> None:
    for name in ("interactions", "users", "items", "split"):
        assert_frame_equal(getattr(memory, name), getattr(streamed, name))
    assert memory.report == streamed.report
    assert list(memory.report) == list(streamed.report)  # same keys in the same order


@pytest.mark.parametrize(
    ("format", "protocol"),
    [
        ("movielens-csv", Protocol(min_rating=3.0, user_core=5, dedup=True)),
        ("movielens-tsv", Protocol(user_core=3, item_core=3, dedup=True)),
        ("amazon-csv", Protocol(user_core=5, item_core=5, dedup=True)),
        ("amazon23-csv", Protocol(dedup=False)),
        ("yambda-parquet", Protocol(user_core=5, dedup=False, organic_only=True)),
        ("yambda-parquet", Protocol(user_core=2, dedup=True)),
    ],
)
@pytest.mark.parametrize("split", [LOO, TEMPORAL], ids=["loo", "temporal"])
def test_streamed_preparation_equals_the_in_memory_one(
    tmp_path: Path, format: str, protocol: Protocol, split: SplitSpec
) -> None:
    path = tmp_path / "interactions"
    write(generated(20_000, seed=len(format)), path, format)
    raw = read_interactions(path, format)
    if protocol.organic_only:
        raw = raw.filter(pl.col("organic"))
        memory_protocol = protocol.model_copy(update={"organic_only": False})
        memory = build_tables(raw, memory_protocol, split_by=split)
        report = {"raw_interactions": 20_000, "after_organic_filter": raw.height}
        memory = PreparedTables(
            **{**memory.__dict__, "report": {**report, **dict(list(memory.report.items())[1:])}}
        )
    else:
        memory = build_tables(raw, protocol, split_by=split)
    streamed = build_tables_streamed(read_compact(path, format, protocol), protocol, None, split)
    assert memory.interactions.height > 1000  # the filters left a real dataset
    assert_same_tables(memory, streamed)
    assert streamed.interactions.schema["user"] == pl.Int32


def test_tiny_batches_give_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "ratings.csv"
    write(generated(5_000, seed=3), path, "movielens-csv")
    protocol = Protocol(user_core=5, dedup=True)
    whole = build_tables_streamed(read_compact(path, "movielens-csv", protocol), protocol)
    monkeypatch.setenv(BLOCK_ENV, "100")  # a few lines a block
    batched = build_tables_streamed(read_compact(path, "movielens-csv", protocol), protocol)
    assert_same_tables(whole, batched)
    monkeypatch.setenv(BLOCK_ENV, "lots")
    with pytest.raises(LossbenchError, match="LOSSBENCH_STREAM_BYTES='lots' is not a positive"):
        read_compact(path, "movielens-csv", protocol)


def test_a_malformed_line_is_named_as_the_in_memory_reader_names_it(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,2,3.0,4\n1,x,3.0,5\n")
    with pytest.raises(LossbenchError, match="line 3: malformed row"):
        read_compact(path, "movielens-csv", Protocol())


@pytest.mark.skipif(
    not MIRROR.is_dir(), reason=f"real data mirror {MIRROR} is absent (../shared/data/mirror)"
)
def test_the_real_movielens_file_prepares_identically(tmp_path: Path) -> None:
    with zipfile.ZipFile(MIRROR / "ml-latest-small" / "ml-latest-small.zip") as archive:
        path = Path(archive.extract("ml-latest-small/ratings.csv", tmp_path))
    protocol = Protocol(user_core=5, dedup=True)
    for split in (LOO, TEMPORAL):
        memory = build_tables(read_interactions(path, "movielens-csv"), protocol, split_by=split)
        streamed = build_tables_streamed(
            read_compact(path, "movielens-csv", protocol), protocol, None, split
        )
        assert_same_tables(memory, streamed)
    assert (memory.users.height, memory.items.height) == (610, 9724)
    assert memory.interactions.height == 100_836


def test_the_scale_bench_generator_is_seeded_exact_and_ml20m_shaped(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import scale

    assert scale.shape(20_000_263) == (138_493, 26_744)  # ML-20M itself
    assert scale.shape(100_000_000) == (692_456, 59_801)
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    info = scale.generate(first, 50_000, seed=1)
    scale.generate(second, 50_000, seed=1)
    assert first.read_bytes() == second.read_bytes()  # seeded
    frame = pl.read_csv(first)
    assert frame.columns == ["userId", "movieId", "rating", "timestamp"]
    assert (frame.height, info["users"], info["items"]) == (50_000, 346, 1_337)
    assert frame.select(pl.struct("userId", "movieId").n_unique()).item() == 50_000
    assert frame["userId"].is_sorted() and frame["movieId"].max() <= info["items"]
