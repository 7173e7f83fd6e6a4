"""Damaged run files, as the installed `lossbench` script meets them: `report` and `versus`
name the file in one line (exit 2), a resumed `compare` sets the damaged run aside and
retrains it, `verify RUNS_DIR` hashes every file a run recorded; and a reader that closes the
pipe (`lossbench compare ... | head -1`) does not stop the comparison."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.test_installed_script import SCRIPT, run

RUN = Path("synthetic/sasrec/bce/seed0")
OTHER = Path("synthetic/sasrec/ce/seed0")
SMOKE = ["compare", "--smoke", "--losses", "bce,ce", "--seeds", "0", "--max-epochs", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-run comparison (bce and ce, one seed), trained once for this module."""
    if not SCRIPT.is_file():
        pytest.skip(f"no `lossbench` console script at {SCRIPT}: `pip install .` first")
    root = tmp_path_factory.mktemp("trained")
    completed = run(SCRIPT, root, *SMOKE, "--out", str(root / "out"))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return root


@pytest.fixture
def copy(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained comparison, with the same data folder, to damage."""
    shutil.copytree(trained / "out", tmp_path / "out")
    (tmp_path / "data").symlink_to(trained / "data")
    return tmp_path


def cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def overwrite(path: Path) -> None:
    """Garbage of the same size: only reading it (or its sha256) tells."""
    path.write_bytes(
        bytes(range(256)) * (path.stat().st_size // 256) + b"x" * (path.stat().st_size % 256)
    )


def squeezed(text: str) -> str:
    return "".join(text.split())


def one_line_naming(completed: subprocess.CompletedProcess[str], path: Path) -> None:
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2, output
    assert "Traceback" not in output and len(completed.stderr.strip().splitlines()) == 1, output
    assert squeezed(str(path)) in squeezed(output), output
    assert squeezed("rerun the comparison with the same --out") in squeezed(output)


DAMAGES = {
    "metrics.json cut": ("metrics.json", cut),
    "metrics.json overwritten": ("metrics.json", overwrite),
    "test_ranks.parquet cut": ("test_ranks.parquet", cut),
    "test_ranks.parquet overwritten": ("test_ranks.parquet", overwrite),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_report_and_versus_name_a_damaged_run_file(copy: Path, damage: str) -> None:
    file_name, harm = DAMAGES[damage]
    out = copy / "out"
    harm(out / RUN / file_name)
    one_line_naming(run(SCRIPT, copy, "report", str(out), "--print-only"), out / RUN / file_name)
    versus = run(SCRIPT, copy, "versus", str(out / RUN), str(out / OTHER))
    one_line_naming(versus, out / RUN / file_name)


@pytest.mark.parametrize("damage", ["metrics.json cut", "test_ranks.parquet overwritten"])
def test_verify_names_a_damaged_run_file(copy: Path, damage: str) -> None:
    file_name, harm = DAMAGES[damage]
    out = copy / "out"
    harm(out / RUN / file_name)
    verify = run(SCRIPT, copy, "verify", str(out))
    assert verify.returncode == 1, verify.stdout + verify.stderr
    lines = verify.stdout.splitlines()
    assert len(lines) == 2 and "Traceback" not in verify.stderr
    damaged = next(line for line in lines if "DAMAGED" in line)
    assert damaged.startswith(f"{out / RUN}: DAMAGED: {out / RUN / file_name}")
    assert f"{out / OTHER}: ok, size and sha256 match (4 recorded files)" in lines


def test_verify_runs_ok_and_as_json(trained: Path) -> None:
    out = trained / "out"
    verify = run(SCRIPT, trained, "verify", str(out), "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    document = json.loads(verify.stdout)  # the lines go to standard error
    assert document["passed"] is True and document["datasets"] == []
    assert [check["run_dir"] for check in document["runs"]] == [str(out / RUN), str(out / OTHER)]
    assert {check["files"] for check in document["runs"]} == {4}
    record = json.loads((out / RUN / "metrics.json").read_text())["files"]
    assert sorted(record) == ["config.json", "history.csv", "model.pt", "test_ranks.parquet"]
    ranks = out / RUN / "test_ranks.parquet"
    assert record["test_ranks.parquet"]["size"] == ranks.stat().st_size


def test_a_resumed_compare_retrains_a_damaged_run(copy: Path) -> None:
    out = copy / "out"
    kept = json.loads((out / OTHER / "metrics.json").read_text())
    original = json.loads((out / RUN / "metrics.json").read_text())
    cut(out / RUN / "metrics.json")
    resumed = run(SCRIPT, copy, *SMOKE, "--out", str(out))
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output
    expected = f"{out / RUN} is damaged ({out / RUN / 'metrics.json'} is damaged"
    assert squeezed(expected) in squeezed(output), output  # the console folds long paths
    assert squeezed("reusing 1 finished run(s) of 2") in squeezed(output)
    (aside,) = (out / RUN.parent).glob("seed0.replaced-*")
    assert aside.joinpath("metrics.json").stat().st_size < len(json.dumps(original))  # kept
    retrained = json.loads((out / RUN / "metrics.json").read_text())
    assert retrained["test"] == original["test"]  # same seed, same settings: same numbers
    assert json.loads((out / OTHER / "metrics.json").read_text()) == kept
    assert run(SCRIPT, copy, "verify", str(out)).returncode == 0


def test_a_closed_pipe_does_not_stop_the_comparison(tmp_path: Path) -> None:
    """`lossbench compare ... | head -1`: the reader leaves after one line; the comparison
    trains every run and writes its reports, silently, and exits 0."""
    if not SCRIPT.is_file():
        pytest.skip(f"no `lossbench` console script at {SCRIPT}: `pip install .` first")
    env = {**os.environ, "LOSSBENCH_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "100"}
    out = tmp_path / "out"
    process = subprocess.Popen(
        [str(SCRIPT), *SMOKE, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()  # as `head -1` does
    errors = process.stderr.read()
    assert process.wait(timeout=300) == 0, errors
    assert "synthetic sasrec + bce" in first and "Traceback" not in errors
    for run_dir in (RUN, OTHER):
        assert (out / run_dir / "metrics.json").is_file()
    assert (out / "summary.md").is_file() and (out / "verdict.json").is_file()
