"""Archive extraction: refuse unsafe members, build in a temporary folder, rename into place,
and record the size and sha256 of the files lossbench reads so later damage is noticed."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from lossbench.atomic import temporary_folder
from lossbench.data.integrity import file_record
from lossbench.errors import LossbenchError

MANIFEST = ".lossbench-files.json"  # inside the extracted folder: member -> size, sha256
TEMPORARY_PREFIX = ".extracting-"


def extract(archive: Path, destination: Path, label: str, name: str, recorded: list[str]) -> None:
    """Extract `archive` into `destination`, recording the members named in `recorded`."""
    temporary = temporary_folder(destination.parent, TEMPORARY_PREFIX)
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
        records = {m: file_record(temporary / m) for m in recorded if (temporary / m).is_file()}
        (temporary / MANIFEST).write_text(json.dumps(records, indent=2) + "\n")
        shutil.rmtree(destination, ignore_errors=True)
        os.replace(temporary, destination)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as error:
        raise LossbenchError(
            f"archive {label} is truncated or corrupt ({error}); "
            f"run `lossbench download {name} --force`"
        ) from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def extracted_records(destination: Path) -> dict[str, dict[str, Any]]:
    """member -> {size, sha256} recorded at extraction ({} for an older extraction)."""
    try:
        records = json.loads((destination / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def _check_member(member: str, root: Path, label: str, special: bool) -> None:
    path = PurePosixPath(member.replace("\\", "/"))
    inside = (root / path).resolve().is_relative_to(root.resolve())
    if special or path.is_absolute() or ".." in path.parts or not inside:
        raise LossbenchError(
            f"archive {label} has a member {member!r} that is a link or would land outside the "
            "dataset folder; refusing to extract it (the archive is unsafe)"
        )
