"""Verified downloads: stream into `.part` (resumable), check size and sha256, rename into place.

The layout of the downloaded files and their checks are in `raw_files.py`.
"""

from __future__ import annotations

import http.client
import os
import shutil
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlparse
from urllib.request import Request, urlopen

from rich import progress as bars
from rich.console import Console

from lossbench.atomic import write_json
from lossbench.data.archives import extract
from lossbench.data.integrity import CHUNK, sha256_of
from lossbench.data.raw_files import (
    attributes_path,
    extract_member,
    interactions_path,
    is_downloaded,
    member_damage,
    raw_dir,
    remove_damaged,
    source_sha256,
    trusted_hashes,
)
from lossbench.data.registry import DatasetEntry, Registry, RemoteFile, get_dataset
from lossbench.errors import LossbenchError

# Seconds a connection may stay silent (connecting, or between bytes) before the download
# stops; what arrived is kept for the rerun.
TIMEOUT_SECONDS = 60.0


class _Readable(Protocol):
    def read1(self, size: int, /) -> bytes: ...


class DownloadInterrupted(LossbenchError):
    """The transfer stopped early (or awaits a hash confirmation); the `.part` file is kept."""


def download_dataset(
    data_dir: Path,
    name: str,
    *,
    mirror: str | None = None,
    force: bool = False,
    trust_new_hash: bool = False,
    show_progress: bool = True,
    registry: Registry | None = None,
) -> str:
    """Fetch and verify every file of `name`; returns a one-line account of what was done."""
    entry = get_dataset(name, registry, data_dir)
    if entry.local_file is not None:
        return f"{name}: a local file ({entry.local_file.path}), nothing to download"
    if not entry.remote_files:
        return f"{name}: generated locally, nothing to download"
    folder = data_dir / name
    existed = folder.exists()
    try:
        if force and raw_dir(data_dir, name).exists():
            shutil.rmtree(raw_dir(data_dir, name))
        damaged = remove_damaged(data_dir, entry)
        if not damaged and is_downloaded(data_dir, entry):
            return (
                f"{name}: already downloaded (sizes match), nothing to do; "
                f"`lossbench verify {name}` also checks the sha256"
            )
        raw_dir(data_dir, name).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LossbenchError(
            f"cannot write to data dir {data_dir} ({error.strerror}); "
            "pass --data-dir (or LOSSBENCH_DATA_DIR) a writable folder"
        ) from None
    created: list[Path] = []
    try:
        for remote in entry.remote_files:
            target = raw_dir(data_dir, name) / remote.file_name
            if not target.is_file():
                _fetch_verified(data_dir, entry, remote, mirror, trust_new_hash, show_progress)
                created.append(target)
        if entry.member and (problem := member_damage(data_dir, entry, hashes=False)):
            extract_member(data_dir, entry)  # the archive is intact: only the extraction changed
            damaged.append(f"{problem}: extracted it again from the archive")
    except (DownloadInterrupted, KeyboardInterrupt):
        _remove(created + [raw_dir(data_dir, name) / "extracted"])  # keep the resumable .part
        raise
    except BaseException as error:
        _remove(created + [raw_dir(data_dir, name)])
        if not existed or not any(folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
        if isinstance(error, OSError):
            raise LossbenchError(
                f"{name}: cannot write the download ({error}); free space or "
                "pass --data-dir a writable folder"
            ) from None
        raise
    where = f"mirror {mirror}" if mirror else "source"
    done = [f"downloaded {len(created)} file(s) from {where}, size and sha256 verified"]
    return f"{name}: {'; '.join(damaged + (done if created or not damaged else []))}"


def _fetch_verified(
    data_dir: Path,
    entry: DatasetEntry,
    remote: RemoteFile,
    mirror: str | None,
    trust_new_hash: bool,
    show_progress: bool,
) -> None:
    target = raw_dir(data_dir, entry.name) / remote.file_name
    part = target.with_name(target.name + ".part")
    source = _source(entry.name, remote, mirror)
    if isinstance(source, Path):
        with source.open("rb") as stream, part.open("wb") as out:
            _copy(stream, out, source.stat().st_size, str(source), remote.file_name, show_progress)
    else:
        _http_fetch(source, part, remote.size, show_progress, mirror)

    trusted = trusted_hashes(data_dir, entry.name).get(remote.file_name, {})
    expected_size = remote.size or trusted.get("size")
    actual_size = part.stat().st_size
    if expected_size is not None and actual_size != expected_size:
        part.unlink()
        raise LossbenchError(
            f"{remote.file_name} from {source}: size mismatch: expected {expected_size} bytes, "
            f"got {actual_size}; the file is truncated or changed, check the source or mirror"
        )
    actual = sha256_of(part)
    expected = remote.sha256 or trusted.get("sha256")
    if expected is not None and actual != expected:
        part.unlink()
        raise LossbenchError(
            f"{remote.file_name} from {source}: checksum mismatch: expected sha256 {expected}, "
            f"got {actual}; the file is corrupt or changed, nothing was kept"
        )
    if expected is None:
        if not trust_new_hash:
            raise DownloadInterrupted(
                f"{remote.file_name} has no pinned sha256; it has sha256 {actual} "
                f"({actual_size} bytes); if you trust {source}, run the same command again "
                "with --trust-new-hash to record it"
            )
        record = trusted_hashes(data_dir, entry.name)
        record[remote.file_name] = {"sha256": actual, "size": actual_size}
        write_json(data_dir / entry.name / "trusted_hashes.json", record)
    if remote.is_archive:
        members = [entry.member] if entry.member else []
        destination = raw_dir(data_dir, entry.name) / "extracted"
        extract(part, destination, remote.file_name, entry.name, members)
    os.replace(part, target)


def _source(name: str, remote: RemoteFile, mirror: str | None) -> str | Path:
    """The URL or local file to fetch: `<mirror>/<dataset name>/<file name of the URL>`."""
    if mirror is None:
        return remote.url
    if mirror.startswith(("http://", "https://")):
        return f"{mirror.rstrip('/')}/{quote(name)}/{quote(remote.file_name)}"
    base = Path(urlparse(mirror).path if mirror.startswith("file://") else mirror).expanduser()
    path = base / name / remote.file_name
    if not path.is_file():
        raise LossbenchError(
            f"mirror {mirror} has no {name}/{remote.file_name}; "
            "check the mirror folder or drop --mirror to use the original URL"
        )
    return path


def _http_fetch(
    url: str, part: Path, size: int | None, show_progress: bool, mirror: str | None
) -> None:
    """Stream `url` into `part`, resuming from its current length with an HTTP Range request."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset >= size:
        if offset == size:
            return  # complete from an earlier run (for example awaiting --trust-new-hash)
        part.unlink()
        offset = 0
    headers = {"User-Agent": "lossbench", **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        response = urlopen(Request(url, headers=headers), timeout=TIMEOUT_SECONDS)
    except HTTPError as error:
        if error.code == 416 and offset:
            return  # nothing after `offset`: the verification decides
        raise LossbenchError(
            f"download of {url} failed: HTTP {error.code} {error.reason}; check the URL or mirror"
        ) from None
    except (URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        fix = (
            f"check that mirror {mirror} is up, or drop --mirror to use the original URL"
            if mirror
            else "check the network, or use --mirror"
        )
        raise DownloadInterrupted(f"cannot reach {url} ({reason}); {fix}, and run again") from None
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored the Range header: start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length else size
        with part.open("ab" if offset else "wb") as out:
            label = part.name.removesuffix(".part")
            received = offset + _copy(response, out, total, url, label, show_progress, offset)
    if total is not None and received < total:
        raise DownloadInterrupted(
            f"download of {url} was cut after {received:,} of {total:,} bytes (kept); "
            "run the same command again to resume from there"
        )


def _copy(
    stream: _Readable,
    out: BinaryIO,
    total: int | None,
    source: str,
    label: str,
    show: bool,
    start: int = 0,
) -> int:
    """Copy `stream` (read from `source`) into `out` with a progress bar; returns the number of
    bytes copied. `read1` returns what has arrived: a stall keeps every byte received before
    it (`read` would wait for a whole chunk and lose the part of it that came)."""
    columns = (bars.TextColumn("{task.description}"), bars.BarColumn(), bars.DownloadColumn(),
               bars.TransferSpeedColumn(), bars.TimeRemainingColumn())  # fmt: skip
    copied = 0
    console = Console(stderr=True)
    with bars.Progress(*columns, console=console, transient=True, disable=not show) as bar:
        task = bar.add_task(label, total=total, completed=start)
        try:
            while chunk := stream.read1(CHUNK):
                out.write(chunk)
                copied += len(chunk)
                bar.advance(task, len(chunk))
        except (http.client.HTTPException, TimeoutError, ConnectionError) as error:
            out.flush()
            why = (
                f"no data for {TIMEOUT_SECONDS:g} s"
                if isinstance(error, TimeoutError)
                else str(error) or type(error).__name__
            )
            of = f" of {total:,}" if total is not None else ""
            raise DownloadInterrupted(
                f"download of {source} stopped after {start + copied:,}{of} bytes ({why}; "
                "they are kept); run the same command again to resume from there"
            ) from None
    return copied


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


__all__ = [  # the layout helpers are used from here too
    "DownloadInterrupted",
    "attributes_path",
    "download_dataset",
    "interactions_path",
    "is_downloaded",
    "raw_dir",
    "source_sha256",
    "trusted_hashes",
]
