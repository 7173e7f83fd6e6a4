"""The example CI workflows under examples/ci: valid YAML, wired as docs/ci.md says (cache
keyed on the dataset checksums, JUnit published), and every lossbench command in them runs."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import pytest
import typer

import lossbench
from lossbench.cli import app

yaml = pytest.importorskip("yaml", reason="pyyaml (the dev extra) is not installed")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "ci"
MIRROR = ROOT.parent / "shared" / "data" / "mirror"
KEY_FILE = "lossbench-data.sha256"


def load(name: str) -> dict[Any, Any]:
    document = yaml.safe_load((EXAMPLES / name).read_text())
    assert isinstance(document, dict)
    return document


def github_commands() -> list[str]:
    steps = load("github-actions.yml")["jobs"]["smoke"]["steps"]
    return [line for step in steps for line in str(step.get("run", "")).splitlines()]


def gitlab_commands() -> list[str]:
    job = load("gitlab-ci.yml")["lossbench-smoke"]
    return [*job["before_script"], *job["script"]]


def lossbench_lines(lines: list[str]) -> list[str]:
    return [line.strip() for line in lines if line.strip().startswith("lossbench ")]


def runnable_lines(lines: list[str]) -> list[str]:
    """Every shell line but the installs (the test runs the lossbench it is testing)."""
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("pip ")]


def test_github_workflow_caches_on_checksums_and_publishes_junit() -> None:
    workflow = load("github-actions.yml")
    assert set(workflow[True]) == {"push", "pull_request"}  # YAML 1.1 reads `on` as True
    job = workflow["jobs"]["smoke"]
    steps = {step.get("name", step.get("uses")): step for step in job["steps"]}
    assert steps["Dataset checksums (the cache key)"]["run"].endswith(f"> {KEY_FILE}")
    cache = steps["Cache the data folder"]
    assert cache["uses"].startswith("actions/cache@")
    assert cache["with"]["key"] == f"lossbench-data-${{{{ hashFiles('{KEY_FILE}') }}}}"
    assert job["env"]["LOSSBENCH_DATA_DIR"].endswith("/" + cache["with"]["path"])
    publish = steps["Publish the JUnit reports"]
    assert publish["if"] == "always()" and publish["with"]["report_paths"] == "reports/*.xml"
    junit = [flag_value(line, "--junit") for line in lossbench_lines(github_commands())]
    assert [path for path in junit if path] == [
        "reports/lossbench-synthetic.xml",
        "reports/lossbench-lastfm.xml",
    ]


def test_gitlab_job_caches_on_the_committed_key_and_reports_junit() -> None:
    job = load("gitlab-ci.yml")["lossbench-smoke"]
    data_cache = job["cache"][0]
    assert data_cache["key"]["files"] == [KEY_FILE] and data_cache["paths"] == [".lossbench-data/"]
    assert job["variables"]["LOSSBENCH_DATA_DIR"] == "$CI_PROJECT_DIR/.lossbench-data"
    assert f"lossbench checksums lastfm | diff - {KEY_FILE}" in job["before_script"]
    assert job["artifacts"]["when"] == "always"
    assert job["artifacts"]["reports"]["junit"] == "reports/*.xml"
    github = [line for line in lossbench_lines(github_commands()) if "compare" in line]
    assert [line for line in lossbench_lines(gitlab_commands()) if "compare" in line] == github


def flag_value(line: str, flag: str) -> str | None:
    words = shlex.split(line)
    return words[words.index(flag) + 1] if flag in words else None


def test_checksums_print_the_registry_hashes_in_sha256sum_format(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lossbench.data.registry import get_dataset

    result = CliRunner().invoke(
        app, ["--data-dir", str(tmp_path), "checksums", "lastfm", "synthetic"]
    )
    assert result.exit_code == 0, result.output
    entry = get_dataset("lastfm")
    assert entry.file is not None and entry.attributes is not None
    assert result.stdout.splitlines() == [  # a generated dataset has no files
        f"{entry.file.sha256}  lastfm/raw/LastFM.txt",
        f"{entry.attributes.sha256}  lastfm/raw/LastFM_item2attributes.json",
    ]


def test_every_flag_the_workflows_use_exists() -> None:
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for line in lossbench_lines(github_commands() + gitlab_commands()):
        words = shlex.split(line.split("|")[0].split(" > ")[0])
        command = commands[words[1]]
        known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        unknown = [word for word in words if word.startswith("--") and word not in known]
        assert not unknown, f"{line}: {unknown}"


@pytest.mark.slow
@pytest.mark.skipif(not MIRROR.is_dir(), reason=f"real data mirror {MIRROR} is absent")
def test_the_workflow_commands_run(tmp_path: Path) -> None:
    """Both files' commands (but the installs), in order, in a fresh checkout holding the
    example loss (downloads come from the local mirror through LOSSBENCH_MIRROR)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "lossbench"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lossbench "$@"\n')
    shim.chmod(0o755)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy(EXAMPLES / "my_loss.py", checkout / "my_loss.py")
    source = str(Path(lossbench.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]),
        "LOSSBENCH_DATA_DIR": str(checkout / ".lossbench-data"),
        "LOSSBENCH_MIRROR": str(MIRROR),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("GITHUB_STEP_SUMMARY", None)
    # GitLab's key file is committed by the user, with the command docs/ci.md gives.
    lines = [f"lossbench checksums lastfm > {KEY_FILE}"]
    lines += runnable_lines(github_commands() + gitlab_commands())
    for line in dict.fromkeys(lines):  # the files share most commands: run each once
        done = subprocess.run(
            ["bash", "-c", line], cwd=checkout, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{line}\n{done.stderr[-3000:]}"
    for report in ("lossbench-synthetic.xml", "lossbench-lastfm.xml"):
        root = ElementTree.parse(checkout / "reports" / report).getroot()
        assert root.tag == "testsuites" and root.get("failures") == "0"
    assert (checkout / "lossbench-lastfm.json").read_text().lstrip().startswith("{")
