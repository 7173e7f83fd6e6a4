"""Runs whose tensors cannot fit are refused before anything trains, with the numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.data.store import make_synthetic_prepared
from lossbench.errors import LossbenchError
from lossbench.losses import LOSSES, LossParams
from lossbench.losses.full_softmax import softmax_chunk_for
from lossbench.losses.reduced_ce import rece_memory_bytes
from lossbench.training import fit_check, memory
from lossbench.training.config import build_config
from lossbench.training.entry import plan_entry
from lossbench.training.fit_check import check_fits, estimate_step_memory


def test_more_negatives_than_items_is_one_line_and_exit_2(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "lossbench", "--data-dir", str(tmp_path / "data"), "train"]
        + ["--loss", "bce", "--negatives", "100000", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 2
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, completed.stderr
    assert "--negatives 100,000 is more than the 500 items of synthetic" in lines[0]
    assert "training " not in completed.stdout and not (tmp_path / "run").exists()


def test_a_loss_default_above_the_catalogue_names_the_default(tmp_path: Path) -> None:
    dataset = make_synthetic_prepared(n_users=50, n_items=100, mean_length=8.0, seed=0)
    entry = plan_entry(build_config(overrides={"loss": "gbce"}), tmp_path)
    with pytest.raises(LossbenchError, match="gbce's default of 256 negatives is more than"):
        check_fits(entry, dataset)


def test_a_step_larger_than_the_memory_is_refused_with_the_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = make_synthetic_prepared(n_users=300, n_items=400, mean_length=30.0, seed=0)
    overrides = {"loss": "bce", "negatives": 300, "model_settings": {"max_len": 50}}
    entry = plan_entry(build_config(overrides=overrides), tmp_path)
    estimate = estimate_step_memory(entry, dataset)
    positions = 256 * min(50, int(dataset.train_lengths.max()))
    # the gathered negative rows and their gradients alone: N x K x D floats, twice
    assert estimate.total_bytes > positions * 300 * 64 * 4 * 2
    assert f"{positions:,} positions x 300 negatives x 64 dims" == estimate.largest

    monkeypatch.setattr(fit_check, "available_memory_bytes", lambda device: 2**30)
    with pytest.raises(LossbenchError) as error:
        check_fits(entry, dataset)
    message = str(error.value)
    assert f"needs about {estimate.total_bytes / 2**30:,.1f} GB" in message
    assert "more than the 1.0 GB available on cpu" in message and "--batch-size" in message
    monkeypatch.setattr(fit_check, "available_memory_bytes", lambda device: 2**40)
    assert check_fits(entry, dataset) == estimate


def test_compare_checks_every_run_before_training_any(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second loss cannot fit: the first is not trained either."""
    monkeypatch.setattr(fit_check, "available_memory_bytes", lambda device: 200 * 2**20)
    result = CliRunner().invoke(
        app,
        ["--data-dir", str(tmp_path / "data"), "compare", "--losses", "ce,bce", "--seeds", "0"]
        + ["--negatives", "500", "--out", str(tmp_path / "out")],
    )
    assert isinstance(result.exception, LossbenchError), result.output
    assert "sasrec + bce on synthetic: a training step needs about" in str(result.exception)
    assert not list((tmp_path / "out").rglob("config.json"))


def test_available_memory_reads_meminfo_and_the_cgroup_limit(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  8000000 kB\nMemFree:  100 kB\nMemAvailable:   4000000 kB\n")
    assert memory._meminfo_available(meminfo) == 4000000 * 1024
    assert memory._meminfo_available(tmp_path / "missing") is None
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("100\n")
    assert memory._cgroup_room(tmp_path) is None
    (tmp_path / "memory.max").write_text(f"{2**30}\n")
    assert memory._cgroup_room(tmp_path) == 2**30 - 100
    available = memory.available_memory_bytes(torch.device("cpu"))
    assert available is None or available > 0


def test_the_memory_refusal_names_the_setting_that_dominates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A huge --hidden-size: the weights dominate, so the hint is --hidden-size, not the
    batch size, negatives or length."""
    monkeypatch.setattr(fit_check, "available_memory_bytes", lambda device: 2**30)
    result = CliRunner().invoke(
        app,
        ["--data-dir", str(tmp_path / "data"), "train", "--hidden-size", "100000"]
        + ["--out", str(tmp_path / "run")],
    )
    assert isinstance(result.exception, LossbenchError), result.output
    message = str(result.exception)
    assert "parameters with gradients and Adam state: lower --hidden-size (100,000)" in message
    assert message.endswith("lower --hidden-size (100,000)")
    assert "--batch-size" not in message and "--negatives" not in message
    dataset = make_synthetic_prepared(n_users=300, n_items=400, mean_length=30.0, seed=0)
    entry = plan_entry(build_config(overrides={"eval_batch_size": 10**6}), tmp_path)
    assert estimate_step_memory(entry, dataset).setting == (
        "eval_batch_size (1,000,000) in a --config file"
    )


def test_the_gathered_negatives_count_only_the_chunk_held_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = make_synthetic_prepared(n_users=300, n_items=400, mean_length=30.0, seed=0)
    overrides = {"loss": "bce", "negatives": 300, "model_settings": {"max_len": 50}}
    entry = plan_entry(build_config(overrides=overrides), tmp_path)
    whole = estimate_step_memory(entry, dataset)
    positions = 256 * min(50, int(dataset.train_lengths.max()))
    # scored in chunks of 2^20 gathered elements (`negative_scores`): only those are held
    monkeypatch.setattr(fit_check, "GATHER_ELEMENTS", 1 << 20)
    chunked = estimate_step_memory(entry, dataset)
    assert whole.total_bytes - chunked.total_bytes == (positions * 300 * 64 - (1 << 20)) * 4 * 2


# A loss's fp32 forward and backward in a fresh interpreter: the growth of its peak resident
# memory over what the process held before (torch and the inputs), in bytes.
MEASURE_LOSS_PEAK = """
import sys, torch
from lossbench.losses import LOSSES, LossInputs, LossParams
from lossbench.training.memory import peak_memory_mb, reset_peak_memory, resident_bytes
name, n, n_items, dim = sys.argv[1], *map(int, sys.argv[2:])
generator = torch.Generator().manual_seed(0)
hidden = torch.randn(n, dim, generator=generator).requires_grad_()
table = torch.randn(n_items + 1, dim, generator=generator).requires_grad_()
targets = torch.randint(1, n_items + 1, (n,), generator=generator)
cpu = torch.device("cpu")
reset_peak_memory(cpu)
before = resident_bytes(cpu)
inputs = LossInputs(hidden, targets, table, generator=generator)
LOSSES[name].fn(inputs, LossParams()).backward()
print(int(peak_memory_mb(cpu) * 2**20) - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS reset: Linux only")
@pytest.mark.parametrize(("loss", "n_items"), [("sce", 400_000), ("rece", 100_000)])
def test_a_searched_catalogue_estimate_is_within_2x_of_the_measured_peak(
    loss: str, n_items: int
) -> None:
    """sce and rece declare their own memory (not the full softmax's chunk of logits); on
    1,000 positions x 32 dims the declared bytes are within a factor 2 of the measured
    growth of the peak (tens of MB; the allocator's rounding is the slack)."""
    n, dim = 1_000, 32
    done = subprocess.run(
        [sys.executable, "-c", MEASURE_LOSS_PEAK, loss, str(n), str(n_items), str(dim)],
        capture_output=True,
        text=True,
        check=True,
    )
    measured = int(done.stdout.strip().splitlines()[-1])
    declared = fit_check.SEARCHED_CATALOGUE[LOSSES[loss].fn](n, n_items, dim, LossParams())
    assert measured > 20 * 2**20  # large enough to compare
    assert measured / 2 <= declared <= 2 * measured, (declared, measured)


def test_the_plan_counts_a_searched_catalogue_by_its_declared_cost(tmp_path: Path) -> None:
    """rece's term is what it declares, where the full softmax's is its chunk of logits (the
    weights, activations and evaluation terms are the same for both)."""
    dataset = make_synthetic_prepared(n_users=300, n_items=400, mean_length=30.0, seed=0)
    rece_entry = plan_entry(build_config(overrides={"loss": "rece"}), tmp_path)
    improved_entry = plan_entry(build_config(overrides={"loss": "improved"}), tmp_path)
    positions = 256 * min(50, int(dataset.train_lengths.max()))
    declared = rece_memory_bytes(positions, dataset.n_items, 64, rece_entry.loss.params)
    chunk = softmax_chunk_for(torch.device("cpu"), None)
    chunk_logits = min(positions * dataset.n_items, chunk) * 4 * 3  # logits, softmax, gradient
    difference = (
        estimate_step_memory(rece_entry, dataset).total_bytes
        - estimate_step_memory(improved_entry, dataset).total_bytes
    )
    assert difference == declared - chunk_logits
