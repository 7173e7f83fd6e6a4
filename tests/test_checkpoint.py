"""Resumable runs: a run stopped after epoch k and started again on the same folder continues
from its checkpoint and ends exactly where the uninterrupted run ends (bit for bit on CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch
from rich.console import Console

from lossbench.data.prepared import PreparedDataset
from lossbench.data.store import make_synthetic_prepared
from lossbench.errors import LossbenchError
from lossbench.training import loop
from lossbench.training.checkpoint import CHECKPOINT_SECONDS, checkpoint_due
from lossbench.training.config import build_config
from lossbench.training.loop import train_run
from lossbench.training.run_files import CHECKPOINT_FILE, METRICS_FILE

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def dataset() -> PreparedDataset:
    return make_synthetic_prepared(n_users=120, n_items=50, mean_length=10.0, seed=3)


def settings(model: str, loss: str, **extra: object) -> dict[str, object]:
    return {
        "model": model,
        "loss": loss,
        "max_epochs": 6,
        "patience": 6,
        "batch_size": 32,
        "model_settings": {"hidden_size": 8, "max_len": 12, "num_heads": 2, "dropout": 0.5},
        **extra,
    }


class Interrupted(Exception):
    pass


def interrupt_at_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Stop the run while it validates `epoch` (after its training, before its checkpoint)."""
    calls = {"n": 0}
    validate = loop.validate

    def stopping(run: object) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == epoch:
            raise Interrupted
        return validate(run)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "validate", stopping)


def outcome(run_dir: Path) -> tuple[dict[str, object], list[dict[str, object]]]:
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    history = pl.read_csv(run_dir / "history.csv")
    kept = history.drop([c for c in history.columns if c.endswith("seconds") or "memory" in c])
    return (
        {k: metrics[k] for k in ("valid", "test", "best_epoch", "epochs")},
        kept.to_dicts(),
    )


@pytest.mark.parametrize(("model", "loss"), [("sasrec", "bce"), ("bert4rec", "mlm")])
def test_an_interrupted_run_resumes_to_the_same_result(
    model: str,
    loss: str,
    dataset: PreparedDataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = build_config(overrides=settings(model, loss, checkpoint_every=2))
    train_run(config, dataset, tmp_path / "whole")

    with monkeypatch.context() as patch:
        interrupt_at_epoch(patch, 5)  # checkpoints after epochs 2 and 4
        with pytest.raises(Interrupted):
            train_run(config, dataset, tmp_path / "resumed")
    assert (tmp_path / "resumed" / CHECKPOINT_FILE).is_file()
    assert not (tmp_path / "resumed" / METRICS_FILE).exists()
    assert len(pl.read_csv(tmp_path / "resumed" / "history.csv")) == 4

    console = Console(record=True, width=200)
    train_run(config, dataset, tmp_path / "resumed", console)
    assert f"resuming {tmp_path / 'resumed'} after epoch 4" in console.export_text()
    assert outcome(tmp_path / "resumed") == outcome(tmp_path / "whole")
    whole = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
    assert not (tmp_path / "resumed" / CHECKPOINT_FILE).exists()  # finished: removed


def test_the_checkpoint_loads_with_weights_only_and_a_bad_one_is_named(
    dataset: PreparedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = build_config(overrides=settings("sasrec", "ce", checkpoint_every=1))
    with monkeypatch.context() as patch:
        interrupt_at_epoch(patch, 2)
        with pytest.raises(Interrupted):
            train_run(config, dataset, tmp_path)
    checkpoint = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["state"]["epoch"] == 1 and checkpoint["config"]["loss"] == "ce"
    assert set(checkpoint["generators"]) == {"batches", "negatives"}

    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(LossbenchError) as error:
        train_run(config, dataset, tmp_path)
    assert str(tmp_path / CHECKPOINT_FILE) in str(error.value)
    assert "weights_only" not in str(error.value) and "\n" not in str(error.value)


def test_a_checkpoint_with_other_settings_is_not_continued(
    dataset: PreparedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build_config(overrides=settings("sasrec", "ce", checkpoint_every=1))
    with monkeypatch.context() as patch:
        interrupt_at_epoch(patch, 3)
        with pytest.raises(Interrupted):
            train_run(first, dataset, tmp_path)
    other = build_config(overrides=settings("sasrec", "ce", checkpoint_every=1, lr=0.01))
    console = Console(record=True, width=200)
    result = train_run(other, dataset, tmp_path, console)
    assert "lr 0.001 -> 0.01" in console.export_text()
    assert [row["epoch"] for row in result.history] == list(range(1, 7))


def test_checkpoints_every_n_epochs_or_every_few_minutes() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [checkpoint_due(e, 3, cpu, 0.0) for e in range(1, 7)] == [False, False, True] * 2
    assert not checkpoint_due(5, 0, cuda, 1e9)  # 0: never
    assert checkpoint_due(1, None, cuda, 0.0)  # GPU: every epoch
    assert not checkpoint_due(1, None, cpu, CHECKPOINT_SECONDS - 1)
    assert checkpoint_due(1, None, cpu, CHECKPOINT_SECONDS)


def lossbench(data_dir: Path, run_dir: Path) -> subprocess.Popen[str]:
    args = ["--max-epochs", "6", "--patience", "6", "--hidden-size", "8", "--num-layers", "1"]
    args += ["--num-heads", "1", "--max-len", "10", "--loss", "bce", "--threads", "1"]
    return subprocess.Popen(
        [sys.executable, "-m", "lossbench", "--data-dir", str(data_dir), "train", *args]
        + ["--checkpoint-every", "1", "--out", str(run_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"},
    )


def test_a_killed_train_command_continues_to_the_same_metrics(tmp_path: Path) -> None:
    """SIGKILL (no cleanup at all) after epoch 2; the same command again finishes the run."""
    data = tmp_path / "data"
    whole = lossbench(data, tmp_path / "whole")
    assert whole.wait(timeout=300) == 0, whole.stderr.read() if whole.stderr else ""
    killed_dir = tmp_path / "killed"
    killed = lossbench(data, killed_dir)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and killed.poll() is None:
        history = killed_dir / "history.csv"
        if (killed_dir / CHECKPOINT_FILE).is_file() and len(pl.read_csv(history)) >= 2:
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed_dir / METRICS_FILE).exists()
    rerun = lossbench(data, killed_dir)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read() if rerun.stderr else ""
    assert outcome(killed_dir) == outcome(tmp_path / "whole")
