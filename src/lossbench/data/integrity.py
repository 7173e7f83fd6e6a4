"""Is a file intact? Its size (a stat: cheap, checked every time) and its sha256 (a full read:
checked when preprocessing and by `lossbench verify`) against a record made when it was
written or pinned in the dataset registry."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: Path) -> dict[str, Any]:
    """What to keep about a file just written, to tell later whether it changed."""
    return {"size": path.stat().st_size, "sha256": sha256_of(path)}


def damage(
    path: Path, size: int | None, sha256: str | None, *, hashes: bool, label: str | None = None
) -> str | None:
    """None when `path` matches the record, else one phrase naming the file and the problem.

    `hashes=False` checks presence and size only; a None `size` or `sha256` is not checked.
    """
    name = label or str(path)
    try:
        actual_size = path.stat().st_size
    except FileNotFoundError:
        return f"{name} is missing"
    except OSError as error:
        return f"{name} cannot be read ({error.strerror})"
    if size is not None and actual_size != size:
        return f"{name} has {actual_size:,} bytes, expected {size:,} (truncated or changed)"
    if hashes and sha256 is not None:
        try:
            actual = sha256_of(path)
        except OSError as error:
            return f"{name} cannot be read ({error.strerror})"
        if actual != sha256:
            return f"{name} has sha256 {actual}, expected {sha256} (damaged or changed)"
    return None
