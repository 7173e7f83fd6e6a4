"""The dataset registry: every issue entry present, validation names entry and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from lossbench.data.readers import READERS
from lossbench.data.registry import (
    FORMATS,
    LOCAL_FORMATS,
    get_dataset,
    load_registry,
    registry_path,
)
from lossbench.errors import LossbenchError

ISSUE_ENTRIES = {
    "ml-latest-small", "ml-100k", "ml-1m", "ml-20m", "steam", "beauty", "beauty-s3rec",
    "lastfm", "yelp", "sports", "toys", "synthetic",
}  # fmt: skip
LARGE_ENTRIES = {
    "ml-32m", "amazon23-beauty", "amazon23-books", "amazon23-games", "yambda-50m", "yambda-500m",
}  # fmt: skip


def test_repository_registry_has_every_entry() -> None:
    registry = load_registry()
    assert ISSUE_ENTRIES | LARGE_ENTRIES | {"beauty-amazon"} == set(registry)
    for entry in registry.values():
        for remote in entry.remote_files:
            assert remote.sha256 is not None or remote.confirm_hash_on_first_download
    assert get_dataset("lastfm").file.size == 239312  # type: ignore[union-attr]
    assert get_dataset("ml-20m").protocol.user_core == 5
    assert get_dataset("beauty-s3rec").protocol.dedup is False
    assert get_dataset("synthetic").generator is not None


def test_formats_match_the_readers() -> None:
    assert set(FORMATS) == set(READERS) | {"synthetic", *LOCAL_FORMATS}


def test_default_path_is_the_repository_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOSSBENCH_DATASETS", raising=False)
    assert registry_path().name == "datasets.toml" and registry_path().is_file()


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(LossbenchError, match="unknown dataset 'lastfn': did you mean 'lastfm'"):
        get_dataset("lastfn")
    with pytest.raises(LossbenchError, match="lossbench datasets"):
        get_dataset("zzzzzzzz")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "datasets.toml"
    path.write_text(text)
    return path


GOOD_FILE = (
    'url = "https://example.org/LastFM.txt"\nsize = 10\n'
    'sha256 = "9ded486adb5b0fe9dc761950afa0a9a05e93ff018992e0c52bf11afec529f802"\n'
)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (GOOD_FILE.replace("9ded", "XXXX"), "file.sha256"),
        (GOOD_FILE.replace("size = 10", "size = -1"), "file.size"),
        (GOOD_FILE.replace("https://example.org/LastFM.txt", "ftp://x/y"), "file.url"),
        (GOOD_FILE + "colour = 1\n", "file.colour"),
        (GOOD_FILE.split("sha256")[0], "file"),
    ],
)
def test_invalid_entry_names_entry_and_field(tmp_path: Path, body: str, field: str) -> None:
    path = write(tmp_path, f'[lastfm]\nsource = "s"\nformat = "s3rec"\n[lastfm.file]\n{body}')
    with pytest.raises(LossbenchError, match=f"entry 'lastfm', field '{field}'"):
        load_registry(path)


def test_unknown_format_lists_the_valid_ones(tmp_path: Path) -> None:
    path = write(tmp_path, f'[x]\nsource = "s"\nformat = "xlsx"\n[x.file]\n{GOOD_FILE}')
    with pytest.raises(LossbenchError, match="field 'format'.*valid: movielens-dat"):
        load_registry(path)


def test_archive_needs_a_member(tmp_path: Path) -> None:
    body = GOOD_FILE.replace("LastFM.txt", "ml.zip")
    path = write(tmp_path, f'[ml]\nsource = "s"\nformat = "movielens-csv"\n[ml.file]\n{body}')
    with pytest.raises(LossbenchError, match="entry 'ml'.*member is missing"):
        load_registry(path)


def test_bad_protocol_value(tmp_path: Path) -> None:
    text = (
        f'[x]\nsource = "s"\nformat = "s3rec"\n[x.file]\n{GOOD_FILE}[x.protocol]\nuser_core = -2\n'
    )
    with pytest.raises(LossbenchError, match="field 'protocol.user_core'"):
        load_registry(write(tmp_path, text))


def test_env_override_and_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, f'[only]\nsource = "s"\nformat = "s3rec"\n[only.file]\n{GOOD_FILE}')
    monkeypatch.setenv("LOSSBENCH_DATASETS", str(path))
    assert list(load_registry()) == ["only"]
    monkeypatch.setenv("LOSSBENCH_DATASETS", str(tmp_path / "missing.toml"))
    with pytest.raises(LossbenchError, match="LOSSBENCH_DATASETS"):
        load_registry()
    with pytest.raises(LossbenchError, match="not valid TOML"):
        load_registry(write(tmp_path, "[x\n"))
