"""`--track mlflow|tensorboard`: what a comparison logs, read back with each tool's own API."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from lossbench.cli import app
from lossbench.errors import LossbenchError
from lossbench.training import tracking

TINY = ["--smoke", "--losses", "bce,improved", "--seeds", "0", "--max-epochs", "2"]


def compare(tmp_path: Path, *args: str) -> Result:
    out = tmp_path / "out"
    return CliRunner().invoke(
        app, ["--data-dir", str(tmp_path / "data"), "compare", *TINY, "--out", str(out), *args]
    )


def saved_metrics(tmp_path: Path, loss: str) -> dict[str, object]:
    path = tmp_path / "out" / "synthetic" / "sasrec" / loss / "seed0" / "metrics.json"
    return dict(json.loads(path.read_text()))


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed")
def test_mlflow_runs_read_back_through_the_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    result = compare(tmp_path, "--track", "mlflow")
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lossbench")
    assert experiment is not None
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {
        "out",
        "synthetic sasrec + bce, seed 0",
        "synthetic sasrec + improved, seed 0",
    }
    parent = runs.pop("out")
    assert parent.info.status == "FINISHED"
    figures = {artifact.path for artifact in client.list_artifacts(parent.info.run_id)}
    assert {"quality_vs_time.png", "validation_curves.png", "summary.md"} <= figures
    for name, run in runs.items():
        loss = run.data.tags["lossbench.loss"]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED" and loss in name
        assert run.data.params["lr"] == "0.001" and run.data.params["model.hidden_size"] == "32"
        assert run.data.params["loss.positions"] == "all"
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert [metric.step for metric in sorted(history, key=lambda m: m.step)] == [1, 2]
        valid = client.get_metric_history(run.info.run_id, "valid/ndcg_at_20")
        assert len(valid) == 2
        test = saved_metrics(tmp_path, loss)["test"]
        assert run.data.metrics["test/ndcg_at_10"] == pytest.approx(test["ndcg@10"])  # type: ignore[index]
        artifacts = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
        assert artifacts == {"config.json", "metrics.json", "history.csv"}


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed"
)
def test_tensorboard_event_files_read_back(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = compare(tmp_path, "--track", "tensorboard")
    assert result.exit_code == 0, result.output
    logs = tmp_path / "out" / "tensorboard"
    for loss in ("bce", "improved"):
        events = EventAccumulator(str(logs / "synthetic" / "sasrec" / loss / "seed0"))
        events.Reload()
        assert [event.step for event in events.Scalars("train/loss")] == [1, 2]
        assert len(events.Scalars("valid/ndcg_at_20")) == 2
        (test,) = events.Scalars("test/ndcg_at_10")
        expected = saved_metrics(tmp_path, loss)["test"]["ndcg@10"]  # type: ignore[index]
        assert test.value == pytest.approx(expected, rel=1e-6)  # stored as float32
        assert "settings" in "".join(events.Tags()["tensors"])
    comparison = EventAccumulator(str(logs / "comparison"), size_guidance={"images": 0})
    comparison.Reload()
    assert set(comparison.Tags()["images"]) == {
        "figures/quality_vs_time",
        "figures/validation_curves",
        "figures/frontier",
    }


def test_a_missing_package_names_the_extra_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracking, "installed", lambda package: False)
    for name in ("mlflow", "tensorboard"):
        result = compare(tmp_path, "--track", name)
        assert isinstance(result.exception, LossbenchError)
        assert str(result.exception) == (
            f"--track {name} needs the {name} package: pip install 'lossbench[{name}]'"
        )
    assert not (tmp_path / "out" / "synthetic").exists()
    result = compare(tmp_path, "--track", "wandb")
    assert "unknown tracker 'wandb'; choose one of mlflow, tensorboard" in str(result.exception)
