"""Progress off a terminal (a pipe, a log file): a line per epoch, and within a long epoch a
line every `$LOSSBENCH_PROGRESS_SECONDS` with the batches done, the rate and the time left."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.data.store import make_synthetic_prepared
from lossbench.models.s3rec import S3RecConfig
from lossbench.training import progress
from lossbench.training.config import build_config
from lossbench.training.loop import train_run
from lossbench.training.pretrain import pretrain_s3rec, pretrain_samples
from lossbench.training.progress import BatchLines

BATCH_LINE = re.compile(
    r"^epoch (\d+)/(\d+)  batch (\d+)/(\d+)  ([0-9.e+]+) batches/s  "
    r"(\d+:\d\d:\d\d) left in the epoch$"
)


def batch_lines(text: str) -> list[tuple[int, int, int, int]]:
    """(epoch, epochs, done, total) of every batch line; asserts each line's rate is > 0."""
    found = []
    for line in text.splitlines():
        if match := BATCH_LINE.match(line):
            assert float(match[5]) > 0, line
            found.append((int(match[1]), int(match[2]), int(match[3]), int(match[4])))
    return found


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_line_once_the_interval_has_passed_with_rate_and_time_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Batches of 25 s, a line every 60 s: after batches 3 and 6 (75 and 150 s in), none for
    the last batch (the epoch's own line follows), and the clock restarts with each epoch."""
    clock = FakeClock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    log = io.StringIO()
    lines = BatchLines(Console(file=log, width=200), epochs=4, batches=8, enabled=True, every=60)
    for epoch in (2, 3):
        lines.start_epoch(epoch)
        for _ in range(8):
            clock.now += 25.0
            lines.batch_done()
    assert log.getvalue().splitlines() == [
        "epoch 2/4  batch 3/8  0.04 batches/s  0:02:05 left in the epoch",  # 5 / 0.04 s
        "epoch 2/4  batch 6/8  0.04 batches/s  0:00:50 left in the epoch",
        "epoch 3/4  batch 3/8  0.04 batches/s  0:02:05 left in the epoch",
        "epoch 3/4  batch 6/8  0.04 batches/s  0:00:50 left in the epoch",
    ]


def test_no_lines_on_a_terminal_or_when_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()
    lines = BatchLines(Console(file=log), epochs=1, batches=5, enabled=False, every=0)
    lines.start_epoch(1)
    for _ in range(5):
        lines.batch_done()
    assert log.getvalue() == ""


def test_training_prints_batch_lines_off_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interval 0: a line after every batch but an epoch's last, in order, then the epoch's."""
    monkeypatch.setenv(progress.PROGRESS_SECONDS_ENV, "0")
    dataset = make_synthetic_prepared(n_users=150, n_items=60, mean_length=12.0, seed=1)
    config = build_config(
        overrides={
            "dataset": "synthetic", "loss": "bce", "max_epochs": 2, "patience": 5,
            "batch_size": 32, "model_settings": {"hidden_size": 16, "max_len": 20},
        }
    )  # fmt: skip
    log = io.StringIO()
    train_run(config, dataset, tmp_path, Console(file=log, width=80))
    text = log.getvalue()
    found = batch_lines(text)
    total = found[0][3]
    assert total == 5  # 150 users in batches of 32
    assert found == [(epoch, 2, done, total) for epoch in (1, 2) for done in range(1, total)]
    kinds = [line.split()[2] for line in text.splitlines() if line.startswith("epoch ")]
    assert kinds == ["batch"] * 4 + ["loss"] + ["batch"] * 4 + ["loss"]  # epoch line last
    assert "━" not in text


def test_training_with_the_default_interval_prints_epoch_lines_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(progress.PROGRESS_SECONDS_ENV, raising=False)
    assert progress.progress_seconds() == 60.0
    dataset = make_synthetic_prepared(n_users=60, n_items=40, mean_length=8.0, seed=1)
    config = build_config(
        overrides={
            "dataset": "synthetic", "loss": "bce", "max_epochs": 1, "batch_size": 16,
            "model_settings": {"hidden_size": 16, "max_len": 20},
        }
    )  # fmt: skip
    log = io.StringIO()
    train_run(config, dataset, tmp_path, Console(file=log, width=80))
    assert batch_lines(log.getvalue()) == []
    assert [line.split()[1] for line in log.getvalue().splitlines() if "loss" in line] == ["1/1"]


def test_s3rec_pretraining_prints_batch_lines_off_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(progress.PROGRESS_SECONDS_ENV, "0")
    dataset = make_synthetic_prepared(n_users=40, n_items=30, mean_length=8, n_attributes=6)
    config = S3RecConfig.model_validate(
        {"hidden_size": 8, "num_layers": 1, "num_heads": 2, "max_len": 8}
    )
    log = io.StringIO()
    pretrain_s3rec(
        dataset, config, tmp_path, epochs=2, checkpoint_every=2, seed=0, batch_size=16,
        console=Console(file=log, width=200),
    )  # fmt: skip
    found = batch_lines(log.getvalue())
    total = found[0][3]
    samples = pretrain_samples(dataset, config.max_len, torch.device("cpu"))
    assert total == -(-len(samples.user) // 16) > 1
    assert found == [(epoch, 2, done, total) for epoch in (1, 2) for done in range(1, total)]
    epoch_lines = [line.split()[1] for line in log.getvalue().splitlines() if "batch " not in line]
    assert epoch_lines == ["1/2", "2/2"]


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf"])
def test_a_bad_interval_is_one_line_before_any_work(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(progress.PROGRESS_SECONDS_ENV, value)
    result = CliRunner().invoke(app, ["--data-dir", str(tmp_path), "datasets"])
    assert result.exit_code != 0
    assert f"LOSSBENCH_PROGRESS_SECONDS={value!r} is not a number of seconds" in str(
        result.exception
    )
    assert not any(tmp_path.iterdir())
