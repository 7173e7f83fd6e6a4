"""`lossbench train` keeps `compare`'s promises, run as a user runs it (the installed console
script): a finished run is reused or refused, never overwritten; an interrupted one continues;
a run that diverges or whose loss is broken fails in one line (exit 1, failure.txt); a
setting that cannot work is refused before training (exit 2)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.data.store import make_synthetic_prepared
from lossbench.errors import LossbenchError
from lossbench.training import divergence
from lossbench.training.config import build_config
from lossbench.training.divergence import DivergedRun, FiniteLossWatch
from lossbench.training.loop import train_run
from lossbench.training.run_files import CHECKPOINT_FILE, METRICS_FILE
from lossbench.training.step import TrainingStep

SMALL = ["--max-epochs", "1", "--hidden-size", "16", "--threads", "1"]

BROKEN_LOSSES = """
import torch


def raises(inputs, params):
    raise ValueError("this loss is broken")


def per_position(inputs, params):
    return (inputs.hidden @ inputs.item_embeddings.T).mean(dim=1)


def detached(inputs, params):
    return (inputs.hidden @ inputs.item_embeddings.T).mean().detach()


def a_float(inputs, params):
    return 1.5


def nan(inputs, params):
    return (inputs.hidden @ inputs.item_embeddings.T).mean() * float("nan")
"""


def lossbench(
    script: Path, tmp_path: Path, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    command = [str(script), "--data-dir", str(tmp_path / "data"), *args]
    return subprocess.run(
        command, capture_output=True, text=True, check=False, env=env, timeout=300, cwd=cwd
    )


def hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by its path inside it."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def error_lines(completed: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in completed.stderr.splitlines() if line.strip()]


def test_train_over_a_run_with_other_settings_refuses_and_keeps_it(
    script: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    first = lossbench(script, tmp_path, "train", *SMALL, "--loss", "bce", "--out", str(run))
    assert first.returncode == 0, first.stderr
    before = hashes(run)
    assert "metrics.json" in before and "model.pt" in before

    other = ["train", *SMALL, "--loss", "improved", "--lr", "0.002", "--out", str(run)]
    refused = lossbench(script, tmp_path, *other)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr and "training sasrec" not in refused.stdout
    (line,) = error_lines(refused)
    assert f"{run} holds a run trained with other settings" in line
    assert "loss bce -> improved; lr 0.001 -> 0.002" in line and "--retrain-changed" in line
    assert hashes(run) == before  # byte for byte
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "run"]

    retrained = lossbench(script, tmp_path, *other, "--retrain-changed")
    assert retrained.returncode == 0, retrained.stderr
    (kept,) = tmp_path.glob("run.replaced-*")
    assert f"the old run is kept as {kept.name}" in " ".join(retrained.stdout.split())
    assert hashes(kept) == before
    assert json.loads((run / METRICS_FILE).read_text())["loss"] == "improved"


def test_train_again_with_the_same_settings_reuses_the_run(script: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", *SMALL, "--loss", "bce", "--out", str(run)]
    assert lossbench(script, tmp_path, *args).returncode == 0
    before = hashes(run)
    again = lossbench(script, tmp_path, *args, "--json")
    assert again.returncode == 0, again.stderr
    assert "finished with the same settings: reusing it" in " ".join(again.stderr.split())
    assert "training sasrec" not in again.stderr  # nothing retrained
    document = json.loads(again.stdout)
    metrics = json.loads((run / METRICS_FILE).read_text())
    assert document["runs"][0]["test"] == metrics["test"]
    assert hashes(run) == before


def test_an_interrupted_train_continues_and_other_settings_are_refused(
    script: Path, tmp_path: Path
) -> None:
    """SIGKILL after a checkpoint: with other settings the folder is refused (as compare
    does), with the same settings the run continues from the checkpoint to the end."""
    run = tmp_path / "run"
    args = ["train", "--max-epochs", "6", "--patience", "6", "--hidden-size", "8"]
    args += ["--max-len", "10", "--loss", "bce", "--threads", "1", "--checkpoint-every", "1"]
    args += ["--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.Popen(
        [str(script), "--data-dir", str(tmp_path / "data"), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and killed.poll() is None:
        if (run / CHECKPOINT_FILE).is_file() and len(pl.read_csv(run / "history.csv")) >= 2:
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    before = hashes(run)

    refused = lossbench(script, tmp_path, *args, "--lr", "0.01")
    assert refused.returncode == 2, refused.stderr
    assert "lr 0.001 -> 0.01" in refused.stderr and hashes(run) == before

    resumed = lossbench(script, tmp_path, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run} after epoch" in " ".join(resumed.stdout.split())
    history = pl.read_csv(run / "history.csv")
    assert history["epoch"].to_list() == list(range(1, 7))
    assert json.loads((run / METRICS_FILE).read_text())["epochs"] == 6


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--lr", "inf"], "the training loss is nan at step 2 of 8 in epoch 1, the run diverged"),
        (["--lr", "1e30"], "the training loss is nan at step 2 of 8 in epoch 1, the run diverged"),
        (
            ["--loss", "./broken.py:nan"],
            "the training loss is nan at step 1 of 8 in epoch 1, before any update",
        ),
    ],
    ids=["lr-inf", "lr-1e30", "own-loss-nan"],
)
def test_a_diverged_train_fails_in_one_line_naming_the_step(
    script: Path, tmp_path: Path, flags: list[str], words: str
) -> None:
    (tmp_path / "broken.py").write_text(textwrap.dedent(BROKEN_LOSSES))
    run = tmp_path / "run"
    args = ["train", "--max-epochs", "3", "--hidden-size", "16", "--loss", "bce", "--out"]
    failed = lossbench(script, tmp_path, *args, str(run), *flags, cwd=tmp_path)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Traceback" not in failed.stdout + failed.stderr
    (line,) = error_lines(failed)
    assert line.startswith("FAIL training synthetic sasrec + ") and words in line, line
    assert (run / "failure.txt").is_file() and "DivergedRun" in (run / "failure.txt").read_text()
    # stopped in the epoch it diverged in: no epoch finished, nothing tested
    assert not (run / "history.csv").exists() and not (run / METRICS_FILE).exists()


def test_compare_fails_a_diverged_run_with_the_same_message(script: Path, tmp_path: Path) -> None:
    train = lossbench(
        script, tmp_path, "train", *SMALL, "--lr", "inf", "--out", str(tmp_path / "r")
    )
    compare = lossbench(
        script,
        tmp_path,
        "compare",
        *SMALL,
        "--lr",
        "inf",
        "--losses",
        "bce",
        "--seeds",
        "0",
        "--out",
        str(tmp_path / "out"),
    )
    (train_line,) = error_lines(train)
    compare_lines = [line for line in compare.stdout.splitlines() if "FAIL training" in line]
    assert compare.returncode == train.returncode == 1
    # compare: the line as the run fails, then again in the summary with its traceback file
    assert compare_lines[0].strip() == train_line.split(" (traceback in ")[0]
    assert train_line.endswith(f"(traceback in {tmp_path / 'r' / 'failure.txt'})")


@pytest.mark.parametrize(
    ("loss", "error"),
    [
        ("./broken.py:raises", "ValueError: this loss is broken"),
        ("./broken.py:per_position", "RuntimeError: grad can be implicitly created only"),
        ("./broken.py:detached", "RuntimeError: element 0 of tensors does not require grad"),
        ("./broken.py:a_float", "AttributeError: 'float' object has no attribute 'backward'"),
        ("os:system", "TypeError: system() takes at most 1 argument (2 given)"),
    ],
    ids=["raises", "wrong-shape", "detached", "a-float", "os-system"],
)
def test_a_broken_own_loss_in_train_is_one_fail_line(
    script: Path, tmp_path: Path, loss: str, error: str
) -> None:
    (tmp_path / "broken.py").write_text(textwrap.dedent(BROKEN_LOSSES))
    run = tmp_path / "run"
    failed = lossbench(
        script, tmp_path, "train", *SMALL, "--loss", loss, "--out", str(run), cwd=tmp_path
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Traceback" not in failed.stdout + failed.stderr
    (line,) = error_lines(failed)
    assert line.startswith(f"FAIL training synthetic sasrec + {loss}, seed 0: {error}"), line
    assert line.endswith(f"(traceback in {run / 'failure.txt'})")
    assert "Traceback" in (run / "failure.txt").read_text()  # the details, for the user
    assert not (run / METRICS_FILE).exists()


def test_save_topk_above_the_catalogue_is_refused_before_training(
    script: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    refused = lossbench(
        script, tmp_path, "train", *SMALL, "--save-topk", "100000", "--out", str(run)
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert error_lines(refused) == [
        "error: --save-topk 100,000 is more than the 500 items of synthetic; "
        "use --save-topk 500 or fewer"
    ]
    assert "training sasrec" not in refused.stdout and not run.exists()


def test_compare_refuses_save_topk_above_the_catalogue(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["--data-dir", str(tmp_path / "data"), "compare", *SMALL, "--losses", "bce"]
        + ["--seeds", "0", "--save-topk", "501", "--out", str(tmp_path / "out")],
    )
    assert isinstance(result.exception, LossbenchError), result.output
    assert "--save-topk 501 is more than the 500 items" in str(result.exception)
    assert not list((tmp_path / "out").rglob("config.json"))


def test_the_watch_names_the_first_bad_step_and_reads_the_device_rarely(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads = []
    watch = FiniteLossWatch(torch.device("cpu"), epoch=3, batches=200, lr=0.5)
    check = watch.check
    monkeypatch.setattr(watch, "check", lambda: (reads.append(watch.steps), check()))
    losses = [1.0, 2.0, float("inf"), float("nan")] + [1.0] * 100
    with pytest.raises(DivergedRun) as error:
        for value in losses:
            watch.add(torch.tensor(value))
    assert reads == [divergence.CHECK_EVERY]  # no read before, one at the CHECK_EVERY-th step
    assert (error.value.epoch, error.value.step) == (3, 3)
    assert str(error.value) == (
        "the training loss is inf at step 3 of 200 in epoch 3, "
        "the run diverged: lower --lr (now 0.5)"
    )
    fine = FiniteLossWatch(torch.device("cpu"), epoch=1, batches=2, lr=0.5)
    fine.add(torch.tensor(0.5))
    fine.check()  # a finite epoch passes


def test_a_diverging_run_stops_at_the_next_check_not_the_epoch_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = make_synthetic_prepared(n_users=150, n_items=60, mean_length=12.0, seed=1)
    config = build_config(
        overrides={
            "dataset": "synthetic",
            "loss": "bce",
            "lr": float("inf"),
            "batch_size": 8,
            "max_epochs": 2,
            "model_settings": {"hidden_size": 8, "max_len": 20},
        }
    )
    steps = []
    step = TrainingStep.__call__

    def counting(self: TrainingStep, parts: list[torch.Tensor]) -> torch.Tensor:
        steps.append(1)
        return step(self, parts)

    monkeypatch.setattr(TrainingStep, "__call__", counting)
    monkeypatch.setattr(divergence, "CHECK_EVERY", 4)
    with pytest.raises(DivergedRun, match=r"nan at step 2 of 19 in epoch 1,"):
        train_run(config, dataset, tmp_path / "run")
    assert len(steps) == 4  # of the epoch's 19: it stopped at the first check after step 2
