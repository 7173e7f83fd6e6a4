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

import polars
import pytest
import torch
import typer

import lossbench
from lossbench.cli import app

yaml = pytest.importorskip("yaml", reason="pyyaml (the dev extra) is not installed")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "ci"
MIRROR = ROOT.parent / "shared" / "data" / "mirror"
KEY_FILE = "lossbench-data.sha256"
TORCH = "pip install torch"
# The workflows' default LOSSBENCH_SPEC: the wheel `pip wheel` names for this version.
WHEEL = f"./wheels/lossbench-{lossbench.__version__}-py3-none-any.whl"


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
    """Every shell line but torch's install (the test has torch, and no network)."""
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith(TORCH)]


def install_lines(lines: list[str]) -> list[str]:
    return [line.strip() for line in lines if line.strip().startswith("pip install")]


def test_the_workflows_install_lossbench_from_a_source_that_exists() -> None:
    """No package index serves lossbench: both files install `$LOSSBENCH_SPEC`, by default
    the wheel of this version committed under wheels/, as docs/ci.md says."""
    github = load("github-actions.yml")["jobs"]["smoke"]
    gitlab = load("gitlab-ci.yml")["lossbench-smoke"]
    assert github["env"]["LOSSBENCH_SPEC"] == f"${{{{ vars.LOSSBENCH_SPEC || '{WHEEL}' }}}}"
    assert gitlab["variables"]["LOSSBENCH_SPEC"] == WHEEL
    for lines in (github_commands(), gitlab_commands()):
        assert install_lines(lines) == [
            f"{TORCH} --index-url https://download.pytorch.org/whl/cpu",
            'pip install "$LOSSBENCH_SPEC"',
        ]
    guide = (ROOT / "docs" / "ci.md").read_text()
    assert "LOSSBENCH_SPEC" in guide and f"`{WHEEL}`" in guide
    assert "pip wheel --no-deps -w wheels ." in guide


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
    """Both files' commands (but torch's install, which needs the network) in order, in a
    fresh checkout holding the example loss and the wheel docs/ci.md has the reader build:
    `pip install "$LOSSBENCH_SPEC"` installs it into a fresh environment (torch and the other
    dependencies come from this one, offline), whose `lossbench` runs the rest (downloads
    come from the local mirror through LOSSBENCH_MIRROR)."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy(EXAMPLES / "my_loss.py", checkout / "my_loss.py")
    build_wheel(checkout / "wheels")
    environment = fresh_environment(tmp_path / "venv")
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GITHUB_STEP_SUMMARY")},
        "PATH": f"{environment / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "LOSSBENCH_SPEC": load("gitlab-ci.yml")["lossbench-smoke"]["variables"]["LOSSBENCH_SPEC"],
        "PIP_NO_INDEX": "1",  # everything lossbench needs is here: nothing may be fetched
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "LOSSBENCH_DATA_DIR": str(checkout / ".lossbench-data"),
        "LOSSBENCH_MIRROR": str(MIRROR),
        "OMP_NUM_THREADS": "1",
    }
    # GitLab's key file is committed by the user, with the command docs/ci.md gives.
    lines = runnable_lines(github_commands() + gitlab_commands())
    lines.insert(1, f"lossbench checksums lastfm > {KEY_FILE}")  # after the install
    for line in dict.fromkeys(lines):  # the files share most commands: run each once
        done = subprocess.run(
            ["bash", "-c", line], cwd=checkout, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{line}\n{done.stderr[-3000:]}"
    where = "command -v lossbench && python -c 'import lossbench; print(lossbench.__file__)'"
    installed = subprocess.run(
        ["bash", "-c", where], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert all(Path(path).is_relative_to(environment) for path in installed), installed
    for report in ("lossbench-synthetic.xml", "lossbench-lastfm.xml"):
        root = ElementTree.parse(checkout / "reports" / report).getroot()
        assert root.tag == "testsuites" and root.get("failures") == "0"
    assert (checkout / "lossbench-lastfm.json").read_text().lstrip().startswith("{")


def build_wheel(folder: Path) -> Path:
    """The wheel of this source tree, as docs/ci.md builds it (offline: no build isolation)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(folder), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = folder.glob("*.whl")
    assert f"./wheels/{wheel.name}" == WHEEL
    return wheel


def fresh_environment(folder: Path) -> Path:
    """A virtual environment without lossbench that sees this one's other packages (torch,
    polars, ...) and has a `pip`: what a CI job has after installing torch."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    (site,) = folder.glob("lib/python*/site-packages")
    dependencies = {
        Path(str(module.__file__)).parents[1] for module in (torch, polars, typer, yaml)
    }
    (site / "dependencies.pth").write_text("".join(f"{path}\n" for path in dependencies))
    pip = folder / "bin" / "pip"
    pip.write_text(f'#!/bin/sh\nexec "{folder / "bin" / "python"}" -m pip "$@"\n')
    pip.chmod(0o755)
    return folder
