"""Damaged files are noticed: downloads (size every time, sha256 when preprocessing and by
`lossbench verify`), extracted members, prepared folders; their permissions and leftovers."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from lossbench.cli import app
from lossbench.data.download import download_dataset, is_downloaded
from lossbench.data.prepared import load_prepared
from lossbench.data.preprocess import preprocess_dataset
from lossbench.data.registry import get_dataset
from lossbench.errors import LossbenchError

# 500 users of 4 items each, in the s3rec format: "user item item item item".
SEQUENCES = b"".join(f"{u} {u} {u + 1} {u + 2} {u + 3}\n".encode() for u in range(1, 501))
SHORTER = b"".join(f"{u} {u} {u + 1} {u + 2} {u + 3}\n".encode() for u in range(1, 301))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def use_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes, *, archive: bool
) -> Path:
    """A registry with dataset `toy` pinned to `data` (plain, or zipped as toy/seq.txt) and a
    mirror folder serving it; returns the mirror."""
    mirror = tmp_path / "mirror"
    (mirror / "toy").mkdir(parents=True, exist_ok=True)
    payload = zipped({"toy/seq.txt": data}) if archive else data
    file_name = "toy.zip" if archive else "seq.txt"
    (mirror / "toy" / file_name).write_bytes(payload)
    member = 'member = "toy/seq.txt"\n' if archive else ""
    registry = tmp_path / "datasets.toml"
    registry.write_text(
        f'[toy]\nsource = "test"\nformat = "s3rec"\n{member}[toy.file]\n'
        f'url = "https://example.invalid/{file_name}"\nsize = {len(payload)}\n'
        f'sha256 = "{sha256(payload)}"\n'
    )
    monkeypatch.setenv("LOSSBENCH_DATASETS", str(registry))
    return mirror


def flip_a_byte(path: Path, at: int = 10) -> None:
    """Change one byte in place: same size, other sha256."""
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[at] = ord("7") if data[at] != ord("7") else ord("8")
    path.write_bytes(bytes(data))


def cli(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["--data-dir", str(data_dir), *args])


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_a_truncated_download_is_noticed_and_fetched_again(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = use_registry(tmp_path, monkeypatch, SEQUENCES, archive=False)
    download_dataset(data_dir, "toy", mirror=str(mirror), show_progress=False)
    raw = data_dir / "toy" / "raw" / "seq.txt"
    raw.write_bytes(SEQUENCES[:1000])
    assert not is_downloaded(data_dir, get_dataset("toy"))
    message = download_dataset(data_dir, "toy", mirror=str(mirror), show_progress=False)
    assert f"toy/raw/seq.txt has 1,000 bytes, expected {len(SEQUENCES):,}" in message
    assert "downloaded 1 file(s)" in message
    assert raw.read_bytes() == SEQUENCES


def test_preprocess_refuses_a_download_damaged_in_place(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = use_registry(tmp_path, monkeypatch, SEQUENCES, archive=False)
    download_dataset(data_dir, "toy", mirror=str(mirror), show_progress=False)
    flip_a_byte(data_dir / "toy" / "raw" / "seq.txt")
    assert is_downloaded(data_dir, get_dataset("toy"))  # the cheap check: the size is right
    with pytest.raises(LossbenchError) as error:
        preprocess_dataset(data_dir, "toy")
    message = str(error.value)
    assert "toy/raw/seq.txt has sha256" in message and f"expected {sha256(SEQUENCES)}" in message
    assert "lossbench download toy --force" in message
    assert not (data_dir / "toy" / "prepared").exists()
    verify = cli(data_dir, "verify", "toy")
    assert verify.exit_code == 1 and "toy: DAMAGED: toy/raw/seq.txt has sha256" in verify.output
    assert cli(data_dir, "download", "toy", "--force", "--mirror", str(mirror)).exit_code == 0
    assert preprocess_dataset(data_dir, "toy").meta["n_users"] == 500
    assert cli(data_dir, "verify", "toy").exit_code == 0


def test_preprocess_records_the_bytes_it_read_and_redoes_itself_when_they_change(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = use_registry(tmp_path, monkeypatch, SHORTER, archive=False)
    download_dataset(data_dir, "toy", mirror=str(mirror), show_progress=False)
    first = preprocess_dataset(data_dir, "toy")
    assert first.meta["n_users"] == 300
    assert first.meta["sources"]["read"] == {"raw/seq.txt": sha256(SHORTER)}
    assert preprocess_dataset(data_dir, "toy").skipped
    mirror = use_registry(tmp_path, monkeypatch, SEQUENCES, archive=False)  # the file is replaced
    download_dataset(data_dir, "toy", mirror=str(mirror), force=True, show_progress=False)
    again = preprocess_dataset(data_dir, "toy")
    assert not again.skipped and again.meta["n_users"] == 500
    assert again.meta["sources"]["read"] == {"raw/seq.txt": sha256(SEQUENCES)}


def test_a_damaged_extracted_member_is_extracted_again(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = use_registry(tmp_path, monkeypatch, SEQUENCES, archive=True)
    download_dataset(data_dir, "toy", mirror=str(mirror), show_progress=False)
    member = data_dir / "toy" / "raw" / "extracted" / "toy" / "seq.txt"
    flip_a_byte(member)
    verify = cli(data_dir, "verify", "toy")
    assert verify.exit_code == 1 and "toy/raw/extracted/toy/seq.txt has sha256" in verify.output
    result = preprocess_dataset(data_dir, "toy")  # the archive verifies: extract it again
    assert member.read_bytes() == SEQUENCES
    assert result.meta["n_users"] == 500
    assert result.meta["sources"]["read"] == {"raw/extracted/toy/seq.txt": sha256(SEQUENCES)}
    member.write_bytes(SEQUENCES[:100])  # a size change: `download` notices it alone
    message = download_dataset(data_dir, "toy", mirror=str(mirror), show_progress=False)
    assert message == (
        f"toy: toy/raw/extracted/toy/seq.txt has 100 bytes, expected {len(SEQUENCES):,} "
        "(truncated or changed): extracted it again from the archive"
    )
    assert member.read_bytes() == SEQUENCES


@pytest.mark.parametrize("file_name", ["users.parquet", "split.parquet"])
def test_a_damaged_prepared_file_is_named(file_name: str, data_dir: Path) -> None:
    preprocess_dataset(data_dir, "synthetic")
    prepared = data_dir / "synthetic" / "prepared"
    path = prepared / file_name
    path.write_bytes(path.read_bytes()[:-10])  # users.parquet: training never reads it
    with pytest.raises(LossbenchError) as error:
        load_prepared(data_dir, "synthetic")
    assert f"synthetic/prepared/{file_name} has" in str(error.value)
    assert "lossbench preprocess synthetic --force" in str(error.value)
    assert "damaged" in cli(data_dir, "datasets").output
    verify = cli(data_dir, "verify")
    assert verify.exit_code == 1 and f"synthetic/prepared/{file_name}" in verify.output
    assert not preprocess_dataset(data_dir, "synthetic").skipped  # damage means prepare again
    assert cli(data_dir, "verify").exit_code == 0


def test_a_prepared_file_damaged_in_place_is_found_by_hash(data_dir: Path) -> None:
    preprocess_dataset(data_dir, "synthetic")
    flip_a_byte(data_dir / "synthetic" / "prepared" / "interactions.parquet", at=200)
    verify = cli(data_dir, "verify", "synthetic")
    assert verify.exit_code == 1
    assert "synthetic/prepared/interactions.parquet has sha256" in verify.output
    assert not preprocess_dataset(data_dir, "synthetic").skipped


def test_verify_with_nothing_there(data_dir: Path) -> None:
    everything = cli(data_dir, "verify")
    assert everything.exit_code == 0 and "nothing downloaded or prepared" in everything.output
    named = cli(data_dir, "verify", "lastfm")
    assert named.exit_code == 1 and "not downloaded" in named.output
    assert isinstance(cli(data_dir, "verify", "lastfn").exception, LossbenchError)


def test_a_prepared_folder_older_than_the_records_asks_to_prepare_again(data_dir: Path) -> None:
    preprocess_dataset(data_dir, "synthetic")
    meta_path = data_dir / "synthetic" / "prepared" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = 1
    del meta["files"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(LossbenchError, match="preprocess synthetic --force"):
        load_prepared(data_dir, "synthetic")


def test_prepared_and_extracted_folders_respect_the_umask(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = use_registry(tmp_path, monkeypatch, SEQUENCES, archive=True)
    previous = os.umask(0o022)
    try:
        download_dataset(data_dir, "toy", mirror=str(mirror), show_progress=False)
        preprocess_dataset(data_dir, "toy")
    finally:
        os.umask(previous)
    for folder in ("prepared", "raw/extracted"):
        assert (data_dir / "toy" / folder).stat().st_mode & 0o777 == 0o755, folder
    assert (data_dir / "toy" / "prepared" / "split.parquet").stat().st_mode & 0o777 == 0o644


def test_leftovers_of_a_killed_preprocess_are_removed(data_dir: Path) -> None:
    host = socket.gethostname().replace("-", "_")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(gone.stdout)
    parent = data_dir / "synthetic"
    dead = parent / f".prepared-{host}-{dead_pid}-abc123"
    retired = parent / f".retired-{host}-{dead_pid}-abc123"
    old = parent / ".prepared-x1y2z3"  # an older lossbench's name, two days old
    alive = parent / f".prepared-{host}-{os.getpid()}-live99"  # a run still going
    for folder in (dead, retired, old, alive):
        (folder / "part").mkdir(parents=True)
    os.utime(old, (0, 0))
    preprocess_dataset(data_dir, "synthetic")
    assert not dead.exists() and not retired.exists() and not old.exists()
    assert alive.exists()
    assert sorted(p.name for p in parent.iterdir() if p.name.startswith(".")) == [alive.name]


@pytest.mark.parametrize("meta", [b'{"n_users": 3', b"", None], ids=["cut", "empty", "missing"])
def test_verify_and_training_agree_on_a_broken_meta_json(
    meta: bytes | None, data_dir: Path
) -> None:
    """Training reads meta.json first and calls the dataset not prepared without it: verify
    must not say ok."""
    preprocess_dataset(data_dir, "synthetic")
    meta_path = data_dir / "synthetic" / "prepared" / "meta.json"
    meta_path.unlink() if meta is None else meta_path.write_bytes(meta)
    with pytest.raises(LossbenchError, match="not prepared"):
        load_prepared(data_dir, "synthetic")
    verify = cli(data_dir, "verify", "synthetic")
    state = "is missing" if meta is None else "is damaged"
    assert verify.exit_code == 1, verify.output
    assert f"synthetic: DAMAGED: synthetic/prepared/meta.json {state}" in verify.output
    assert "run `lossbench preprocess synthetic --force`" in verify.output
    assert cli(data_dir, "verify").exit_code == 1  # every dataset present, as well
    preprocess_dataset(data_dir, "synthetic", force=True)
    assert cli(data_dir, "verify", "synthetic").exit_code == 0


def test_verify_a_folder_without_runs_is_one_line(data_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli(data_dir, "verify", str(empty))
    assert isinstance(result.exception, LossbenchError)
    assert f"{empty} holds no run folders" in str(result.exception)
