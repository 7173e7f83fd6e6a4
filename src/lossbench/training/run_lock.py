"""One process at a time per run folder: an advisory lock file beside it, holding its pid.

`fcntl.flock` locks are released by the kernel when their process ends, however it ends, so a
killed run never leaves a stale lock. The lock file is removed on release; a process that
locked a file which was removed meanwhile (the holder's release) locks the new one instead.
Where `fcntl` does not exist (Windows) runs are not locked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def lock_path(run_dir: Path) -> Path:
    return run_dir.with_name(f".{run_dir.name}.lock")


@contextmanager
def run_lock(run_dir: Path, wait: bool) -> Iterator[bool]:
    """Hold `run_dir`'s lock for the block; yields False at once, without it, when another
    process holds it and `wait` is False."""
    if fcntl is None:  # pragma: no cover - Windows
        yield True
        return
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(handle)
            yield False
            return
        if _same_file(handle, path):
            break
        os.close(handle)  # the holder removed it on release: lock the current file
    try:
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()}\n".encode())
        yield True
    finally:
        path.unlink(missing_ok=True)
        os.close(handle)


def lock_holder(run_dir: Path) -> int | None:
    """The pid written by the process holding `run_dir`'s lock, if any can be read."""
    try:
        return int(lock_path(run_dir).read_text().strip())
    except (OSError, ValueError):
        return None


def _same_file(handle: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(handle)
    return (opened.st_dev, opened.st_ino) == (on_disk.st_dev, on_disk.st_ino)
