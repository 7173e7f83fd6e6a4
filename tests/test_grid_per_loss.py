"""Per-loss settings in a grid file (`[settings.per_loss.<loss>]`), and the training run's two
tuning hooks: an epoch callback that can stop the run, and a run that never tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.compare.plan.build import build_plan, plan_runs
from lossbench.compare.plan.grid import make_grid, read_grid_file
from lossbench.data.prepared import PreparedDataset
from lossbench.data.store import make_synthetic_prepared
from lossbench.errors import LossbenchError
from lossbench.training import setup
from lossbench.training.config import build_config
from lossbench.training.loop import train_run

GRID = """
[grid]
losses = ["bce", "improved"]
seeds = [0, 1]

[settings]
lr = 0.002
[settings.model_settings]
hidden_size = 16

[settings.per_loss.improved]
lr = 0.0005
[settings.per_loss.improved.model_settings]
dropout = 0.3
"""


@pytest.fixture(scope="module")
def tiny() -> PreparedDataset:
    return make_synthetic_prepared(n_users=120, n_items=50, mean_length=10.0, seed=3)


def test_a_loss_gets_its_own_settings_and_only_that_loss(tmp_path: Path) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    values, settings = read_grid_file(path)
    assert "per_loss" not in settings
    runs = plan_runs(make_grid(values, str(path)), settings, tmp_path)
    by_loss = {(r.config.loss_name, r.config.seed): r.config for r in runs}
    bce, improved = by_loss[("bce", 0)], by_loss[("improved", 0)]
    assert (bce.lr, improved.lr) == (0.002, 0.0005)
    assert improved.model_settings == {**bce.model_settings, "dropout": 0.3}
    assert bce.model_settings["hidden_size"] == improved.model_settings["hidden_size"] == 16
    assert bce.model_settings["dropout"] == 0.5  # bce keeps the preset's dropout
    assert by_loss[("improved", 1)].model_dump(exclude={"seed"}) == improved.model_dump(
        exclude={"seed"}
    )
    # Apart from the named settings, everything is shared.
    shared = {"lr", "model_settings", "loss"}
    assert bce.model_dump(exclude=shared) == improved.model_dump(exclude=shared)


def test_flags_win_over_per_loss_settings(tmp_path: Path) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    values, settings = read_grid_file(path)
    flags = {"lr": 0.01, "batch_size": None, "model_settings": {"dropout": 0.1}}
    runs = build_plan(make_grid(values, "test"), settings, tmp_path, flags=flags).entries
    assert {r.config.lr for r in runs} == {0.01}
    assert {r.config.model_settings["dropout"] for r in runs} == {0.1}
    assert {r.config.model_settings["hidden_size"] for r in runs} == {16}  # [settings] kept
    assert {r.config.batch_size for r in runs} == {256}  # a flag not given hides nothing


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[settings.per_loss.ce]\nlr = 0.1\n", ["settings.per_loss.ce", "not compared", "bce"]),
        ("[settings.per_loss.bce]\nlr = -1.0\n", ["settings.per_loss.bce", "lr"]),
        ("[settings.per_loss.bce]\nseed = 3\n", ["settings.per_loss.bce.seed", "[grid]"]),
        ("[settings.per_loss.bce.model_settings]\nwidth = 3\n", ["per_loss.bce", "width"]),
        ("[settings]\nper_loss = 3\n", ["settings.per_loss", "one table per loss"]),
    ],
)
def test_bad_per_loss_settings_are_one_line(tmp_path: Path, text: str, words: list[str]) -> None:
    path = tmp_path / "grid.toml"
    path.write_text('[grid]\nlosses = ["bce", "improved"]\nseeds = [0]\n' + text)
    with pytest.raises(LossbenchError) as error:
        values, settings = read_grid_file(path)
        plan_runs(make_grid(values, str(path)), settings, tmp_path)
    assert all(word in str(error.value) for word in words), str(error.value)
    assert "\n" not in str(error.value)


def test_compare_command_reads_per_loss_settings(tmp_path: Path) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(
        GRID.replace("seeds = [0, 1]", "seeds = [0]")
        + "\n[settings.per_loss.bce]\nbatch_size = 32\n"
    )
    args = ["--data-dir", str(tmp_path / "data"), "compare", "--config", str(path)]
    args += ["--out", str(tmp_path / "out"), "--max-epochs", "1", "--num-layers", "1"]
    args += ["--max-len", "10", "--permutations", "9", "--batch-size", "64"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = {
        loss: json.loads(
            (tmp_path / "out/synthetic/sasrec" / loss / "seed0/config.json").read_text()
        )
        for loss in ("bce", "improved")
    }
    assert saved["improved"]["config"]["lr"] == 0.0005
    assert saved["improved"]["config"]["model_settings"]["dropout"] == 0.3
    assert saved["bce"]["config"]["lr"] == 0.002
    assert saved["bce"]["config"]["batch_size"] == 64  # the flag won over per_loss.bce


def quick(**overrides: Any) -> dict[str, Any]:
    return {
        "max_epochs": 3,
        "patience": 5,
        "batch_size": 64,
        "model_settings": {"hidden_size": 8, "num_layers": 1, "num_heads": 1, "max_len": 10},
        **overrides,
    }


def test_an_epoch_callback_sees_every_epoch_and_stops_the_run(
    tiny: PreparedDataset, tmp_path: Path
) -> None:
    seen: list[dict[str, Any]] = []

    class Stop(Exception):
        pass

    def stop_after_two(row: dict[str, Any]) -> None:
        seen.append(row)
        if row["epoch"] == 2:
            raise Stop

    config = build_config(overrides=quick(loss="improved"))
    with pytest.raises(Stop):
        train_run(config, tiny, tmp_path / "run", epoch_callback=stop_after_two)
    assert [row["epoch"] for row in seen] == [1, 2]
    assert 0.0 <= seen[1]["valid_ndcg@20"] <= 1.0
    assert not (tmp_path / "run" / "metrics.json").exists()  # stopped runs never finish
    assert (tmp_path / "run" / "history.csv").read_text().count("\n") == 3  # header + 2 epochs


def test_a_run_without_test_never_evaluates_the_test_split(
    tiny: PreparedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test evaluator is never built, so nothing can read it; the validation result is
    the one the same run gets when it does test."""
    built: list[int] = []
    real = setup.Evaluator  # the run's evaluators are made by setup.make_evaluator

    def spy(evaluation_set: Any, *args: Any) -> Any:
        built.append(id(evaluation_set))
        return real(evaluation_set, *args)

    config = build_config(overrides=quick(loss="bce"))
    tested = train_run(config, tiny, tmp_path / "tested")
    monkeypatch.setattr(setup, "Evaluator", spy)
    untested = train_run(config, tiny, tmp_path / "untested", evaluate_test=False)
    assert len(built) == 1  # validation only
    assert "test" not in untested.metrics and "test" in tested.metrics
    assert untested.metrics["valid"] == tested.metrics["valid"]
    assert sorted(p.name for p in (tmp_path / "untested").iterdir()) == [
        "config.json",
        "history.csv",
    ]
