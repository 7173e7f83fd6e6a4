"""The `lossbench` console script that `pip install` puts next to the interpreter, run as a
user runs it: usage and domain errors exit 2 with a message and no traceback.

CI installs the project into a fresh environment (`.ci/run`), so a missing script there is a
packaging bug and fails. Run from a source tree that was never installed, the tests skip.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from tests.conftest import SCRIPT  # noqa: F401  (other test modules import it from here)

import lossbench


def run(script: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOSSBENCH_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "100"}
    return subprocess.run(
        [str(script), *args], capture_output=True, text=True, check=False, env=env, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([], "Usage: lossbench"),
        (["trian"], "No such command 'trian'"),
        (["--bogus"], "No such option: --bogus"),
        (["train", "--threads", "0"], "--threads"),
        (["train", "--seed", "x"], "--seed"),
        (["download", "lastfn"], "unknown dataset 'lastfn': did you mean 'lastfm'?"),
        (["verify", "ml1m"], "did you mean 'ml-1m'?"),
        (["preprocess", "lastfm"], "dataset lastfm is not downloaded"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_errors_exit_2_without_traceback(
    script: Path, tmp_path: Path, args: list[str], words: str
) -> None:
    completed = run(script, tmp_path, *args)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2, output
    assert "Traceback" not in output
    assert words in " ".join(output.split()), output


def test_version_and_help(script: Path, tmp_path: Path) -> None:
    version = run(script, tmp_path, "--version")
    assert (version.returncode, version.stdout.strip()) == (0, f"lossbench {lossbench.__version__}")
    help_text = run(script, tmp_path, "--help")
    assert help_text.returncode == 0 and "verify" in help_text.stdout
