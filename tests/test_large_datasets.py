"""The large-data registry entries: each real format, served on 127.0.0.1, downloaded,
prepared, and counted exactly; the tie rule on equal timestamps; the organic filter."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from lossbench.data.download import download_dataset
from lossbench.data.prepared import load_prepared
from lossbench.data.preprocess import preprocess_dataset
from lossbench.data.registry import get_dataset, load_registry
from lossbench.errors import LossbenchError
from test_download import FileServer, sha256, write_registry, zipped

# user 1: 4 items, one of them twice (dedup keeps the first); user 2: 3 items;
# user 3: 2 items (too short for leave-one-out, dropped). MovieLens csv layout.
ML_RATINGS = (
    "userId,movieId,rating,timestamp\n"
    "1,10,4.0,100\n1,20,3.5,200\n1,10,5.0,300\n1,30,2.0,400\n1,40,4.5,500\n"
    "2,20,4.0,100\n2,30,4.0,110\n2,50,1.0,120\n"
    "3,10,4.0,100\n3,20,4.0,200\n"
)

AMAZON23 = (
    "user_id,parent_asin,rating,timestamp\n"
    "AGKAS,B006GBITXC,3.0,1452647382000\n"
    "AGKAS,B00TLEMSVK,4.0,1454675785000\n"
    "AGKAS,B00SO7HF6I,3.0,1454676014000\n"
    "AFQLN,B00TLEMSVK,5.0,1606084291571\n"
    "AFQLN,B006GBITXC,5.0,1608426146024\n"
    "AFQLN,B081RW1PLY,4.0,1609322424771\n"
    "AFQLN,B006GBITXC,2.0,1609322541792\n"
)


def yambda_bytes() -> bytes:
    """A flat listens file: 3 users; user 7's second and fifth events are not organic."""
    frame = pl.DataFrame(
        {
            "uid": [7] * 5 + [8] * 4 + [9] * 3,
            "timestamp": [10, 11, 12, 13, 14, 5, 6, 7, 8, 1, 2, 3],
            "item_id": [100, 200, 100, 300, 400, 100, 200, 300, 100, 500, 600, 700],
            "is_organic": [1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
            "played_ratio_pct": [100] * 12,
            "track_length_seconds": [180] * 12,
        },
        schema_overrides={
            "uid": pl.UInt32,
            "timestamp": pl.UInt32,
            "item_id": pl.UInt32,
            "is_organic": pl.UInt8,
            "played_ratio_pct": pl.UInt16,
            "track_length_seconds": pl.UInt32,
        },
    )
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def server() -> Iterator[FileServer]:
    """Files served on 127.0.0.1 (test_download's server): nothing comes from outside."""
    files = FileServer()
    thread = threading.Thread(target=files.httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield files
    files.httpd.shutdown()
    files.httpd.server_close()


def test_new_entries_are_registered_with_sources_and_pins():
    registry = load_registry()
    for name in ("ml-32m", "amazon23-beauty", "amazon23-books", "amazon23-games"):
        assert name in registry
    assert {"yambda-50m", "yambda-500m"} <= set(registry)
    ml32 = registry["ml-32m"]
    assert ml32.file is not None and ml32.file.size == 238_950_008
    assert ml32.file.sha256 == "e4a68655d7386b8f95f2f2424b2ff975dfdd15ffd59e0d864a14dca43e99d6ee"
    assert ml32.member == "ml-32m/ratings.csv" and ml32.format == "movielens-csv"
    for name in ("amazon23-books", "yambda-500m"):  # no published checksum: confirm on first
        remote = registry[name].file
        assert remote is not None and remote.sha256 is None
        assert remote.confirm_hash_on_first_download
    assert registry["amazon23-games"].file.file_name == "Video_Games.csv"  # type: ignore[union-attr]
    assert registry["yambda-50m"].format == "yambda-parquet"
    assert not registry["yambda-50m"].protocol.dedup  # repeated listens are the signal


def test_ml32m_format_downloads_and_prepares_with_exact_counts(
    server: FileServer, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    archive = zipped({"ml-32m/ratings.csv": ML_RATINGS.encode(), "ml-32m/README.txt": b"x"})
    server.files["/ml-32m.zip"] = archive
    entry = (
        '[ml-32m]\nsource = "test"\nformat = "movielens-csv"\nmember = "ml-32m/ratings.csv"\n'
        f'[ml-32m.file]\nurl = "{server.url}/ml-32m.zip"\nsize = {len(archive)}\n'
        f'sha256 = "{sha256(archive)}"\n[ml-32m.protocol]\nuser_core = 3\nmax_length = 200\n'
    )
    write_registry(tmp_path / "r.toml", entry, monkeypatch)
    download_dataset(data_dir, "ml-32m", show_progress=False)
    meta = preprocess_dataset(data_dir, "ml-32m").meta
    assert (meta["n_users"], meta["n_items"], meta["n_interactions"]) == (2, 5, 7)
    assert meta["report"]["raw_interactions"] == 10 and meta["report"]["after_dedup"] == 9
    dataset = load_prepared(data_dir, "ml-32m")
    # user 1: 10, 20, 30, 40 (the second 10 dropped) -> ids 1, 2, 3, 4; user 2: 20, 30, 50.
    assert dataset.train_items.tolist() == [1, 2, 2]
    assert dataset.valid_items.tolist() == [3, 3] and dataset.test_items.tolist() == [4, 5]


def test_amazon23_served_from_a_mirror_downloads_and_prepares(
    server: FileServer, data_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("LOSSBENCH_DATASETS", raising=False)  # the real registry entry
    body = AMAZON23.encode()
    server.files["/amazon23-beauty/Beauty_and_Personal_Care.csv"] = body
    with pytest.raises(LossbenchError, match="--trust-new-hash"):
        download_dataset(data_dir, "amazon23-beauty", mirror=server.url, show_progress=False)
    download_dataset(
        data_dir, "amazon23-beauty", mirror=server.url, trust_new_hash=True, show_progress=False
    )
    meta = preprocess_dataset(data_dir, "amazon23-beauty").meta
    # AFQLN's second B006GBITXC is a repeat (dedup keeps the first).
    assert (meta["n_users"], meta["n_items"], meta["n_interactions"]) == (2, 4, 6)
    items = pl.read_parquet(data_dir / "amazon23-beauty" / "prepared" / "items.parquet")
    assert items["original_id"].to_list() == [
        "B006GBITXC",
        "B00SO7HF6I",
        "B00TLEMSVK",
        "B081RW1PLY",
    ]
    dataset = load_prepared(data_dir, "amazon23-beauty")
    assert dataset.test_items.tolist() == [4, 2]  # AFQLN: B081RW1PLY; AGKAS: B00SO7HF6I


def test_yambda_served_from_a_mirror_keeps_repeats_and_filters_organic(
    server: FileServer, data_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("LOSSBENCH_DATASETS", raising=False)
    server.files["/yambda-50m/listens.parquet"] = yambda_bytes()
    download_dataset(
        data_dir, "yambda-50m", mirror=server.url, trust_new_hash=True, show_progress=False
    )
    everything = preprocess_dataset(data_dir, "yambda-50m").meta
    # user_core 5: user 7 (5 events) stays; users 8 (4) and 9 (3) go.
    assert (everything["n_users"], everything["n_items"], everything["n_interactions"]) == (1, 4, 5)
    assert everything["report"]["after_dedup"] == 12  # no dedup: the repeated 100 stays
    organic = preprocess_dataset(
        data_dir, "yambda-50m", overrides={"organic_only": True, "user_core": 3}
    ).meta
    assert organic["report"]["after_organic_filter"] == 10
    # user 7 keeps 100, 100, 300 (200 and 400 were not organic): items 100-700 but 400.
    assert (organic["n_users"], organic["n_items"], organic["n_interactions"]) == (3, 6, 10)
    assert organic["protocol"]["organic_only"] is True


def test_organic_only_on_a_file_without_the_flag_is_refused(
    server: FileServer, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    body = AMAZON23.encode()
    server.files["/a.csv"] = body
    entry = (
        f'[shop]\nsource = "test"\nformat = "amazon23-csv"\n[shop.file]\n'
        f'url = "{server.url}/a.csv"\nsize = {len(body)}\nsha256 = "{sha256(body)}"\n'
    )
    write_registry(tmp_path / "r.toml", entry, monkeypatch)
    download_dataset(data_dir, "shop", show_progress=False)
    with pytest.raises(LossbenchError, match="drop --organic-only"):
        preprocess_dataset(data_dir, "shop", overrides={"organic_only": True})


def test_a_yambda_file_without_its_columns_names_them(tmp_path: Path):
    from lossbench.data.readers import read_yambda_parquet

    path = tmp_path / "listens.parquet"
    pl.DataFrame({"uid": [1], "item_id": [2]}).write_parquet(path)
    with pytest.raises(LossbenchError, match="lacks the Yambda column.s. timestamp, is_organic"):
        read_yambda_parquet(path)


def test_equal_timestamps_keep_the_file_order_not_the_item_order(
    server: FileServer, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Every event of user 1 at the same second, items in falling order in the file: the file's
    # order is the sequence (an item-id or hash order would reverse or scramble it).
    body = b"userId,movieId,rating,timestamp\n" + b"".join(
        f"1,{item},4.0,100\n".encode() for item in (50, 40, 30, 20, 10)
    )
    server.files["/r.csv"] = body
    entry = (
        f'[tied]\nsource = "test"\nformat = "movielens-csv"\n[tied.file]\n'
        f'url = "{server.url}/r.csv"\nsize = {len(body)}\nsha256 = "{sha256(body)}"\n'
    )
    write_registry(tmp_path / "r.toml", entry, monkeypatch)
    download_dataset(data_dir, "tied", show_progress=False)
    meta = preprocess_dataset(data_dir, "tied").meta
    assert meta["tie_rule"] == "file order, then item id"
    dataset = load_prepared(data_dir, "tied")
    items = pl.read_parquet(data_dir / "tied" / "prepared" / "items.parquet")
    original = dict(zip(items["item"].to_list(), items["original_id"].to_list(), strict=True))
    history = [original[i] for i in dataset.train_items.tolist()]
    assert history == ["50", "40", "30"]
    assert original[int(dataset.valid_items[0])] == "20"
    assert original[int(dataset.test_items[0])] == "10"
    assert get_dataset("tied").protocol.dedup


def test_reproduce_refuses_a_beauty_with_other_counts_naming_both(
    server: FileServer, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from typer.testing import CliRunner

    from lossbench.cli import app

    # A "Beauty" in S3Rec's format, but another variant: 3 users, 5 items, 12 interactions.
    body = b"1 1 2 3 4\n2 2 3 4 5\n3 1 3 5 2\n"
    server.files["/Beauty.txt"] = body
    entry = (
        f'[beauty-s3rec]\nsource = "test"\nformat = "s3rec"\n[beauty-s3rec.file]\n'
        f'url = "{server.url}/Beauty.txt"\nsize = {len(body)}\nsha256 = "{sha256(body)}"\n'
    )
    write_registry(tmp_path / "r.toml", entry, monkeypatch)
    download_dataset(data_dir, "beauty-s3rec", show_progress=False)
    preprocess_dataset(data_dir, "beauty-s3rec")
    arguments = ["reproduce", "table2", "--dataset", "beauty-s3rec", "--seeds", "0"]
    arguments += ["--out", str(tmp_path / "out"), "--data-dir", str(data_dir)]
    result = CliRunner().invoke(app, arguments)
    assert isinstance(result.exception, LossbenchError), result.output
    message = str(result.exception)
    assert "\n" not in message
    assert "has 3 users, 5 items, 12 interactions" in message
    assert "the study's variant has 22,363 users, 12,101 items, 198,502 interactions" in message
    assert not list((tmp_path / "out").rglob("metrics.json"))  # nothing trained


def test_every_published_dataset_of_the_study_has_its_counts_and_lastfm_matches_the_docs():
    from lossbench.reproduce.published import PUBLISHED_COUNTS, check_published_variant

    assert set(PUBLISHED_COUNTS) == {"beauty", "beauty-s3rec", "lastfm"}
    check_published_variant("lastfm", {"n_users": 1090, "n_items": 3646, "n_interactions": 52551})
    check_published_variant("ml-1m", {"n_users": 1, "n_items": 1, "n_interactions": 1})  # none
    with pytest.raises(LossbenchError, match="has 1,090 users, 3,646 items, 52,550 inter"):
        check_published_variant(
            "lastfm", {"n_users": 1090, "n_items": 3646, "n_interactions": 52550}
        )


def test_preprocess_prints_the_split_hash_of_the_fingerprint(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from lossbench.cli import app

    data_dir = tmp_path / "data"
    result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "preprocess", "synthetic"])
    assert result.exit_code == 0, result.output
    meta = json.loads((data_dir / "synthetic" / "prepared" / "meta.json").read_text())
    fingerprint = meta["dataset_fingerprint"]
    assert (fingerprint["users"], fingerprint["items"]) == (2000, 500)
    assert fingerprint["split_sha256"][:8] in result.output
    assert meta["tie_rule"] == "file order, then item id"


def test_reports_name_the_data_and_flag_runs_on_different_preparations() -> None:
    from lossbench.compare.report.render import data_lines
    from lossbench.data.fingerprint import describe

    one = describe({"users": 1090, "items": 3646, "interactions": 52551, "split_sha256": "ab" * 32})
    other = describe(
        {"users": 22363, "items": 12101, "interactions": 198502, "split_sha256": "c" * 64}
    )
    assert one == "1,090 users, 3,646 items, 52,551 interactions, split abababab"
    runs = pl.DataFrame(
        {
            "dataset": ["lastfm", "lastfm", "beauty", "beauty", "yelp"],
            "dataset_fingerprint": [one, one, one, other, None],  # yelp: recorded before
        }
    )
    assert data_lines(runs) == [
        f"Data: lastfm: {one}",
        f"Data: beauty: runs trained on 2 different preparations ({one}; {other}): "
        "their numbers are not comparable",
    ]
    assert "unknown" in describe(None)
