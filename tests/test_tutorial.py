"""docs/your-own-loss.md, run as written: its files are written, its commands run in order.

`$ lossbench ...` lines run through the CLI (training commands with small epochs and
sizes added, so the test stays short); `pip install -e .../examples/focal_loss` is played by
an installed distribution's metadata on sys.path; `mkdir`, `cd` and `echo ... >> FILE` are
done here. Any other command fails the test, so the page cannot drift from what runs.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lossbench.cli import app

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "your-own-loss.md"
EXAMPLE = REPO / "examples" / "focal_loss"
SMALL = ["--max-epochs", "1", "--hidden-size", "16", "--max-len", "20", "--batch-size", "256"]
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def steps(text: str) -> list[tuple[str, str]]:
    """('file', block) for blocks that start with '# name.ext', ('run', line) per command."""
    found: list[tuple[str, str]] = []
    for language, body in BLOCK.findall(text):
        if language == "console":
            found += [("run", line[2:]) for line in body.splitlines() if line.startswith("$ ")]
        elif language in ("python", "toml") and re.match(r"# [\w.-]+\.(py|toml)\n", body):
            found.append(("file", body))
    return found


def install_example(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `pip install -e examples/focal_loss` leaves behind: the distribution's metadata
    with its entry points, and the package importable."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = []
    for group, points in project["entry-points"].items():
        lines += [f"[{group}]", *(f"{name} = {value}" for name, value in points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(site))


def interactions_csv(path: Path) -> None:
    """The reader's own file: string ids, numeric times, 60 customers of 8 to 12 items."""
    rows = ["customer,sku,ts"]
    for user in range(60):
        for step in range(8 + user % 5):
            rows.append(f"c{user:03d},B0{(user * 7 + step * 3) % 40:03d},{1_577_836_800 + step}")
    path.write_text("\n".join(rows) + "\n")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_tutorial_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lossbench.cli.app import console

    monkeypatch.setattr(console, "width", 160)  # table cells on one line each
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    outputs: list[str] = []
    for kind, step in steps(DOC.read_text()):
        if kind == "file":
            name = step.split("\n", 1)[0].removeprefix("# ")
            Path(name).write_text(step)
            continue
        words = shlex.split(step)
        if words[0] == "mkdir":
            Path(words[1]).mkdir()
        elif words[0] == "cd":
            monkeypatch.chdir(words[1])
        elif words[0] == "echo" and words[2] == ">>":
            with Path(words[3]).open("a") as stream:
                stream.write(words[1] + "\n")
        elif words[:3] == ["pip", "install", "-e"] and words[3].endswith("examples/focal_loss"):
            install_example(tmp_path / "site", monkeypatch)
        elif words[0] == "lossbench":
            args = words[1:]
            if "add-dataset" in args and not Path("interactions.csv").exists():
                interactions_csv(Path("interactions.csv"))
            if args[0] in ("compare", "train"):
                args += SMALL
            result = CliRunner().invoke(app, ["--data-dir", str(data), *args])
            assert result.exit_code == 0, f"{step}\n{result.output}"
            outputs.append(result.output)
        else:
            pytest.fail(f"the tutorial runs a command this test does not know: {step}")
    folder = tmp_path / "my-loss"
    assert len(outputs) == 10, outputs

    # Section 3: improved and the plain F.cross_entropy loss are within noise.
    summary = (folder / "runs/my-loss/summary.md").read_text()
    row = next(line for line in summary.splitlines() if "./my_loss.py:plain_ce" in line)
    assert "▲" not in row and "▼" not in row
    # Section 4: the edited file's runs were retrained and record the new sha256.
    assert "reusing 2 finished run(s) of 4" in outputs[2] and "retraining it" in outputs[2]
    record = json.loads(
        (folder / "runs/my-loss/synthetic/sasrec/my_loss.py-plain_ce/seed0/config.json").read_text()
    )
    assert record["sources"]["loss"]["name"] == "./my_loss.py:plain_ce"
    assert record["sources"]["loss"]["sha256"] == sha256(folder / "my_loss.py")
    # Section 5: the installed package's losses are listed and compared.
    assert "focal-ce" in outputs[3] and "lossbench-focal-loss" in outputs[3]
    assert "focal-ce meets the loss contract" in outputs[4]
    assert "reusing 2 finished run(s) of 4" in outputs[5]
    # Section 6: the grid reuses every run of the losses above.
    assert "reusing 6 finished run(s) of 6" in outputs[6]
    # Sections 7 and 8: the user's data, then the user's model beside SASRec on it.
    assert "registered my-shop" in outputs[7]
    assert "reusing 2 finished run(s) of 4" in outputs[9]
    shop = (folder / "runs/my-shop/summary.md").read_text()
    assert "| ./my_model.py:MEAN_POOL | improved (base) | 2 |" in shop
