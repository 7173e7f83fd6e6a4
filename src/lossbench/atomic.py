"""Nothing is ever half-written: every file goes to a temporary name, then is renamed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        if temporary.exists():
            os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: Path, value: Any) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(value, indent=2, default=str) + "\n")


def write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Atomically write `path` with a function that writes to a given path."""
    with atomic_path(path) as temporary:
        writer(temporary)


STALE_AFTER_S = 24 * 3600  # a leftover of another host counts as abandoned after a day


def temporary_folder(parent: Path, prefix: str) -> Path:
    """A new folder `parent/<prefix><host>-<pid>-XXXX` to build a result in before renaming it
    into place, with the permissions a plain mkdir would give (mkdtemp's are 0700).

    Leftovers of the same prefix from a process that was killed are removed first: those of
    this host whose process is gone, and any older than a day.
    """
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_folders(parent, prefix)
    host = socket.gethostname().replace("-", "_")
    folder = Path(tempfile.mkdtemp(dir=parent, prefix=f"{prefix}{host}-{os.getpid()}-"))
    os.chmod(folder, 0o777 & ~_umask())
    return folder


def remove_stale_folders(parent: Path, prefix: str) -> None:
    host = socket.gethostname().replace("-", "_")
    for folder in parent.glob(f"{prefix}*"):
        owner_host, _, rest = folder.name.removeprefix(prefix).partition("-")
        pid = rest.partition("-")[0]
        try:
            old = time.time() - folder.stat().st_mtime > STALE_AFTER_S
        except OSError:
            continue
        dead = owner_host == host and pid.isdigit() and not _alive(int(pid))
        if folder.is_dir() and (old or dead):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _umask() -> int:
    """The process umask (reading it requires setting it; set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
