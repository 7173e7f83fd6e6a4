"""Grid expansion into a plan, run folders, validation messages, and resuming a comparison."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from rich.console import Console

from lossbench.cli.options import training_overrides
from lossbench.compare.execute.resume import run_status
from lossbench.compare.execute.runner import execute_plan, run_locally
from lossbench.compare.plan.build import build_plan, plan_runs
from lossbench.compare.plan.grid import Grid, make_grid, read_grid_file
from lossbench.errors import LossbenchError
from lossbench.training.config import build_config
from lossbench.training.entry import PlanEntry
from lossbench.training.loop import RunResult
from lossbench.training.presets import DATASET_SETTINGS
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
    assert shared[0]["max_epochs"] == DATASET_SETTINGS["synthetic"]["max_epochs"]


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
    from lossbench.training.config import merge_layers

    settings = merge_layers(
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


def finish_fake(run: PlanEntry, config: dict[str, Any] | None = None) -> None:
    """What a finished run leaves for `run_status`: config.json, then metrics.json."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    saved = config if config is not None else run.config.model_dump(mode="json")
    (run.run_dir / CONFIG_FILE).write_text(json.dumps({"config": saved}))
    (run.run_dir / METRICS_FILE).write_text("{}")


def fake_executor(trained: list[tuple[str, int]]) -> Any:
    """`run_locally` with a training function that only records what it trains."""

    def fake_train(entry: PlanEntry, dataset: Any, console: Console) -> RunResult:
        trained.append((entry.config.loss_name, entry.config.seed))
        finish_fake(entry)
        return RunResult(entry.run_dir, {}, {})

    return partial(run_locally, train=fake_train)


def no_fit_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake datasets: the memory check has nothing to measure."""
    from lossbench.training import fit_check

    monkeypatch.setattr(fit_check, "check_fits", lambda entry, dataset: None)


def test_resume_trains_only_missing_runs_and_refuses_changed_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_fit_check(monkeypatch)
    grid = make_grid({"losses": ["bce", "ce", "improved"], "seeds": [0, 1]}, "test")
    plan = build_plan(grid, {}, tmp_path)
    runs = plan.entries
    for run in runs[:3]:
        finish_fake(run)  # finished earlier with the same config: reused
    changed = runs[3].config.model_dump(mode="json") | {"lr": 0.5}
    finish_fake(runs[3], changed)  # finished with another config
    runs[4].run_dir.mkdir(parents=True)  # interrupted before a checkpoint: nothing to keep
    (runs[4].run_dir / CONFIG_FILE).write_text("{}")
    states = [run_status(run).state for run in runs]
    assert states == ["finished"] * 3 + ["changed", "missing", "missing"]
    assert run_status(runs[3]).changes == [("lr", 0.5, 0.001)]

    trained: list[tuple[str, int]] = []
    prepared: list[str] = []
    console = Console(record=True, width=300)

    def prepare(name: str, split: Any) -> Any:
        prepared.append(name)

    with pytest.raises(LossbenchError) as refused:
        execute_plan(plan, prepare, console, executor=fake_executor(trained))
    message = str(refused.value)
    assert "1 run(s)" in message and "lr 0.5 -> 0.001" in message
    assert "--retrain-changed" in message
    assert trained == [] and not (tmp_path / "comparison.json").exists()
    assert json.loads((runs[3].run_dir / CONFIG_FILE).read_text())["config"]["lr"] == 0.5

    done = execute_plan(plan, prepare, console, True, fake_executor(trained))
    assert trained == [("ce", 1), ("improved", 0), ("improved", 1)]
    assert done == [run.run_dir for run in runs[3:]]
    assert prepared == ["synthetic"]  # the dataset is loaded once
    (kept,) = runs[3].run_dir.parent.glob("seed1.replaced-*")  # the old run, moved aside
    assert json.loads((kept / CONFIG_FILE).read_text())["config"]["lr"] == 0.5
    assert (kept / METRICS_FILE).is_file()
    text = console.export_text()
    assert "reusing 3 finished run(s) of 6" in text
    assert "retraining it (the old run is kept as seed1.replaced-" in text
    # A second pass finds everything finished and trains nothing.
    assert execute_plan(plan, prepare, console, executor=fake_executor(trained)) == []
    assert len(trained) == 3


def test_thread_count_does_not_make_a_finished_run_stale(tmp_path: Path) -> None:
    (run,) = plan_runs(make_grid({"losses": ["bce"], "seeds": [0]}, "test"), {}, tmp_path)
    saved = run.config.model_dump(mode="json")
    finish_fake(run, saved | {"threads": 7, "checkpoint_every": 3})  # execution only
    assert run_status(run).state == "finished"
    del saved["threads"], saved["checkpoint_every"]
    finish_fake(run, saved)  # finished before the settings existed
    assert run_status(run).state == "finished"


def test_a_setting_the_old_run_did_not_record_counts_as_changed(tmp_path: Path) -> None:
    """A new configuration field is compared too: an old run without it is not reused."""
    (run,) = plan_runs(make_grid({"losses": ["bce"], "seeds": [0]}, "test"), {}, tmp_path)
    saved = run.config.model_dump(mode="json")
    del saved["negatives_unseen"]
    finish_fake(run, saved | {"a_later_setting": "kept"})
    status = run_status(run)
    assert status.state == "changed"
    assert status.changes == [
        ("a_later_setting", "kept", "(not recorded)"),
        ("negatives_unseen", "(not recorded)", True),
    ]


def test_training_overrides_map_flags_to_fields() -> None:
    flags = {
        "lr": 0.01,
        "keep_seen": True,
        "ks": "5,10",
        "hidden_size": 32,
        "max_len": None,
        "seed": None,
    }
    overrides = training_overrides(flags)
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
    with pytest.raises(LossbenchError, match="an arm sets only loss, negatives, sampler, logq"):
        make_grid({"losses": [{"loss": "bce", "lr": 0.1}]}, "t")
    with pytest.raises(LossbenchError, match="grid.losses"):
        make_grid({"losses": [{"loss": "bce", "negatives": -1}]}, "t")


def test_arms_with_their_own_negatives_are_rows_and_folders_of_their_own(tmp_path: Path) -> None:
    arms = ["bce", {"loss": "bce", "negatives": 10}, {"loss": "bpr", "negatives": 10}]
    grid = make_grid({"losses": [*arms, "improved"], "seeds": [0]}, "t")
    assert grid.losses_for("sasrec") == ["bce", "bce 10 negatives", "bpr", "improved"]
    runs = plan_runs(grid, {}, tmp_path)
    assert [run.loss.negatives for run in runs] == [1, 10, 10, 0]  # bpr's own count is 10
    assert [run.run_dir.parts[-2] for run in runs] == ["bce", "bce-10-negatives", "bpr", "improved"]
    # A shared --negatives names the rows it changes; a baseline named by its loss finds them.
    shared = make_grid({"losses": ["bce", "improved"], "seeds": [0], "baseline": "bce"}, "t")
    plan = build_plan(shared, {"negatives": 5}, tmp_path)
    assert [entry.label for entry in plan.entries] == [
        "synthetic sasrec + bce 5 negatives, seed 0",
        "synthetic sasrec + improved, seed 0",
    ]
    assert plan.baselines[("synthetic", "sasrec")] == "bce 5 negatives"
    assert plan.loss_order == ["bce 5 negatives", "improved"]


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
    assert run_status(run).state == "finished"
    finish_fake(run, saved | {"shuffle_train": True})
    assert run_status(run).state == "changed"


def test_flags_and_a_grid_file_choose_the_baseline_by_one_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --baseline: each model's own loss if it is compared, else the first, either way."""
    from typer.testing import CliRunner

    import lossbench.api.comparing as comparing
    from lossbench.cli import app
    from lossbench.compare.ci.step import Outcome
    from lossbench.compare.plan.build import ComparisonPlan

    plans: list[dict[tuple[str, str], str]] = []

    def capture(plan: ComparisonPlan, *args: Any, **kw: Any) -> Outcome:
        plans.append(plan.baselines)
        return Outcome([], pl.DataFrame(), [], [], [])

    monkeypatch.setattr(comparing, "compare_and_judge", capture)  # the plan, as resolved
    toml = tmp_path / "grid.toml"
    toml.write_text('[grid]\nmodels = ["gru4rec", "sasrec"]\nlosses = ["bce", "ce"]\n')
    flags = ["compare", "--model", "gru4rec,sasrec", "--losses", "bce,ce", "--out", str(tmp_path)]
    for args in (flags, ["compare", "--config", str(toml), "--out", str(tmp_path)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    assert plans[0] == plans[1] == {("synthetic", "gru4rec"): "ce", ("synthetic", "sasrec"): "bce"}


def test_synthetic_gets_the_same_epochs_and_patience_in_train_and_compare(
    tmp_path: Path,
) -> None:
    from lossbench.data.store import make_synthetic_prepared
    from lossbench.training.loop import train_run

    train_config = build_config(overrides={"dataset": "synthetic"})
    (entry,) = plan_runs(make_grid({"losses": ["ce"], "seeds": [0]}, "test"), {}, tmp_path)
    assert (train_config.max_epochs, train_config.patience) == (10, 3)
    assert (entry.config.max_epochs, entry.config.patience) == (10, 3)
    assert build_config(overrides={"dataset": "synthetic", "max_epochs": 40}).max_epochs == 40
    assert build_config(overrides={"dataset": "lastfm"}).max_epochs == 200
    dataset = make_synthetic_prepared(n_users=60, n_items=30, mean_length=6.0, seed=0)
    console = Console(record=True, width=200)
    small = entry.config.model_copy(update={"max_epochs": 1, "model_settings": {"max_len": 8}})
    train_run(small, dataset, tmp_path / "run", console)
    assert "up to 1 epochs, stopping after 3 without a better validation" in console.export_text()


def test_the_executor_is_handed_the_entries_to_train(tmp_path: Path) -> None:
    """The seam for other executors: a function of the entries; a run is (entry, dataset)."""
    plan = build_plan(make_grid({"losses": ["ce", "bce"], "seeds": [0, 1]}, "test"), {}, tmp_path)
    finish_fake(plan.entries[0])
    received: list[PlanEntry] = []

    def executor(entries: Any, prepare: Any, console: Console) -> list[Path]:
        received.extend(entries)
        return [entry.run_dir for entry in entries]

    from lossbench.data.store import make_synthetic_prepared

    dataset = make_synthetic_prepared(n_users=40, n_items=30, mean_length=6.0, seed=0)
    done = execute_plan(plan, lambda name, split: dataset, executor=executor)
    assert received == plan.entries[1:] and done == [e.run_dir for e in plan.entries[1:]]
    assert all(entry.loss.name == entry.config.loss_name for entry in received)  # resolved
    assert (tmp_path / "comparison.json").is_file()
