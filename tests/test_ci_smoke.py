"""`compare --smoke` as a CI step: expectations and exit codes, `--json`, `--junit`, the
GitHub step summary, runs that fail to train, and `train --smoke`."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import torch
from typer.testing import CliRunner, Result

from lossbench.cli import app, main
from lossbench.errors import LossbenchError
from lossbench.losses import CATALOGUE, LOSSES
from lossbench.losses.base import LossInputs, LossParams, LossSpec

EXPECTED = [
    "improved > bce significant",
    "bce > ce significant",
    "ndcg@10(improved) >= 0.05",
    "hr@10(improved) >= 0.9 * hr@10(bce)",
]


@dataclass(frozen=True)
class Smoke:
    result: Result
    data_dir: Path
    out: Path
    junit: Path
    step_summary: Path


def compare(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, ["--data-dir", str(data_dir), "compare", *args], env=env)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Smoke:
    """The documented smoke comparison (3 losses x 3 seeds), trained once for this module."""
    root = tmp_path_factory.mktemp("smoke")
    out, junit, step_summary = root / "out", root / "report.xml", root / "step-summary.md"
    step_summary.write_text("earlier step\n")
    expect = [part for text in EXPECTED for part in ("--expect", text)]
    result = compare(
        root / "data",
        "--smoke",
        "--losses",
        "bce,ce,improved",
        *expect,
        "--json",
        "--junit",
        str(junit),
        "--out",
        str(out),
        env={"GITHUB_STEP_SUMMARY": str(step_summary)},
    )
    return Smoke(result, root / "data", out, junit, step_summary)


def test_smoke_separates_the_losses_and_every_expectation_passes(smoke: Smoke) -> None:
    assert smoke.result.exit_code == 0, smoke.result.output
    lines = [line for line in smoke.result.stderr.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert lines == [line for line in lines if line.startswith("PASS")] and len(lines) == len(
        EXPECTED
    )
    assert any("Holm-adjusted p" in line for line in lines)
    document = json.loads(smoke.result.stdout)
    means = {row["loss"]: row["metrics"]["ndcg@10"]["mean"] for row in document["comparison"]}
    assert means["improved"] > means["bce"] > means["ce"]
    marks = {row["loss"]: row["significant"] for row in document["comparison"]}
    assert marks == {"bce": None, "ce": "worse", "improved": "better", "pop": None}
    floor = means.pop("pop")  # the popularity floor's row, below every loss
    assert all(mean > floor for mean in means.values())


def test_json_holds_every_run_and_the_numbers_the_table_shows(smoke: Smoke) -> None:
    document = json.loads(smoke.result.stdout)  # stdout holds only the document
    assert document["passed"] is True and document["failed_runs"] == []
    runs = document["runs"]
    assert sorted((r["loss"], r["seed"]) for r in runs) == [
        (loss, seed) for loss in ("bce", "ce", "improved") for seed in (0, 1, 2)
    ]
    for run in runs:
        assert run["dataset"] == "synthetic" and run["model"] == "sasrec"
        assert {"hr@10", "ndcg@10", "mrr"} <= set(run["test"]) and "ndcg@20" in run["valid"]
        assert run["epochs"] == 5 and run["train_seconds"] > 0 and run["peak_memory_mb"] > 0
        assert run["train_seconds_per_epoch"] > 0 and 0 < run["loss_share"] < 1
        assert run["collapsed"] is False
    table = (smoke.out / "summary.md").read_text()
    assert "| pop (floor) | — |" in table
    for row in document["comparison"]:
        if row["reference"]:
            continue  # the pop row: no std, no test
        hr, ndcg = row["metrics"]["hr@10"], row["metrics"]["ndcg@10"]
        cells = f"| {hr['mean']:.4f} ± {hr['std']:.4f} | {ndcg['mean']:.4f} ± {ndcg['std']:.4f} |"
        assert cells in table
        if row["loss"] != "bce":
            assert f"{ndcg['change_percent']:+.1f}%" in table and row["p"] < 0.05
    results = pl.read_csv(smoke.out / "results.csv")
    improved = results.filter(pl.col("loss") == "improved")["test_ndcg@10"].mean()
    assert means_of(document, "improved") == pytest.approx(improved)
    verdicts = document["expectations"]
    assert [v["expectation"] for v in verdicts] == EXPECTED and all(v["passed"] for v in verdicts)


def test_the_verdict_is_kept_beside_the_summary(smoke: Smoke) -> None:
    """verdict.json: the --json document (rows, changes, p, significance, expectations)."""
    verdict = json.loads((smoke.out / "verdict.json").read_text())
    assert verdict == json.loads(smoke.result.stdout)
    assert [e["expectation"] for e in verdict["expectations"]] == EXPECTED
    assert all(e["passed"] for e in verdict["expectations"])
    improved = next(row for row in verdict["comparison"] if row["loss"] == "improved")
    assert improved["significant"] == "better" and improved["p"] < 0.05


def means_of(document: dict[str, list[dict[str, object]]], loss: str) -> object:
    (row,) = [row for row in document["comparison"] if row["loss"] == loss]
    return row["metrics"]["ndcg@10"]["mean"]  # type: ignore[index]


def test_junit_report_follows_the_common_schema(smoke: Smoke) -> None:
    root = ElementTree.parse(smoke.junit).getroot()
    assert root.tag == "testsuites" and {"name", "tests", "failures", "time"} <= set(root.attrib)
    suites = root.findall("testsuite")
    assert [suite.get("name") for suite in suites] == [
        "lossbench.expectations",
        "lossbench.training",
    ]
    required = {"name", "tests", "failures", "errors", "time", "timestamp", "hostname", "id"}
    for suite in suites:
        assert required <= set(suite.attrib)
        assert [child.tag for child in suite][0] == "properties"
        assert [child.tag for child in suite][-2:] == ["system-out", "system-err"]
        cases = suite.findall("testcase")
        assert int(suite.get("tests", -1)) == len(cases)
        assert int(suite.get("failures", -1)) == sum(c.find("failure") is not None for c in cases)
        for case in cases:
            assert {"name", "classname", "time"} <= set(case.attrib)
    expectation_cases = suites[0].findall("testcase")
    assert [c.get("name") for c in expectation_cases] == [
        f"{t} [synthetic/sasrec]" for t in EXPECTED
    ]
    assert root.get("tests") == "4" and root.get("failures") == "0"


def test_the_step_summary_is_appended(smoke: Smoke) -> None:
    text = smoke.step_summary.read_text()
    assert text.startswith("earlier step\n## lossbench")
    assert text.count("✅") == len(EXPECTED) and "| improved |" in text


def test_a_failing_expectation_exits_1_with_a_fail_line(smoke: Smoke, tmp_path: Path) -> None:
    junit = tmp_path / "report.xml"
    args = ["--smoke", "--losses", "bce,ce,improved", "--out", str(smoke.out)]
    result = compare(smoke.data_dir, *args, "--expect", "bce > improved", "--junit", str(junit))
    assert result.exit_code == 1
    assert "reusing 9 finished run(s) of 9" in result.output  # nothing retrained
    assert "FAIL bce > improved [synthetic/sasrec]: ndcg@10(bce) 0." in result.output
    (failure,) = ElementTree.parse(junit).getroot().iter("failure")
    assert failure.get("type") == "ExpectationFailed" and "ndcg@10(bce)" in failure.get(
        "message", ""
    )


def test_the_console_script_exits_1_too(
    smoke: Smoke, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["lossbench", "--data-dir", str(smoke.data_dir), "compare", "--smoke"]
    argv += ["--losses", "bce,ce,improved", "--out", str(smoke.out), "--expect", "ce > bce"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    assert "FAIL ce > bce" in capsys.readouterr().out


def test_a_grid_file_adds_its_expect_list(smoke: Smoke, tmp_path: Path) -> None:
    grid = tmp_path / "grid.toml"
    grid.write_text(
        'expect = ["improved > ce significant", "ce > improved"]\n'
        '[grid]\nlosses = ["bce", "ce", "improved"]\nbaseline = "ce"\n'
    )
    result = compare(smoke.data_dir, "--config", str(grid), "--smoke", "--out", str(smoke.out))
    assert result.exit_code == 1, result.output
    assert "PASS improved > ce significant" in result.output
    assert "FAIL ce > improved" in result.output
    grid.write_text('expect = "improved > bce"\n')
    with pytest.raises(LossbenchError, match="give a list of strings"):
        raise_error(compare(smoke.data_dir, "--config", str(grid)))


def raise_error(result: Result) -> None:
    assert isinstance(result.exception, LossbenchError), result.output
    raise result.exception


@pytest.mark.parametrize(
    ("expectation", "message"),
    [
        ("improved >> bce", "malformed expectation"),
        ("improved > bpr", "names loss 'bpr', which is not compared on synthetic/sasrec"),
        ("improved > ce significant", "compares each loss with the baseline 'bce'"),
    ],
)
def test_bad_expectations_are_usage_errors_before_training(
    tmp_path: Path, expectation: str, message: str
) -> None:
    out = tmp_path / "out"
    result = compare(tmp_path, "--smoke", "--expect", expectation, "--out", str(out))
    with pytest.raises(LossbenchError, match=message):
        raise_error(result)
    assert not out.exists()  # nothing trained, nothing written


def broken_loss(inputs: LossInputs, params: LossParams) -> torch.Tensor:
    raise ValueError("this loss is broken")


def nan_loss(inputs: LossInputs, params: LossParams) -> torch.Tensor:
    return (inputs.hidden * float("nan")).sum()


def test_runs_that_fail_to_train_are_recorded_and_the_rest_train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, fn in (("broken", broken_loss), ("nan", nan_loss)):
        monkeypatch.setitem(
            LOSSES, name, LossSpec(fn, "all", 0, "a test loss that fails", needs=CATALOGUE)
        )
    junit, out = tmp_path / "report.xml", tmp_path / "out"
    args = ["--smoke", "--losses", "improved,broken,nan", "--seeds", "0", "--max-epochs", "1"]
    args += ["--expect", "improved > broken", "--junit", str(junit), "--out", str(out), "--json"]
    result = compare(tmp_path / "data", *args)
    assert result.exit_code == 1, result.output
    assert "FAIL training synthetic sasrec + broken, seed 0: ValueError: this loss is broken" in (
        result.stderr
    )
    assert "the training loss is nan at step 1 of " in result.stderr  # stopped at its step
    assert " in epoch 1, before any update" in result.stderr
    assert "FAIL improved > broken [synthetic/sasrec]: no finished run of broken" in result.stderr
    document = json.loads(result.stdout)
    assert [run["loss"] for run in document["runs"]] == ["improved"]
    assert [run["loss"] for run in document["failed_runs"]] == ["broken", "nan"]
    training = ElementTree.parse(junit).getroot().findall("testsuite")[1]
    failures = [case.find("failure") for case in training.findall("testcase")]
    assert training.get("tests") == "2" and training.get("failures") == "2"
    assert all(f is not None and f.get("type") == "TrainingFailed" for f in failures)
    assert "Traceback" in (failures[0].text or "")  # type: ignore[union-attr]
    assert "this loss is broken" in (out / "synthetic/sasrec/broken/seed0/failure.txt").read_text()


def test_smoke_runs_give_the_same_numbers_twice(tmp_path: Path) -> None:
    args = ["--smoke", "--losses", "bce,improved", "--seeds", "0", "--max-epochs", "2"]
    for name in ("first", "second"):
        assert compare(tmp_path / "data", *args, "--out", str(tmp_path / name)).exit_code == 0
    columns = ["loss", "seed", "test_ndcg@10", "test_hr@10", "valid_ndcg@20", "best_epoch"]
    first, second = (
        pl.read_csv(tmp_path / n / "results.csv").select(columns) for n in ("first", "second")
    )
    assert first.equals(second)


def test_train_smoke_prints_the_run_as_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["--data-dir", str(tmp_path), "train", "--smoke", "--max-epochs", "1", "--json"]
        + ["--loss", "ce", "--out", str(tmp_path / "run")],
    )
    assert result.exit_code == 0, result.output
    (run,) = json.loads(result.stdout)["runs"]
    assert run["loss"] == "ce" and run["epochs"] == 1 and 0 <= run["test"]["ndcg@10"] <= 1
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["config"]["preset"] == "smoke" and record["dataset"]["n_users"] == 1000
    assert (
        record["model_settings"]["num_layers"] == 1
        and record["model_settings"]["hidden_size"] == 32
    )
    assert "1,000 users" in result.stderr
