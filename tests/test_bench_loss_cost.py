"""bench/loss_cost.py: one training step's cost per loss, in its own process, as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import loss_cost  # noqa: E402


def test_every_registered_loss_once() -> None:
    names = loss_cost.registered_losses()
    assert "cce" not in names  # the alias of improved
    assert {"improved", "sce", "rece", "scaled-ce", "sampled-ce", "mlm"} <= set(names)


@pytest.mark.parametrize("loss", ["sce", "rece", "ce", "mlm", "scaled-ce"])
def test_one_step_cost_measures_a_training_step(loss: str) -> None:
    row = loss_cost.one_step_cost(loss, 600, steps=1, device=torch.device("cpu"), warmup=0)
    assert (row["loss"], row["items"]) == (loss, 600)
    assert row["step_seconds"] > 0 and row["peak_mb"] > 0


def test_each_loss_runs_in_its_own_process_and_the_json_is_a_list(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    code = loss_cost.main(
        ["--items", "300", "--losses", "bce", "--steps", "1", "--warmup", "0", "--json", str(out)]
    )
    assert code == 0
    (row,) = json.loads(out.read_text())
    assert set(row) == {"loss", "items", "step_seconds", "peak_mb", "cpu_seconds"}
    assert row["items"] == 300 and 0 < row["cpu_seconds"]


def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert loss_cost.main(["--losses", "nope", "--items", "300"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
