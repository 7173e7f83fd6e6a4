"""The downloaded files of a dataset: where they are and whether they are intact.

Layout of `<data_dir>/<name>/`: `raw/<file name of the URL>` (verified files), `raw/extracted/`
(archive contents, with the size and sha256 of the member read), `trusted_hashes.json` (hashes
the user confirmed for unpinned files). A file is in `raw/` only after it was verified; it counts
as downloaded while its size still matches (a stat, checked by every command), and `preprocess`
and `lossbench verify` check its sha256 too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lossbench.data.archives import extract, extracted_records
from lossbench.data.integrity import damage
from lossbench.data.registry import DatasetEntry, RemoteFile
from lossbench.errors import LossbenchError


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
    """Every file is there with the size it was verified with (a stat each, no hashing)."""
    return bool(entry.remote_files) and not raw_problems(data_dir, entry, hashes=False)


def raw_problems(data_dir: Path, entry: DatasetEntry, *, hashes: bool) -> list[str]:
    """What is missing or damaged among the downloaded files (and the extracted member)."""
    problems = _remote_problems(data_dir, entry, hashes=hashes)
    if entry.member and not problems:
        problems = [p for p in [member_damage(data_dir, entry, hashes=hashes)] if p is not None]
    return problems


def _remote_problems(data_dir: Path, entry: DatasetEntry, *, hashes: bool) -> list[str]:
    problems = []
    for remote in entry.remote_files:
        size, sha256 = expected_record(data_dir, entry, remote)
        path = raw_dir(data_dir, entry.name) / remote.file_name
        problems.append(damage(path, size, sha256, hashes=hashes, label=_label(data_dir, path)))
    return [problem for problem in problems if problem is not None]


def _member_record(data_dir: Path, entry: DatasetEntry) -> dict[str, Any] | None:
    assert entry.member is not None
    return extracted_records(raw_dir(data_dir, entry.name) / "extracted").get(entry.member)


def member_damage(data_dir: Path, entry: DatasetEntry, *, hashes: bool) -> str | None:
    path = interactions_path(data_dir, entry)
    label = _label(data_dir, path)
    record = _member_record(data_dir, entry)
    if record is None:  # extracted by an older lossbench: only a hash check needs the record
        missing = not path.is_file()
        unrecorded = f"{label} has no size and sha256 record (extracted by an older lossbench)"
        return f"{label} is missing" if missing else unrecorded if hashes else None
    return damage(path, record["size"], record["sha256"], hashes=hashes, label=label)


def _label(data_dir: Path, path: Path) -> str:
    """A path as the user knows it: under the data dir when it is there."""
    return str(path.relative_to(data_dir)) if path.is_relative_to(data_dir) else str(path)


def expected_record(
    data_dir: Path, entry: DatasetEntry, remote: RemoteFile
) -> tuple[int | None, str | None]:
    """(size, sha256) a downloaded file must have: pinned, or confirmed by the user."""
    trusted = trusted_hashes(data_dir, entry.name).get(remote.file_name, {})
    size = remote.size or trusted.get("size")
    sha256 = remote.sha256 or trusted.get("sha256")
    return (int(size) if size is not None else None, str(sha256) if sha256 is not None else None)


def verified_sources(data_dir: Path, entry: DatasetEntry) -> dict[str, dict[str, str]]:
    """Check every downloaded file's size and sha256; return `sha256` (file name -> hash of
    each downloaded file) and `read` (path under the dataset's folder -> hash of each file the
    reader parses: an archive's member rather than the archive). A member that no longer
    matches its record is extracted again, once the archive itself verified."""
    problems = _remote_problems(data_dir, entry, hashes=True)
    if not problems and entry.member and member_damage(data_dir, entry, hashes=True):
        extract_member(data_dir, entry)
    problems = problems or raw_problems(data_dir, entry, hashes=True)
    if problems:
        raise LossbenchError(
            f"{entry.name}: {'; '.join(problems)}; run `lossbench download {entry.name} --force`"
        )
    downloaded = {
        remote.file_name: str(expected_record(data_dir, entry, remote)[1])
        for remote in entry.remote_files
    }
    read = {f"raw/{name}": sha256 for name, sha256 in downloaded.items()}
    if entry.member:
        assert entry.file is not None
        record = _member_record(data_dir, entry)
        assert record is not None  # checked above
        del read[f"raw/{entry.file.file_name}"]
        read[f"raw/extracted/{entry.member}"] = str(record["sha256"])
    return {"sha256": downloaded, "read": read}


def extract_member(data_dir: Path, entry: DatasetEntry) -> None:
    assert entry.file is not None and entry.member is not None
    archive = raw_dir(data_dir, entry.name) / entry.file.file_name
    destination = raw_dir(data_dir, entry.name) / "extracted"
    extract(archive, destination, entry.file.file_name, entry.name, [entry.member])


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


def remove_damaged(data_dir: Path, entry: DatasetEntry) -> list[str]:
    """Remove downloaded files whose size changed since they were verified (so they are
    fetched again); returns what was wrong with each."""
    damaged = []
    for remote in entry.remote_files:
        path = raw_dir(data_dir, entry.name) / remote.file_name
        size, _ = expected_record(data_dir, entry, remote)
        problem = damage(path, size, None, hashes=False, label=_label(data_dir, path))
        if path.is_file() and problem is not None:
            path.unlink()
            damaged.append(f"{problem}: fetching it again")
    return damaged
