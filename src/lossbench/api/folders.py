"""Output folders checked before a call starts work: one line naming the path and the
problem, instead of an operating-system error halfway through."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lossbench.errors import LossbenchError


def check_output_folder(path: Path, flag: str, hint: str = "choose another folder") -> None:
    """`path` is, or can become, a folder this process can write in (it is not created)."""
    if path.exists() and not path.is_dir():
        raise LossbenchError(f"{flag} {path} is a file, not a folder; {hint}")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise LossbenchError(f"{flag} {path}: {existing} is a file, not a folder; {hint}")
    try:  # a real write: permission bits do not tell (root, read-only mounts, ACLs)
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".lossbench-write-test-")
    except OSError as error:
        problem = (error.strerror or str(error)).lower()
        raise LossbenchError(
            f"{flag} {path}: cannot write in {existing} ({problem}); {hint}"
        ) from None
    os.close(handle)
    os.unlink(probe)


def check_run_folder(path: Path, flag: str) -> None:
    """`path` names a folder of its own for one run's files, and can become one: not the
    current folder or a parent, whose other files a run's record would not account for."""
    if path.name in ("", ".", ".."):  # typer reads '' as '.'
        raise LossbenchError(
            f"{flag} {str(path)!r} is the current folder or a parent; a run needs a folder of "
            f"its own: give for example {flag} runs/my-run"
        )
    check_output_folder(path, flag)


def check_output_file(path: Path | None, flag: str) -> None:
    """`path` (when given) can be written: not a folder, and its folder is writable."""
    if path is None:
        return
    if path.is_dir():
        raise LossbenchError(f"{flag} {path} is a folder; give a file name such as table.md")
    check_output_folder(path.parent, flag, "choose another file")
