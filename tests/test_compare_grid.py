"""Grid expansion, run folders, validation messages, and resuming an interrupted comparison."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from lossbench.cli.options import training_overrides
from lossbench.compare.grid import (
    SYNTHETIC_DEMO_SETTINGS,
    Grid,
    PlannedRun,
    make_grid,
    plan_runs,
    read_grid_file,
    run_state,
)
from lossbench.compare.runner import run_missing
from lossbench.errors import LossbenchError
from lossbench.training.config import TrainConfig, build_config
from lossbench.training.loop import RunResult
from lossbench.training.run_files import CONFIG_FILE, METRICS_FILE

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_expansion_covers_every_loss_and_seed_with_one_base_config(tmp_path: Path) -> None:
    grid = make_grid(
        {
            "datasets": ["synthetic"],
            "models": ["sasrec"],
            "losses": ["bce", "improved"],
            "seeds": [0, 1, 2],
        },
        "test",
    )
    runs = plan_runs(grid, {"batch_size": 64}, tmp_path)
    assert [(r.config.loss_name, r.config.seed) for r in runs] == [
        ("bce", 0),
        ("bce", 1),
        ("bce", 2),
        ("improved", 0),
        ("improved", 1),
        ("improved", 2),
    ]
    assert runs[4].run_dir == tmp_path / "synthetic" / "sasrec" / "improved" / "seed1"
    # Everything but loss and seed is identical across the runs.
    shared = [r.config.model_dump(exclude={"loss", "seed"}) for r in runs]
    assert all(settings == shared[0] for settings in shared)
    assert shared[0]["batch_size"] == 64
    assert shared[0]["max_epochs"] == SYNTHETIC_DEMO_SETTINGS["max_epochs"]


def test_original_means_each_models_own_loss_and_is_its_baseline(tmp_path: Path) -> None:
    grid = make_grid(
        {
            "datasets": ["lastfm"],
            "models": ["gru4rec", "sasrec"],
            "losses": ["original", "improved"],
            "seeds": [0],
        },
        "test",
    )
    runs = plan_runs(grid, {}, tmp_path)
    assert [(r.config.model, r.config.loss_name) for r in runs] == [
        ("gru4rec", "ce"),
        ("gru4rec", "improved"),
        ("sasrec", "bce"),
        ("sasrec", "improved"),
    ]
    assert grid.baseline_for("gru4rec") == "ce" and grid.baseline_for("sasrec") == "bce"
    assert runs[0].config.max_epochs == 200  # the demo cap applies to synthetic only


def test_settings_layer_under_the_flags(tmp_path: Path) -> None:
    grid = make_grid({"losses": ["improved"], "seeds": [0]}, "test")
    from lossbench.compare.grid import merge_settings

    settings = merge_settings(
        {"lr": 0.01, "model_settings": {"hidden_size": 32, "max_len": 20}},
        {"lr": 0.002, "model_settings": {"hidden_size": 16}},
    )
    (run,) = plan_runs(grid, settings, tmp_path)
    assert run.config.lr == 0.002
    assert run.config.model_settings["hidden_size"] == 16
    assert run.config.model_settings["max_len"] == 20


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"losses": ["bce", "nope"]}, ["grid.losses", "'nope'", "improved", "original"]),
        ({"seeds": []}, ["grid.seeds", "at least one"]),
        ({"seeds": [0, -3]}, ["grid.seeds", "seed -3 is out of range"]),
        ({"models": ["transformer"]}, ["grid.models", "sasrec"]),
        ({"colour": "red"}, ["grid.colour", "unknown field"]),
    ],
)
def test_invalid_grid_names_the_field(values: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(LossbenchError) as error:
        make_grid(values, "grid.toml")
    assert all(word in str(error.value) for word in words)


def test_baseline_must_be_compared_and_losses_must_fit_the_model(tmp_path: Path) -> None:
    grid = make_grid({"losses": ["bce", "ce"], "baseline": "improved"}, "test")
    with pytest.raises(LossbenchError, match="baseline 'improved' is not among"):
        plan_runs(grid, {}, tmp_path)
    bert = make_grid({"models": ["bert4rec"], "losses": ["bce"]}, "test")
    with pytest.raises(LossbenchError, match="mlm"):
        plan_runs(bert, {}, tmp_path)


def test_example_grids_expand(tmp_path: Path) -> None:
    for path in sorted(EXAMPLES.glob("*.toml")):
        values, settings = read_grid_file(path)
        runs = plan_runs(make_grid(values, str(path)), settings, tmp_path)
        assert runs, path
    values, settings = read_grid_file(EXAMPLES / "table2-lastfm.toml")
    runs = plan_runs(make_grid(values, "table2"), settings, tmp_path)
    pairs = {(r.config.model, r.config.loss_name) for r in runs}
    assert {("sasrec", "bce"), ("sasrec", "improved"), ("gru4rec", "ce"), ("srgnn", "ce")} <= pairs
    for run in runs:  # the same runs as the README's one `lossbench compare` per model
        command_line = build_config(
            overrides={
                "dataset": "lastfm",
                "model": run.config.model,
                "loss": run.config.loss_name,
                "seed": run.config.seed,
            }
        )
        assert run.config == command_line, run.config.model


def test_grid_file_rejects_per_run_fields_in_settings(tmp_path: Path) -> None:
    path = tmp_path / "grid.toml"
    path.write_text('[grid]\nlosses = ["bce"]\n[settings]\nloss = "ce"\n')
    with pytest.raises(LossbenchError, match="settings.loss"):
        read_grid_file(path)


def finish_fake(run: PlannedRun, config: dict[str, Any] | None = None) -> None:
    """What a finished run leaves for `run_state`: config.json, then metrics.json."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    saved = config if config is not None else run.config.model_dump(mode="json")
    (run.run_dir / CONFIG_FILE).write_text(json.dumps({"config": saved}))
    (run.run_dir / METRICS_FILE).write_text("{}")


def test_resume_trains_only_missing_and_changed_runs(tmp_path: Path) -> None:
    grid = make_grid({"losses": ["bce", "ce", "improved"], "seeds": [0, 1]}, "test")
    runs = plan_runs(grid, {}, tmp_path)
    for run in runs[:3]:
        finish_fake(run)  # finished earlier with the same config: reused
    changed = runs[3].config.model_dump(mode="json") | {"lr": 0.5}
    finish_fake(runs[3], changed)  # finished with another config: retrained
    runs[4].run_dir.mkdir(parents=True)  # interrupted: config.json but no metrics.json
    (runs[4].run_dir / CONFIG_FILE).write_text("{}")
    assert [run_state(run) for run in runs] == ["finished"] * 3 + ["changed", "missing", "missing"]

    trained: list[tuple[str, int]] = []

    def fake_train(config: TrainConfig, dataset: Any, run_dir: Path, console: Console) -> RunResult:
        trained.append((config.loss_name, config.seed))
        finish_fake(PlannedRun(config, run_dir))
        return RunResult(run_dir, {}, {})

    prepared: list[str] = []
    console = Console(record=True, width=200)
    done = run_missing(runs, lambda name, split: prepared.append(name), fake_train, console)  # type: ignore[arg-type, func-returns-value]
    assert trained == [("ce", 1), ("improved", 0), ("improved", 1)]
    assert done == [run.run_dir for run in runs[3:]]
    assert prepared == ["synthetic"]  # the dataset is loaded once
    text = console.export_text()
    assert "reusing 3 finished run(s) of 6" in text and "retraining" in text
    # A second pass finds everything finished and trains nothing.
    assert run_missing(runs, lambda name, split: None, fake_train) == []  # type: ignore[arg-type, return-value]
    assert len(trained) == 3


def test_thread_count_does_not_make_a_finished_run_stale(tmp_path: Path) -> None:
    (run,) = plan_runs(make_grid({"losses": ["bce"], "seeds": [0]}, "test"), {}, tmp_path)
    saved = run.config.model_dump(mode="json")
    finish_fake(run, saved | {"threads": 7})  # finished with another thread count
    assert run_state(run) == "finished"
    del saved["threads"]
    finish_fake(run, saved)  # finished before the setting existed
    assert run_state(run) == "finished"


def test_training_overrides_map_flags_to_fields() -> None:
    flags = {
        "lr": 0.01,
        "keep_seen": True,
        "ks": "5,10",
        "hidden_size": 32,
        "max_len": None,
        "out": Path("x"),
        "seed": None,
    }
    overrides = training_overrides(flags, skip=("out",))
    assert overrides["lr"] == 0.01 and overrides["exclude_seen"] is False
    assert overrides["ks"] == [5, 10]
    assert overrides["model_settings"] == {"hidden_size": 32}
    with pytest.raises(TypeError, match="losses"):
        training_overrides({"losses": "bce"})


def test_grid_defaults_are_the_demo() -> None:
    grid = Grid()
    assert grid.datasets == ["synthetic"] and grid.losses == ["bce", "ce", "improved"]
    assert grid.seeds == [0, 1, 2]


def test_arms_and_the_shuffle_axis_name_their_rows_and_folders(tmp_path: Path) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(
        "[grid]\n"
        'losses = ["bce", {loss = "sampled-ce", sampler = "in-batch", logq = true}, "improved"]\n'
        "shuffle = [false, true]\nseeds = [0]\n"
    )
    values, settings = read_grid_file(path)
    grid = make_grid(values, str(path))
    assert grid.losses_for("sasrec") == [
        "bce",
        "bce shuffled",
        "sampled-ce in-batch logq",
        "sampled-ce in-batch logq shuffled",
        "improved",
        "improved shuffled",
    ]
    assert grid.baseline_for("sasrec") == "bce"  # the model's own loss, ordered
    runs = plan_runs(grid, settings, tmp_path)
    folders = [run.run_dir.relative_to(tmp_path).parts[2] for run in runs]
    assert folders[2:4] == ["sampled-ce-in-batch-logq", "sampled-ce-in-batch-logq-shuffled"]
    arm = runs[2].config
    assert (arm.sampler, arm.logq, arm.negatives_unseen, arm.shuffle_train) == (
        "in-batch",
        True,
        False,  # negatives outside the history are uniform: an arm's own sampler draws anywhere
        False,
    )
    assert runs[0].config.negatives_unseen  # the other arms keep the preset's
    assert [run.config.shuffle_train for run in runs] == [False, True] * 3
    differing = {
        key
        for run in runs
        for key, value in run.config.model_dump().items()
        if value != runs[0].config.model_dump()[key]
    }
    assert differing == {"loss", "sampler", "logq", "negatives_unseen", "shuffle_train"}
    shuffled = make_grid({"losses": ["improved"], "shuffle": [False, True], "seeds": [0]}, "t")
    assert (
        make_grid({**shuffled.model_dump(), "baseline": "improved shuffled"}, "t").baseline_for(
            "sasrec"
        )
        == "improved shuffled"
    )


def test_arms_the_loss_cannot_use_or_repeat_are_refused(tmp_path: Path) -> None:
    full = make_grid({"losses": [{"loss": "improved", "sampler": "in-batch"}]}, "t")
    with pytest.raises(LossbenchError, match="scores the full catalogue"):
        plan_runs(full, {}, tmp_path)
    same = make_grid({"losses": ["bce", {"loss": "bce", "sampler": "uniform"}]}, "t")
    with pytest.raises(LossbenchError, match="the same arm"):
        plan_runs(same, {}, tmp_path)
    with pytest.raises(LossbenchError, match="unknown loss 'bc'"):
        make_grid({"losses": [{"loss": "bc"}]}, "t")
    with pytest.raises(LossbenchError, match="grid.losses"):
        make_grid({"losses": [{"loss": "bce", "negatives": 3}]}, "t")


def test_a_temporal_grid_needs_timestamps_and_gets_its_own_folders(tmp_path: Path) -> None:
    grid = make_grid({"datasets": ["lastfm"], "losses": ["bce"], "seeds": [0]}, "t")
    with pytest.raises(LossbenchError, match="lastfm has no timestamps"):
        plan_runs(grid, {"split": "temporal"}, tmp_path)
    timed = make_grid({"datasets": ["ml-latest-small"], "losses": ["bce"], "seeds": [0]}, "t")
    (run,) = plan_runs(timed, {"split": "temporal", "test_quantile": 0.95}, tmp_path)
    expected = tmp_path / "ml-latest-small-temporal-v0.8-t0.95" / "sasrec" / "bce" / "seed0"
    assert run.run_dir == expected


def test_a_run_saved_before_the_split_and_sampler_settings_existed_is_finished(
    tmp_path: Path,
) -> None:
    (run,) = plan_runs(make_grid({"losses": ["bce"], "seeds": [0]}, "test"), {}, tmp_path)
    saved = run.config.model_dump(mode="json")
    for name in ("split", "valid_quantile", "test_quantile", "shuffle_train", "logq"):
        del saved[name]
    finish_fake(run, saved)
    assert run_state(run) == "finished"
    finish_fake(run, saved | {"shuffle_train": True})
    assert run_state(run) == "changed"
