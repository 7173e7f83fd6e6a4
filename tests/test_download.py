"""Downloads against a real HTTP server on 127.0.0.1: resume, checksums, archives, mirrors."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lossbench.data.download import (
    DownloadInterrupted,
    download_dataset,
    interactions_path,
    is_downloaded,
    source_sha256,
)
from lossbench.data.registry import get_dataset, load_registry
from lossbench.errors import LossbenchError

SEQUENCES = b"".join(f"{u} {u} {u + 1} {u + 2} {u + 3}\n".encode() for u in range(1, 2000))


class FileServer:
    """Serves `files` (path -> bytes) with Range support; can cut the next response short,
    stall after some bytes, or hang before answering (both until `release` is set)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_next_after: int | None = None
        self.stall_after: int | None = None
        self.hang = False
        self.release = threading.Event()
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                body = server.files.get(self.path)
                server.ranges.append(self.headers.get("Range"))
                if server.hang:
                    server.release.wait(timeout=30)
                    return
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if (header := self.headers.get("Range")) is not None:
                    start = int(header.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if server.cut_next_after is not None:
                    payload, server.cut_next_after = payload[: server.cut_next_after], None
                    self.close_connection = True
                if server.stall_after is not None:
                    self.wfile.write(payload[: server.stall_after])
                    self.wfile.flush()
                    server.release.wait(timeout=30)
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server() -> Iterator[FileServer]:
    files = FileServer()
    thread = threading.Thread(target=files.httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield files
    files.release.set()
    files.httpd.shutdown()
    files.httpd.server_close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_registry(path: Path, entries: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path.write_text(entries)
    monkeypatch.setenv("LOSSBENCH_DATASETS", str(path))


def file_entry(name: str, url: str, data: bytes, *, sha: str | None = None, extra: str = "") -> str:
    return (
        f'[{name}]\nsource = "test"\nformat = "s3rec"\n{extra}\n'
        f'[{name}.file]\nurl = "{url}"\nsize = {len(data)}\nsha256 = "{sha or sha256(data)}"\n'
    )


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_download_verifies_and_second_run_is_a_no_op(server, data_dir, tmp_path, monkeypatch):
    server.files["/seq.txt"] = SEQUENCES
    write_registry(
        tmp_path / "r.toml", file_entry("toy", f"{server.url}/seq.txt", SEQUENCES), monkeypatch
    )
    message = download_dataset(data_dir, "toy", show_progress=False)
    assert "verified" in message
    assert (data_dir / "toy" / "raw" / "seq.txt").read_bytes() == SEQUENCES
    assert is_downloaded(data_dir, get_dataset("toy"))
    assert "already downloaded" in download_dataset(data_dir, "toy", show_progress=False)
    assert len(server.ranges) == 1  # the second run did not touch the network


def test_resume_after_a_cut_connection(server, data_dir, tmp_path, monkeypatch):
    server.files["/seq.txt"] = SEQUENCES
    write_registry(
        tmp_path / "r.toml", file_entry("toy", f"{server.url}/seq.txt", SEQUENCES), monkeypatch
    )
    server.cut_next_after = 1000
    with pytest.raises(DownloadInterrupted, match="run the same command again to resume"):
        download_dataset(data_dir, "toy", show_progress=False)
    part = data_dir / "toy" / "raw" / "seq.txt.part"
    assert part.stat().st_size == 1000
    assert [p.name for p in (data_dir / "toy" / "raw").iterdir()] == ["seq.txt.part"]

    download_dataset(data_dir, "toy", show_progress=False)
    assert server.ranges == [None, "bytes=1000-"]
    assert (data_dir / "toy" / "raw" / "seq.txt").read_bytes() == SEQUENCES
    assert not part.exists()


def test_a_stalled_download_keeps_and_reports_the_bytes_received(
    server, data_dir, tmp_path, monkeypatch
):
    """500 KB arrive, then nothing: the message gives the bytes received and the URL, and the
    rerun resumes from them."""
    body = SEQUENCES * 40  # ~1.7 MB: more than one 1 MiB chunk
    url = f"{server.url}/seq.txt"
    server.files["/seq.txt"] = body
    write_registry(tmp_path / "r.toml", file_entry("toy", url, body), monkeypatch)
    monkeypatch.setattr("lossbench.data.download.TIMEOUT_SECONDS", 0.5)
    server.stall_after = 500_000
    with pytest.raises(DownloadInterrupted) as stalled:
        download_dataset(data_dir, "toy", show_progress=False)
    message = str(stalled.value)
    assert f"download of {url} stopped after 500,000 of {len(body):,} bytes" in message
    assert "no data for 0.5 s" in message and "run the same command again" in message
    assert (data_dir / "toy" / "raw" / "seq.txt.part").stat().st_size == 500_000
    server.stall_after = None
    download_dataset(data_dir, "toy", show_progress=False)
    assert server.ranges[-1] == "bytes=500000-"
    assert (data_dir / "toy" / "raw" / "seq.txt").read_bytes() == body


def test_a_hanging_mirror_is_named_and_never_told_to_use_a_mirror(
    server, data_dir, tmp_path, monkeypatch
):
    server.files["/base/toy/seq.txt"] = SEQUENCES
    write_registry(
        tmp_path / "r.toml",
        file_entry("toy", "https://example.invalid/data/seq.txt", SEQUENCES),
        monkeypatch,
    )
    monkeypatch.setattr("lossbench.data.download.TIMEOUT_SECONDS", 0.5)
    server.hang = True
    mirror = f"{server.url}/base"
    with pytest.raises(DownloadInterrupted) as hung:
        download_dataset(data_dir, "toy", mirror=mirror, show_progress=False)
    message = str(hung.value)
    assert message.startswith(f"cannot reach {mirror}/toy/seq.txt (timed out)")
    assert f"check that mirror {mirror} is up, or drop --mirror" in message
    assert "use --mirror" not in message


def test_checksum_mismatch_names_both_hashes_and_leaves_nothing(
    server, data_dir, tmp_path, monkeypatch
):
    altered = SEQUENCES[:-2] + b"9\n"
    server.files["/seq.txt"] = altered
    entry = file_entry("toy", f"{server.url}/seq.txt", SEQUENCES)
    write_registry(tmp_path / "r.toml", entry, monkeypatch)
    with pytest.raises(LossbenchError) as error:
        download_dataset(data_dir, "toy", show_progress=False)
    assert sha256(SEQUENCES) in str(error.value) and sha256(altered) in str(error.value)
    assert not (data_dir / "toy").exists()


def test_size_mismatch_says_expected_and_actual(server, data_dir, tmp_path, monkeypatch):
    server.files["/seq.txt"] = SEQUENCES + b"1 2 3\n"
    entry = file_entry("toy", f"{server.url}/seq.txt", SEQUENCES)
    write_registry(tmp_path / "r.toml", entry, monkeypatch)
    with pytest.raises(
        LossbenchError, match=f"expected {len(SEQUENCES)} bytes, got {len(SEQUENCES) + 6}"
    ):
        download_dataset(data_dir, "toy", show_progress=False)
    assert not (data_dir / "toy").exists()


def test_missing_file_on_server(server, data_dir, tmp_path, monkeypatch):
    write_registry(
        tmp_path / "r.toml", file_entry("toy", f"{server.url}/gone.txt", b"x"), monkeypatch
    )
    with pytest.raises(LossbenchError, match="HTTP 404"):
        download_dataset(data_dir, "toy", show_progress=False)
    assert not (data_dir / "toy").exists()


def test_archive_is_extracted(server, data_dir, tmp_path, monkeypatch):
    archive = zipped({"toy/ratings.txt": SEQUENCES})
    server.files["/toy.zip"] = archive
    entry = file_entry("toy", f"{server.url}/toy.zip", archive, extra='member = "toy/ratings.txt"')
    write_registry(tmp_path / "r.toml", entry, monkeypatch)
    download_dataset(data_dir, "toy", show_progress=False)
    assert interactions_path(data_dir, get_dataset("toy")).read_bytes() == SEQUENCES


def test_archive_member_escaping_the_folder_is_refused(server, data_dir, tmp_path, monkeypatch):
    archive = zipped({"toy/ratings.txt": SEQUENCES, "../../escaped.txt": b"gotcha"})
    server.files["/toy.zip"] = archive
    entry = file_entry("toy", f"{server.url}/toy.zip", archive, extra='member = "toy/ratings.txt"')
    write_registry(tmp_path / "r.toml", entry, monkeypatch)
    with pytest.raises(LossbenchError, match="outside the dataset folder"):
        download_dataset(data_dir, "toy", show_progress=False)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (data_dir / "toy").exists()


def test_tar_member_escaping_the_folder_is_refused(server, data_dir, tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in (("toy/ratings.txt", SEQUENCES), ("toy/../../escaped.txt", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    server.files["/toy.tar.gz"] = buffer.getvalue()
    entry = file_entry(
        "toy", f"{server.url}/toy.tar.gz", buffer.getvalue(), extra='member = "toy/ratings.txt"'
    )
    write_registry(tmp_path / "r.toml", entry, monkeypatch)
    with pytest.raises(LossbenchError, match="outside the dataset folder"):
        download_dataset(data_dir, "toy", show_progress=False)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (data_dir / "toy").exists()


def test_corrupt_archive_is_reported(server, data_dir, tmp_path, monkeypatch):
    archive = zipped({"toy/ratings.txt": SEQUENCES})[:-30]  # central directory cut off
    server.files["/toy.zip"] = archive
    entry = file_entry("toy", f"{server.url}/toy.zip", archive, extra='member = "toy/ratings.txt"')
    write_registry(tmp_path / "r.toml", entry, monkeypatch)
    with pytest.raises(LossbenchError, match="truncated or corrupt"):
        download_dataset(data_dir, "toy", show_progress=False)
    assert not (data_dir / "toy").exists()


def test_mirror_from_a_local_folder(data_dir, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "toy").mkdir(parents=True)
    (mirror / "toy" / "seq.txt").write_bytes(SEQUENCES)
    entry = file_entry("toy", "https://example.invalid/data/seq.txt", SEQUENCES)
    write_registry(tmp_path / "r.toml", entry, monkeypatch)
    message = download_dataset(data_dir, "toy", mirror=str(mirror), show_progress=False)
    assert "mirror" in message
    assert (data_dir / "toy" / "raw" / "seq.txt").read_bytes() == SEQUENCES


def test_mirror_missing_the_file(data_dir, tmp_path, monkeypatch):
    entry = file_entry("toy", "https://example.invalid/data/seq.txt", SEQUENCES)
    write_registry(tmp_path / "r.toml", entry, monkeypatch)
    with pytest.raises(LossbenchError, match="has no toy/seq.txt"):
        download_dataset(data_dir, "toy", mirror=str(tmp_path), show_progress=False)
    assert not (data_dir / "toy").exists()


def test_mirror_over_http(server, data_dir, tmp_path, monkeypatch):
    server.files["/base/toy/seq.txt"] = SEQUENCES
    entry = file_entry("toy", "https://example.invalid/data/seq.txt", SEQUENCES)
    write_registry(tmp_path / "r.toml", entry, monkeypatch)
    download_dataset(data_dir, "toy", mirror=f"{server.url}/base", show_progress=False)
    assert (data_dir / "toy" / "raw" / "seq.txt").read_bytes() == SEQUENCES


def test_unpinned_hash_needs_confirmation(server, data_dir, tmp_path, monkeypatch):
    server.files["/seq.txt"] = SEQUENCES
    entry = (
        '[toy]\nsource = "test"\nformat = "s3rec"\n[toy.file]\n'
        f'url = "{server.url}/seq.txt"\nconfirm_hash_on_first_download = true\n'
    )
    write_registry(tmp_path / "r.toml", entry, monkeypatch)
    with pytest.raises(DownloadInterrupted, match=f"sha256 {sha256(SEQUENCES)}.*--trust-new-hash"):
        download_dataset(data_dir, "toy", show_progress=False)
    download_dataset(data_dir, "toy", trust_new_hash=True, show_progress=False)
    assert source_sha256(data_dir, get_dataset("toy")) == {"seq.txt": sha256(SEQUENCES)}
    # The recorded hash now guards later downloads.
    server.files["/seq.txt"] = SEQUENCES.replace(b"1", b"7")
    with pytest.raises(LossbenchError, match="checksum mismatch"):
        download_dataset(data_dir, "toy", force=True, show_progress=False)


def test_real_registry_entries_point_at_their_files() -> None:
    registry = load_registry()
    assert registry["lastfm"].attributes is not None
    assert registry["lastfm"].attributes.file_name == "LastFM_item2attributes.json"
    assert registry["ml-1m"].file is not None and registry["ml-1m"].file.is_archive


def test_atomic_writes_get_normal_permissions(tmp_path: Path) -> None:
    import os

    from lossbench.atomic import write_json

    target = tmp_path / "x.json"
    write_json(target, {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
