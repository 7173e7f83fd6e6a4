"""Fixtures every test gets, and the installed console script for those that run it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from lossbench.training import softmax_chunk


@pytest.fixture(autouse=True)
def no_softmax_chunk_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training in tests uses the default chunk: no timing, no cache file in the user's data
    folder (the chunk changes no result, so nothing else differs)."""
    monkeypatch.setattr(softmax_chunk, "machine_softmax_chunk", lambda: softmax_chunk.DEFAULT_CHUNK)


# The `lossbench` console script that `pip install` puts next to the interpreter.
SCRIPT = Path(sys.executable).parent / ("lossbench.exe" if os.name == "nt" else "lossbench")


@pytest.fixture(scope="session")
def script() -> Path:
    """The installed console script. CI installs the project into a fresh environment
    (`.ci/run`), so a missing script there is a packaging bug and fails; run from a source tree
    that was never installed, the tests that need it skip."""
    if not SCRIPT.is_file():
        reason = f"no `lossbench` console script beside {sys.executable}: `pip install .` first"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return SCRIPT
