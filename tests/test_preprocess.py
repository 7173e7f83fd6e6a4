"""Preprocessing: k-core, ordering, ids, leave-one-out split, files; exact counts on real data."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lossbench.data.download import download_dataset
from lossbench.data.prepared import load_prepared
from lossbench.data.preprocess import build_tables, k_core, preprocess_dataset
from lossbench.data.readers import read_interactions
from lossbench.data.registry import Protocol
from lossbench.errors import LossbenchError

MIRROR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mirror"
needs_mirror = pytest.mark.skipif(
    not MIRROR.is_dir(), reason=f"real data mirror {MIRROR} is absent (../shared/data/mirror)"
)


def frame(
    rows: list[tuple[object, object, int]], ratings: list[float] | None = None
) -> pl.DataFrame:
    users, items, times = zip(*rows, strict=True)
    return pl.DataFrame(
        {
            "user": list(users),
            "item": list(items),
            "timestamp": list(times),
            "rating": ratings or [None] * len(rows),
        },
        schema_overrides={"timestamp": pl.Int64, "rating": pl.Float64},
    )


def test_k_core_cascades_until_stable() -> None:
    # Pass 1 removes user 4 and items c, d, e; that leaves user 3 with one item: pass 2 removes it.
    pairs = [(1, "a"), (1, "b"), (1, "c"), (2, "a"), (2, "b"), (3, "a"), (3, "d"), (4, "e")]
    raw = pl.DataFrame({"user": [u for u, _ in pairs], "item": [i for _, i in pairs]})
    kept = k_core(raw, user_core=2, item_core=2)
    assert kept.rows() == [(1, "a"), (1, "b"), (2, "a"), (2, "b")]
    assert k_core(raw, 0, 0).height == 8


def test_k_core_then_short_users_are_dropped_and_reported() -> None:
    rows = [(1, 10, 1), (1, 11, 2), (1, 12, 3), (1, 13, 4), (2, 10, 1), (2, 11, 2)]
    rows += [(3, 10, 5), (3, 11, 6), (3, 12, 7), (3, 14, 8)]
    tables = build_tables(frame(rows), Protocol(item_core=2))
    # item 13 and 14 fall to the 2-core; user 2 has 2 items (< 3): dropped.
    assert tables.report["users_too_short"] == 1
    assert tables.users["original_id"].to_list() == ["1", "3"]
    assert tables.items["original_id"].to_list() == ["10", "11", "12"]
    assert tables.split.rows() == [(1, [1], 2, 3, [2]), (2, [1], 2, 3, [2])]


def test_order_ties_dedup_rating_and_ids() -> None:
    # Item ids sort numerically (2 < 10 < 33); equal timestamps keep the file order.
    rows = [
        (7, 33, 5),
        (7, 10, 5),
        (7, 2, 1),
        (7, 10, 9),
        (7, 4, 6),
        (9, 2, 1),
        (9, 10, 2),
        (9, 33, 3),
    ]
    ratings = [5.0, 4.0, 5.0, 5.0, 1.0, 5.0, 4.0, 5.0]
    tables = build_tables(frame(rows, ratings), Protocol(min_rating=4, dedup=True))
    assert tables.items["original_id"].to_list() == ["2", "10", "33"]
    # user 7: 2 (t=1), 33 (t=5, first in file), 10 (t=5), 10 again dropped, 4 below threshold.
    assert tables.split.rows() == [(1, [1], 3, 2, [3]), (2, [1], 2, 3, [2])]
    assert tables.report == {
        "raw_interactions": 8, "after_rating_filter": 7, "after_dedup": 6,
        "after_k_core": 6, "users_too_short": 0, "interactions": 6,
    }  # fmt: skip
    no_dedup = build_tables(frame(rows, ratings), Protocol(min_rating=4, dedup=False))
    assert no_dedup.split.row(0) == (1, [1, 3], 2, 2, [2])


def test_string_ids_sort_as_strings_and_keep_leading_zeros() -> None:
    rows = [
        ("b", "007", 1),
        ("b", "7", 2),
        ("b", "x", 3),
        ("a", "7", 1),
        ("a", "x", 2),
        ("a", "007", 3),
    ]
    tables = build_tables(frame(rows), Protocol())
    assert tables.users["original_id"].to_list() == ["a", "b"]
    assert tables.items["original_id"].to_list() == ["007", "7", "x"]


def test_nothing_left_after_filtering() -> None:
    with pytest.raises(LossbenchError, match="nothing is left after filtering"):
        build_tables(frame([(1, 1, 1), (1, 2, 2), (2, 1, 1)]), Protocol(user_core=5))


def test_every_split_is_the_chronological_tail(tmp_path: Path) -> None:
    preprocess_dataset(tmp_path, "synthetic")
    folder = tmp_path / "synthetic" / "prepared"
    interactions = pl.read_parquet(folder / "interactions.parquet")
    split = pl.read_parquet(folder / "split.parquet")
    for user, train, valid, test, gap in split.head(300).iter_rows():
        assert gap == [valid]
        own = interactions.filter(pl.col("user") == user)
        assert own["timestamp"].is_sorted()
        assert own["item"].to_list() == [*train, valid, test]
    assert split["user"].to_list() == list(range(1, split.height + 1))


def test_rerun_is_a_no_op_unless_forced_or_protocol_changes(tmp_path: Path) -> None:
    first = preprocess_dataset(tmp_path, "synthetic")
    assert not first.skipped
    assert preprocess_dataset(tmp_path, "synthetic").skipped
    assert not preprocess_dataset(tmp_path, "synthetic", force=True).skipped
    changed = preprocess_dataset(tmp_path, "synthetic", overrides={"user_core": 40})
    assert not changed.skipped and changed.meta["n_users"] < first.meta["n_users"]
    meta = json.loads((tmp_path / "synthetic" / "prepared" / "meta.json").read_text())
    assert meta["protocol"]["user_core"] == 40
    assert not [p for p in (tmp_path / "synthetic").iterdir() if p.name.startswith(".")]


def test_not_downloaded_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(LossbenchError, match="not downloaded: run `lossbench download lastfm`"):
        preprocess_dataset(tmp_path, "lastfm")


def test_malformed_row_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "LastFM.txt"
    path.write_text("1 1 2 3\n2 4 5 6\n3\n")
    with pytest.raises(LossbenchError, match=r"LastFM.txt line 3: malformed row '3'"):
        read_interactions(path, "s3rec")
    csv = tmp_path / "ratings.csv"
    csv.write_text("userId,movieId,rating,timestamp\n1,2,3.5,100\n1,x,4.0,101\n")
    with pytest.raises(LossbenchError, match=r"ratings.csv line 3: malformed row '1,x,4.0,101'"):
        read_interactions(csv, "movielens-csv")
    dat = tmp_path / "ratings.dat"
    dat.write_text("1::2::3::100\n1::2::3\n")
    with pytest.raises(LossbenchError, match="ratings.dat line 2"):
        read_interactions(dat, "movielens-dat")


@pytest.mark.parametrize(
    ("format", "text", "user"),
    [
        ("movielens-dat", "1::10::4::100\n2::11::5::50\n", 1),
        ("movielens-csv", "userId,movieId,rating,timestamp\n1,10,4.0,100\n2,11,5.0,50\n", 1),
        ("movielens-tsv", "1\t10\t4\t100\n2\t11\t5\t50\n", 1),
        ("amazon-csv", "A1,B10,4.0,100\nA2,B11,5.0,50\n", "A1"),
    ],
)
def test_rating_readers_share_one_schema(
    tmp_path: Path, format: str, text: str, user: object
) -> None:
    path = tmp_path / "ratings"
    path.write_text(text)
    raw = read_interactions(path, format)
    assert raw.columns == ["user", "item", "timestamp", "rating"]
    assert raw["timestamp"].dtype == pl.Int64 and raw["rating"].dtype == pl.Float64
    assert raw.row(0) == (user, 10 if user == 1 else "B10", 100, 4.0)
    assert raw["rating"].to_list() == [4.0, 5.0]


def test_steam_lines_are_parsed_with_a_regex(tmp_path: Path) -> None:
    path = tmp_path / "steam.json"
    path.write_text(
        "{'username': 'Ann', 'hours': 1.0, 'product_id': '10', 'date': '2017-01-02', 'text': 'x'}\n"
        "{'username': \"O'Neil\", 'product_id': '11', 'date': '2017-01-01'}\n"
        "{'user_id': '7656', 'product_id': '10', 'date': '2016-12-31', 'text': \"it's\"}\n"
    )
    gzipped = tmp_path / "steam.json.gz"
    gzipped.write_bytes(gzip.compress(path.read_bytes()))
    assert read_interactions(gzipped, "steam").equals(read_interactions(path, "steam"))
    raw = read_interactions(path, "steam")
    assert raw["user"].to_list() == ["Ann", "O'Neil", "7656"]
    assert raw["item"].to_list() == [10, 11, 10]
    assert raw["timestamp"].to_list() == [1483315200, 1483228800, 1483142400]
    path.write_text(path.read_text() + "{'username': 'Bo', 'date': '2017-01-01'}\n")
    with pytest.raises(LossbenchError, match="steam.json line 4"):
        read_interactions(path, "steam")


@pytest.fixture(scope="module")
def real_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("real")
    for name in ("lastfm", "beauty-s3rec", "beauty", "ml-latest-small"):
        download_dataset(data_dir, name, mirror=str(MIRROR), show_progress=False)
    return data_dir


def last_items_of_lines(path: Path) -> dict[str, str]:
    """Original user id -> the last item of its line (S3Rec) or its last line (BERT4Rec)."""
    last: dict[str, str] = {}
    for line in path.read_text().splitlines():
        tokens = line.split()
        last[tokens[0]] = tokens[-1]
    return last


@needs_mirror
@pytest.mark.parametrize(
    ("name", "source", "counts"),
    [
        ("lastfm", "lastfm/LastFM.txt", (1090, 3646, 52551)),
        ("beauty-s3rec", "beauty-s3rec/Beauty.txt", (22363, 12101, 198502)),
        ("beauty", "beauty/beauty.txt", (40226, 54542, 353962)),
    ],
)
def test_real_counts_and_test_targets(
    real_data_dir: Path, name: str, source: str, counts: tuple
) -> None:
    result = preprocess_dataset(real_data_dir, name)
    meta = result.meta
    assert (meta["n_users"], meta["n_items"], meta["n_interactions"]) == counts
    dataset = load_prepared(real_data_dir, name)
    users = pl.read_parquet(result.path / "users.parquet")["original_id"].to_numpy()
    items = pl.read_parquet(result.path / "items.parquet")["original_id"].to_numpy()
    last = last_items_of_lines(MIRROR / source)
    expected = np.array([last[user] for user in users])
    assert (items[dataset.test_items - 1] == expected).all()
    # The files are already id-mapped 1..n: ids map to themselves.
    assert (items == np.arange(1, len(items) + 1).astype(str)).all()


@needs_mirror
def test_real_attributes_follow_the_item_map(real_data_dir: Path) -> None:
    preprocess_dataset(real_data_dir, "lastfm")
    dataset = load_prepared(real_data_dir, "lastfm")
    raw = json.loads((MIRROR / "lastfm" / "LastFM_item2attributes.json").read_text())
    distinct = sorted({a for attributes in raw.values() for a in attributes})
    assert dataset.n_attributes == len(distinct)
    assert dataset.attribute_offsets is not None and dataset.attribute_ids is not None
    assert len(dataset.attribute_offsets) == dataset.n_items + 2
    rank = {a: i + 1 for i, a in enumerate(distinct)}
    for item in (1, 2, 1000, dataset.n_items):
        own = dataset.attribute_ids[
            dataset.attribute_offsets[item] : dataset.attribute_offsets[item + 1]
        ]
        assert own.tolist() == sorted({rank[a] for a in raw[str(item)]})


@needs_mirror
def test_ml_latest_small_from_the_mirror_archive(real_data_dir: Path) -> None:
    meta = preprocess_dataset(real_data_dir, "ml-latest-small").meta
    assert (meta["n_users"], meta["n_items"], meta["n_interactions"]) == (610, 9724, 100836)
    assert meta["sources"]["sha256"]["ml-latest-small.zip"].startswith("696d65a3")
