"""Verified downloads: stream into `.part` (resumable), check size and sha256, rename into place.

Layout of `<data_dir>/<name>/`: `raw/<file name of the URL>` (verified files), `raw/extracted/`
(archive contents), `trusted_hashes.json` (hashes the user confirmed for unpinned files).
A file is in `raw/` only after it was verified, so its presence means "downloaded".
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlparse
from urllib.request import Request, urlopen

from rich import progress as bars
from rich.console import Console

from lossbench.atomic import write_json
from lossbench.data.registry import DatasetEntry, Registry, RemoteFile, get_dataset
from lossbench.errors import LossbenchError

CHUNK = 1 << 20


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class DownloadInterrupted(LossbenchError):
    """The transfer stopped early (or awaits a hash confirmation); the `.part` file is kept."""


def raw_dir(data_dir: Path, name: str) -> Path:
    return data_dir / name / "raw"


def interactions_path(data_dir: Path, entry: DatasetEntry) -> Path:
    """The file the reader parses: the downloaded file, or the archive member once extracted."""
    assert entry.file is not None
    raw = raw_dir(data_dir, entry.name)
    return raw / "extracted" / entry.member if entry.member else raw / entry.file.file_name


def attributes_path(data_dir: Path, entry: DatasetEntry) -> Path | None:
    if entry.attributes is None:
        return None
    return raw_dir(data_dir, entry.name) / entry.attributes.file_name


def is_downloaded(data_dir: Path, entry: DatasetEntry) -> bool:
    raw = raw_dir(data_dir, entry.name)
    present = all((raw / f.file_name).is_file() for f in entry.remote_files)
    return bool(entry.remote_files) and present and interactions_path(data_dir, entry).exists()


def trusted_hashes(data_dir: Path, name: str) -> dict[str, dict[str, int | str]]:
    path = data_dir / name / "trusted_hashes.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def source_sha256(data_dir: Path, entry: DatasetEntry) -> dict[str, str]:
    """File name -> sha256 of each verified source file (pinned, or confirmed by the user)."""
    trusted = trusted_hashes(data_dir, entry.name)
    return {
        f.file_name: f.sha256 or str(trusted.get(f.file_name, {}).get("sha256", "unknown"))
        for f in entry.remote_files
    }


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
        if is_downloaded(data_dir, entry):
            return f"{name}: already downloaded and verified, nothing to do"
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
    return f"{name}: downloaded {len(created)} file(s) from {where}, size and sha256 verified"


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
            _copy(stream, out, source.stat().st_size, remote.file_name, show_progress)
    else:
        _http_fetch(source, part, remote.size, show_progress)

    trusted = trusted_hashes(data_dir, entry.name).get(remote.file_name, {})
    expected_size = remote.size or trusted.get("size")
    actual_size = part.stat().st_size
    if expected_size is not None and actual_size != expected_size:
        part.unlink()
        raise LossbenchError(
            f"{remote.file_name} from {source}: size mismatch: expected {expected_size} bytes, "
            f"got {actual_size}; the file is truncated or changed, check the source or mirror"
        )
    actual = _sha256(part)
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
        _extract(part, raw_dir(data_dir, entry.name) / "extracted", remote.file_name, entry.name)
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


def _http_fetch(url: str, part: Path, size: int | None, show_progress: bool) -> None:
    """Stream `url` into `part`, resuming from its current length with an HTTP Range request."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset >= size:
        if offset == size:
            return  # complete from an earlier run (for example awaiting --trust-new-hash)
        part.unlink()
        offset = 0
    headers = {"User-Agent": "lossbench", **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        response = urlopen(Request(url, headers=headers), timeout=60)
    except HTTPError as error:
        if error.code == 416 and offset:
            return  # nothing after `offset`: the verification decides
        raise LossbenchError(
            f"download of {url} failed: HTTP {error.code} {error.reason}; check the URL or mirror"
        ) from None
    except (URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadInterrupted(
            f"cannot reach {url} ({reason}); check the network (or use --mirror) and run again"
        ) from None
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored the Range header: start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length else size
        with part.open("ab" if offset else "wb") as out:
            label = part.name.removesuffix(".part")
            received = offset + _copy(response, out, total, label, show_progress, offset)
    if total is not None and received < total:
        raise DownloadInterrupted(
            f"download of {url} was cut after {received} of {total} bytes; "
            "run the same command again to resume"
        )


def _copy(
    stream: _Readable, out: BinaryIO, total: int | None, label: str, show: bool, start: int = 0
) -> int:
    """Copy `stream` into `out` with a progress bar; returns the number of bytes copied."""
    columns = (bars.TextColumn("{task.description}"), bars.BarColumn(), bars.DownloadColumn(),
               bars.TransferSpeedColumn(), bars.TimeRemainingColumn())  # fmt: skip
    copied = 0
    console = Console(stderr=True)
    with bars.Progress(*columns, console=console, transient=True, disable=not show) as bar:
        task = bar.add_task(label, total=total, completed=start)
        try:
            while chunk := stream.read(CHUNK):
                out.write(chunk)
                copied += len(chunk)
                bar.advance(task, len(chunk))
        except (http.client.HTTPException, TimeoutError, ConnectionError) as error:
            raise DownloadInterrupted(
                f"download of {label} was cut after {start + copied} bytes ({error!r}); "
                "run the same command again to resume"
            ) from None
    return copied


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _extract(archive: Path, destination: Path, label: str, name: str) -> None:
    """Extract into a temporary folder, then rename; refuse any member that could escape."""
    temporary = Path(tempfile.mkdtemp(dir=destination.parent, prefix=".extracting-"))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zipped:
                for info in zipped.infolist():  # mode bits 0xA...: a symbolic link
                    _check_member(info.filename, temporary, label, info.external_attr >> 28 == 0xA)
                zipped.extractall(temporary)
        else:
            with tarfile.open(archive) as tarred:
                for member in tarred.getmembers():
                    special = not (member.isfile() or member.isdir())
                    _check_member(member.name, temporary, label, special)
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tarred.extractall(temporary, **safe)  # type: ignore[arg-type]
        shutil.rmtree(destination, ignore_errors=True)
        os.replace(temporary, destination)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as error:
        raise LossbenchError(
            f"archive {label} is truncated or corrupt ({error}); "
            f"run `lossbench download {name} --force`"
        ) from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _check_member(member: str, root: Path, label: str, special: bool) -> None:
    path = PurePosixPath(member.replace("\\", "/"))
    inside = (root / path).resolve().is_relative_to(root.resolve())
    if special or path.is_absolute() or ".." in path.parts or not inside:
        raise LossbenchError(
            f"archive {label} has a member {member!r} that is a link or would land outside the "
            "dataset folder; refusing to extract it (the archive is unsafe)"
        )


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
