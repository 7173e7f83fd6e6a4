"""`lossbench tune` end to end on tiny synthetic data: equal budgets, resuming, a killed
process, the test split never read, the tuned grid, and bad input before any training."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("optuna")

import optuna  # noqa: E402

from lossbench.cli import main  # noqa: E402
from lossbench.compare.plan.build import plan_runs  # noqa: E402
from lossbench.compare.plan.grid import make_grid, read_grid_file  # noqa: E402
from lossbench.data import store  # noqa: E402
from lossbench.data.prepared import PreparedDataset  # noqa: E402
from lossbench.data.store import make_synthetic_prepared  # noqa: E402
from lossbench.training.config import build_config  # noqa: E402
from lossbench.training.loop import train_run  # noqa: E402
from lossbench.tuning import study as study_module  # noqa: E402
from lossbench.tuning.runner import tune_losses  # noqa: E402
from lossbench.tuning.space import parse_space  # noqa: E402
from lossbench.tuning.study import TuneRequest, default_storage  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUTPUT_FILES = ("tuning.json", "tuning_progress.png", "tuned.toml")
TINY_FLAGS = ["--max-epochs", "2", "--hidden-size", "8", "--num-layers", "1", "--num-heads", "1"]
TINY_FLAGS += ["--max-len", "10", "--batch-size", "64", "--threads", "1"]
TINY_SETTINGS: dict[str, Any] = {
    "max_epochs": 2,
    "batch_size": 64,
    "threads": 1,
    "model_settings": {"hidden_size": 8, "num_layers": 1, "num_heads": 1, "max_len": 10},
}


def tiny_dataset() -> PreparedDataset:
    return make_synthetic_prepared(n_users=150, n_items=60, mean_length=12.0, seed=1)


@pytest.fixture(scope="module")
def tiny() -> PreparedDataset:
    return tiny_dataset()


def request(out: Path, trials: int, losses: tuple[str, ...] = ("bce", "improved")) -> TuneRequest:
    return TuneRequest(
        dataset="synthetic",
        model="sasrec",
        losses=list(losses),
        space=parse_space(None, "sasrec", "built in"),
        settings=TINY_SETTINGS,
        seed=0,
        trials=trials,
        timeout=None,
        prune=True,
        out_dir=out,
    )


def finished(out: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=default_storage(out))
    trials = study.get_trials(states=study_module.FINISHED)
    return sorted(trials, key=lambda trial: trial.number)


def test_equal_budgets_then_a_rerun_adds_only_the_missing_trials(
    tiny: PreparedDataset, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first, files = tune_losses(request(out, 2), default_storage(out), lambda name, split: tiny)
    assert [len(outcome.trials) for outcome in first] == [2, 2]
    assert {path.name for path in files} == {"tuning.json", "tuning_progress.png", "tuned.toml"}
    assert (out / "study.db").is_file() and (out / "tuning_progress.png").stat().st_size > 1000
    before = {o.loss: [(t.number, t.value, t.params) for t in o.trials] for o in first}
    # Trial k of every loss gets the same sampler seed: the same start-up settings for all.
    assert [t.params for t in first[0].trials] == [t.params for t in first[1].trials]
    assert len({json.dumps(t.params) for t in first[0].trials}) == 2

    second, _ = tune_losses(request(out, 3), default_storage(out), lambda name, split: tiny)
    for outcome in second:
        assert [t.number for t in outcome.trials] == [0, 1, 2]
        assert [(t.number, t.value, t.params) for t in outcome.trials[:2]] == before[outcome.loss]
        assert len(finished(out, outcome.study_name)) == 3  # 1 more, not 3
        assert outcome.trials[2].params not in [t.params for t in outcome.trials[:2]]
    summary = json.loads((out / "tuning.json").read_text())
    assert [entry["trials"] for entry in summary["losses"]] == [3, 3]
    assert summary["losses"][0]["best_value"] == max(t.value for t in second[0].trials if t.value)

    third, _ = tune_losses(request(out, 3), default_storage(out), lambda name, split: tiny)
    assert [len(finished(out, o.study_name)) for o in third] == [3, 3]  # nothing left to do


def test_the_tuned_grid_retrains_exactly_the_best_trials(
    tiny: PreparedDataset, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    outcomes, _ = tune_losses(request(out, 2), default_storage(out), lambda name, split: tiny)
    values, settings = read_grid_file(out / "tuned.toml")
    assert values["losses"] == ["bce", "improved"] and values["seeds"] == [0, 1, 2]
    runs = plan_runs(make_grid(values, "tuned.toml"), settings, tmp_path / "compare")
    for outcome in outcomes:
        assert outcome.best is not None
        trial_dir = out / "trials" / outcome.study_name / f"trial{outcome.best.number:04d}"
        trained = json.loads((trial_dir / "config.json").read_text())["config"]
        (run,) = [r for r in runs if r.config.loss_name == outcome.loss and r.config.seed == 0]
        assert run.config.model_dump(mode="json") == trained
        assert run.config.lr == outcome.best.params["lr"]
        assert run.config.model_settings["dropout"] == outcome.best.params["dropout"]


def test_the_test_split_is_never_read_while_tuning(tiny: PreparedDataset, tmp_path: Path) -> None:
    """Test targets that would break any evaluation (item ids beyond the catalogue) change
    nothing: the trials' values are those of the untouched data."""
    poisoned = dataclasses.replace(
        tiny, test_items=np.full_like(tiny.test_items, tiny.n_items + 10**6)
    )
    config = build_config(overrides={**TINY_SETTINGS, "loss": "bce"})
    with pytest.raises(IndexError):  # the poison is live: a run that tests fails on it
        train_run(config, poisoned, tmp_path / "tested")
    clean_out, poisoned_out = tmp_path / "clean", tmp_path / "poisoned"
    clean, _ = tune_losses(
        request(clean_out, 2, ("bce",)), default_storage(clean_out), lambda name, split: tiny
    )
    dirty, _ = tune_losses(
        request(poisoned_out, 2, ("bce",)),
        default_storage(poisoned_out),
        lambda name, split: poisoned,
    )
    assert [t.value for t in dirty[0].trials] == [t.value for t in clean[0].trials]
    assert not list(poisoned_out.rglob("metrics.json")) and not list(poisoned_out.rglob("*.pt"))


def run_main(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: Any) -> tuple[int, str]:
    """`lossbench ARGS` through `main`: its exit code and what it printed (stdout + stderr)."""
    monkeypatch.setattr(sys, "argv", ["lossbench", *args])
    code = 0
    try:
        main()
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_the_command_prints_the_compare_command(
    tiny: PreparedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setattr(store, "ensure_prepared", lambda data_dir, name, split=None: tiny)
    out = tmp_path / "out"
    args = ["tune", "--losses", "bce,improved", "--trials", "2", "--out", str(out), *TINY_FLAGS]
    code, text = run_main(args, monkeypatch, capsys)
    assert code == 0, text
    assert "bce 2/2 (trial 1)" in text and "improved 2/2 (trial 1)" in text
    assert "the test split was not read" in text
    assert f"lossbench compare --config {out / 'tuned.toml'} --seeds 0,1,2" in text.replace(
        "\n", ""
    )
    values, settings = read_grid_file(out / "tuned.toml")
    assert settings["max_epochs"] == 2 and set(values["per_loss"]) == {"bce", "improved"}


def test_json_prints_the_tuning_summary(
    tiny: PreparedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setattr(store, "ensure_prepared", lambda data_dir, name, split=None: tiny)
    out = tmp_path / "out"
    args = ["tune", "--losses", "bce,improved", "--trials", "1", "--out", str(out), "--json"]
    monkeypatch.setattr(sys, "argv", ["lossbench", *args, *TINY_FLAGS])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    document = json.loads(captured.out)  # the table and lines went to standard error
    assert {k: v for k, v in document.items() if k not in ("files", "compare_command")} == (
        json.loads((out / "tuning.json").read_text())
    )
    assert document["files"] == [str(out / name) for name in OUTPUT_FILES]
    assert document["compare_command"].startswith(f"lossbench compare --config {out}")
    assert [loss["loss"] for loss in document["losses"]] == ["bce", "improved"]
    for loss in document["losses"]:  # the table's best validation values
        assert f"{loss['metric']} {loss['best_value']:.4f}" in captured.err


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--trials", "0"], ["--trials must be at least 1"]),
        (["--timeout", "-5"], ["--timeout must be a positive"]),
        (["--storage", "notadatabase://x"], ["cannot open the storage notadatabase://x"]),
        (["--storage", "sqlite:////no/such/folder/s.db"], ["cannot open the storage"]),
        (["--storage", "postgresql://me:secret@127.0.0.1:1/db"], ["me:***@127.0.0.1"]),
        (["--lr", "0.01"], ["lr is both fixed"]),
        (["--losses", "bce,nope"], ["unknown loss 'nope'"]),
        (["--dataset", "lastfn"], ["did you mean 'lastfm'"]),
        (["--model", "bert4rec", "--losses", "bce"], ["mlm"]),
    ],
)
def test_bad_input_is_one_line_before_any_training(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    extra: list[str],
    words: list[str],
) -> None:
    def no_data(data_dir: Path, name: str, split: object = None) -> PreparedDataset:
        raise AssertionError("the data was loaded")

    monkeypatch.setattr(store, "ensure_prepared", no_data)
    out = tmp_path / "out"
    code, text = run_main(["tune", "--out", str(out), *extra], monkeypatch, capsys)
    assert code == 2, text
    assert all(word in text for word in words), text
    assert "secret" not in text and "Traceback" not in text
    assert len(text.strip().splitlines()) == 1, text
    assert not out.exists() or not list(out.rglob("trial*"))


def test_an_unknown_space_setting_lists_the_valid_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    config = tmp_path / "tune.toml"
    config.write_text("[tune.space]\nlearning_rate = { low = 1e-4, high = 1e-2 }\n")
    code, text = run_main(
        ["tune", "--config", str(config), "--out", str(tmp_path / "out")], monkeypatch, capsys
    )
    assert code == 2 and "[tune.space] in" in text and "'learning_rate' cannot be tuned" in text
    assert "lr, beta1" in text
    assert not (tmp_path / "out").exists()


def test_without_optuna_one_line_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    code, text = run_main(["tune", "--out", str(tmp_path / "out")], monkeypatch, capsys)
    assert code == 2 and "pip install 'lossbench[tune]'" in text
    assert len(text.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


KILLABLE = """
import sys
from lossbench.data import store
from lossbench.data.store import make_synthetic_prepared

tiny = make_synthetic_prepared(n_users=150, n_items=60, mean_length=12.0, seed=1)
store.ensure_prepared = lambda data_dir, name, split=None: tiny
from lossbench.cli import main

sys.argv = ["lossbench", "tune", *sys.argv[1:]]
main()
"""


def trial_states(database: Path) -> list[tuple[int, str, int]]:
    """(number, state, epochs reported so far) of every trial, read without Optuna."""
    if not database.is_file():
        return []
    query = """
        SELECT t.number, t.state, COUNT(v.trial_intermediate_value_id) FROM trials t
        LEFT JOIN trial_intermediate_values v ON v.trial_id = t.trial_id
        GROUP BY t.trial_id ORDER BY t.number
    """
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as connection:
            return list(connection.execute(query))
    except sqlite3.OperationalError:  # the tables are not created yet
        return []


def test_killed_during_a_trial_then_rerun_keeps_the_finished_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    out = tmp_path / "out"
    args = ["--losses", "improved", "--trials", "5", "--out", str(out), "--no-prune", *TINY_FLAGS]
    args += ["--max-epochs", "8", "--patience", "8"]  # longer trials: the kill lands in one
    script = tmp_path / "killable.py"
    script.write_text(KILLABLE)
    env = os.environ | {
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    }
    process = subprocess.Popen(
        [sys.executable, str(script), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            states = trial_states(out / "study.db")
            complete = [n for n, state, _ in states if state == "COMPLETE"]
            if len(complete) >= 2 and states[-1][1] == "RUNNING" and states[-1][2] >= 1:
                break  # in the middle of a trial: it has validated an epoch
            assert process.poll() is None, "the tune process ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("no trial was running after two finished")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    states = trial_states(out / "study.db")
    killed = [n for n, state, _ in states if state == "RUNNING"]
    assert len(killed) == 1
    (name,) = optuna.get_all_study_names(storage=default_storage(out))
    kept = [(t.number, t.value, t.params) for t in finished(out, name)]
    assert len(kept) >= 2

    cut_off = optuna.load_study(study_name=name, storage=default_storage(out)).trials[killed[0]]
    assert cut_off.params  # killed after its settings were drawn

    # Rerun at once: the killed trial's heartbeat is already older than a short grace period.
    monkeypatch.setattr(study_module, "GRACE_SECONDS", 1)
    monkeypatch.setattr(study_module, "HEARTBEAT_SECONDS", 1)
    # SQLite keeps heartbeats to the whole second, and Optuna calls a trial stale when the
    # difference exceeds the grace period: 2 s after the last beat it is, whatever the roundings.
    time.sleep(2.1)
    monkeypatch.setattr(store, "ensure_prepared", lambda data_dir, name, split=None: tiny_dataset())
    code, text = run_main(["tune", *args], monkeypatch, capsys)
    assert code == 0, text
    after = finished(out, name)
    assert [(t.number, t.value, t.params) for t in after[: len(kept)]] == kept
    assert len(after) == 5
    assert after[len(kept)].params == cut_off.params  # the cut-off trial is drawn again
    trial = optuna.load_study(study_name=name, storage=default_storage(out)).trials[killed[0]]
    assert trial.state == optuna.trial.TrialState.FAIL  # marked failed, not counted
    summary = json.loads((out / "tuning.json").read_text())
    assert summary["losses"][0]["failed"] == 1 and summary["losses"][0]["trials"] == 5


def test_a_trial_killed_before_its_first_heartbeat_is_failed_too(
    tiny: PreparedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    tune_losses(request(out, 1, ("bce",)), default_storage(out), lambda name, split: tiny)
    (name,) = optuna.get_all_study_names(storage=default_storage(out))
    orphan = optuna.load_study(study_name=name, storage=default_storage(out)).ask()
    monkeypatch.setattr(study_module, "GRACE_SECONDS", 1)
    time.sleep(1.2)
    (outcome,), _ = tune_losses(
        request(out, 2, ("bce",)), default_storage(out), lambda n, split: tiny
    )
    states = [
        t.state for t in optuna.load_study(study_name=name, storage=default_storage(out)).trials
    ]
    assert states[orphan.number] == optuna.trial.TrialState.FAIL
    assert len(outcome.trials) == 2 and outcome.failed == 1


def test_a_diverged_trial_counts_as_pruned_and_the_tuning_goes_on(
    tiny: PreparedDataset, tmp_path: Path
) -> None:
    """A setting of the space that diverges is a finding, not the end of the study."""
    from rich.console import Console

    from lossbench.training.divergence import DivergedRun

    calls = {"n": 0}

    def diverging_first(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise DivergedRun("the training loss is nan at step 5 of 3 in epoch 2", 2, 5)
        return train_run(*args, **kwargs)

    out = tmp_path / "out"
    console = Console(record=True, width=200)
    (outcome,), _ = tune_losses(
        request(out, 2, ("bce",)),
        default_storage(out),
        lambda name, split: tiny,
        console,
        train=diverging_first,
    )
    states = [trial.state for trial in outcome.trials]
    assert states[0] == optuna.trial.TrialState.PRUNED and len(states) == 2
    assert outcome.trials[0].user_attrs["epochs"] == 2
    assert "diverged (loss not finite at step 5 of epoch 2)" in console.export_text()
