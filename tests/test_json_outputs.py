"""`--json` on every command that prints a result: one JSON document on standard output (the
display on standard error) that holds what the table shows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.test_compare_report import N_USERS, write_fake_run
from typer.testing import CliRunner, Result

from lossbench.cli import app
from lossbench.data.preprocess import preprocess_dataset
from lossbench.data.registry import get_dataset, load_registry
from lossbench.losses import LOSSES
from lossbench.models import MODELS


def invoke(*args: str) -> tuple[Result, dict]:  # type: ignore[type-arg]
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result, json.loads(result.stdout)  # standard output holds the document alone


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """bce and improved (every rank halved: better), three seeds."""
    rng = np.random.default_rng(3)
    for seed in (0, 1, 2):
        ranks = rng.integers(1, 40, N_USERS)
        write_fake_run(tmp_path, "bce", seed, ranks)
        write_fake_run(tmp_path, "improved", seed, np.maximum(ranks // 2, 1))
    return tmp_path


def test_report_json_holds_the_rows_the_table_shows(runs: Path) -> None:
    args = ("report", str(runs), "--baseline", "bce", "--permutations", "99", "--print-only")
    result, document = invoke(*args, "--json")
    assert [row["loss"] for row in document["comparison"]] == ["bce", "improved"]
    bce, improved = document["comparison"]
    assert bce["baseline"] == "bce" and bce["p"] is None and improved["significant"] == "better"
    assert improved["metrics"]["ndcg@10"]["change_percent"] > 0 and improved["pairs"] == 3 * N_USERS
    for row in document["comparison"]:  # the table (on standard error) shows the same means
        for metric in ("hr@10", "ndcg@10"):
            assert f"{row['metrics'][metric]['mean']:.4f}" in result.stderr
    assert f"{improved['metrics']['ndcg@10']['change_percent']:+.1f}%" in result.stderr
    assert len(document["runs"]) == 6 and document["warning"] is None
    assert {run["loss"] for run in document["runs"]} == {"bce", "improved"}
    assert document["significance_metric"] == "ndcg@10"
    plain = CliRunner().invoke(app, list(args))
    assert json.dumps(document["comparison"][0]["metrics"]) not in plain.stdout
    assert f"{bce['metrics']['ndcg@10']['mean']:.4f}" in plain.stdout  # no --json: the table


def test_versus_json(runs: Path) -> None:
    sets = [str(runs / "toy/sasrec/improved"), str(runs / "toy/sasrec/bce")]
    result, document = invoke("versus", *sets, "--permutations", "99", "--json")
    assert document["treatment"] == {"label": "sasrec + improved", "folder": sets[0]}
    assert document["baseline"] == {"label": "sasrec + bce", "folder": sets[1]}
    base, treated = document["comparison"]
    assert (base["loss"], treated["loss"]) == ("sasrec + bce", "sasrec + improved")
    assert treated["significant"] == "better" and treated["seeds"] == 3
    assert f"{treated['metrics']['ndcg@10']['mean']:.4f}" in result.stderr


def test_datasets_json(tmp_path: Path) -> None:
    preprocess_dataset(tmp_path, "synthetic")
    result, document = invoke("--data-dir", str(tmp_path), "datasets", "--json")
    assert document["data_dir"] == str(tmp_path)
    rows = {row["name"]: row for row in document["datasets"]}
    assert list(rows) == list(load_registry(data_dir=tmp_path))
    assert rows["synthetic"]["status"] == "prepared"
    assert set(rows["synthetic"]["seen_targets"]) == {"valid", "test"}
    assert rows["lastfm"]["status"] == "not downloaded" and rows["lastfm"]["seen_targets"] is None
    assert rows["lastfm"]["source"] == get_dataset("lastfm").source
    for words in ("synthetic", "lastfm", "prepared", "not downloaded"):  # in the table too
        assert words in result.stderr


def test_losses_and_models_json() -> None:
    result, document = invoke("losses", "--json")
    rows = {row["name"]: row for row in document["losses"]}
    assert set(LOSSES) <= set(rows)
    assert rows["ce"]["positions"] == "last" and rows["ce"]["negatives"] == "full softmax"
    assert rows["improved"]["from"] == "lossbench" and rows["improved"]["error"] is None
    assert rows["bce"]["description"] == LOSSES["bce"].description
    assert "what it computes" in result.stderr and "improved" in result.stderr
    result, document = invoke("models", "--json")
    rows = {row["name"]: row for row in document["models"]}
    assert set(MODELS) <= set(rows)
    assert rows["sasrec"]["default_loss"] == "bce" and rows["bert4rec"]["default_loss"] == "mlm"
    assert rows["sasrec"]["settings"]["hidden_size"] == 64
    assert "hidden_size=64" in flat(result.stderr)


def test_checksums_json(tmp_path: Path) -> None:
    args = ("--data-dir", str(tmp_path), "checksums", "lastfm", "synthetic")
    result, document = invoke(*args, "--json")
    entry = get_dataset("lastfm")
    assert entry.file is not None
    assert document["files"][0] == {
        "dataset": "lastfm",
        "file": "lastfm/raw/LastFM.txt",
        "sha256": entry.file.sha256,
    }
    assert [f"{f['sha256']}  {f['file']}" for f in document["files"]] == result.stderr.splitlines()


def test_verify_json_names_each_dataset_and_its_problems(tmp_path: Path) -> None:
    preprocess_dataset(tmp_path, "synthetic")
    result, document = invoke("--data-dir", str(tmp_path), "verify", "--json")
    (report,) = document["datasets"]
    assert document["passed"] is True and report["name"] == "synthetic"
    assert report["problems"] == [] and report["checked"] == ["11 prepared files (loo)"]
    assert "synthetic: ok, size and sha256 match (11 prepared files (loo))" in result.stderr
    (tmp_path / "synthetic/prepared/meta.json").write_text("{")
    damaged = CliRunner().invoke(app, ["--data-dir", str(tmp_path), "verify", "--json"])
    assert damaged.exit_code == 1
    document = json.loads(damaged.stdout)
    assert document["passed"] is False
    assert document["datasets"][0]["problems"][0].startswith("synthetic/prepared/meta.json")


def test_preprocess_json_holds_the_prepared_counts(tmp_path: Path) -> None:
    result, document = invoke("--data-dir", str(tmp_path), "preprocess", "synthetic", "--json")
    (prepared,) = document["datasets"]
    meta = json.loads((tmp_path / "synthetic/prepared/meta.json").read_text())
    assert prepared == {"name": "synthetic", "skipped": False, "meta": meta}
    assert f"{meta['n_users']:,}" in result.stderr and f"{meta['n_items']:,}" in result.stderr
    again = invoke("--data-dir", str(tmp_path), "preprocess", "synthetic", "--json")[1]
    assert again["datasets"][0]["skipped"] is True


def test_check_loss_json() -> None:
    result, document = invoke("check-loss", "improved", "--json")
    assert document["loss"] == "improved" and document["passed"] is True
    assert document["from"] == "lossbench" and len(document["checks"]) > 3
    assert all(check["passed"] for check in document["checks"])
    for check in document["checks"]:
        assert check["check"].split()[0] in result.stderr  # cells wrap in the table
    assert "improved meets the loss contract" in result.stderr


def test_download_json_says_what_was_done(tmp_path: Path) -> None:
    result, document = invoke("--data-dir", str(tmp_path), "download", "synthetic", "--json")
    (done,) = document["datasets"]
    assert done == {
        "name": "synthetic",
        "message": "synthetic: generated locally, nothing to download",
    }
    assert result.stderr.strip() == done["message"]


def test_every_command_takes_json() -> None:
    """A command added later prints a document too (or this names it)."""
    import typer.main

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    without = [
        name
        for name, command in commands.items()
        if "--json" not in {option for param in command.params for option in param.opts}
    ]
    assert without == []
