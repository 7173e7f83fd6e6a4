"""Two processes on one `--out` never train the same run: a lock per run folder."""

from __future__ import annotations

import json
import os
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from lossbench.compare.execute.resume import move_aside
from lossbench.compare.execute.runner import run_locally
from lossbench.compare.plan.build import build_plan
from lossbench.compare.plan.grid import make_grid
from lossbench.data.store import make_synthetic_prepared
from lossbench.errors import LossbenchError
from lossbench.training.config import build_config
from lossbench.training.entry import PlanEntry, plan_entry
from lossbench.training.loop import RunResult, train_alone
from lossbench.training.run_files import CONFIG_FILE, METRICS_FILE
from lossbench.training.run_lock import lock_holder, lock_path, run_lock


def test_a_held_lock_is_refused_and_names_its_process(tmp_path: Path) -> None:
    run_dir = tmp_path / "seed0"
    with run_lock(run_dir, wait=False) as held:
        assert held and lock_holder(run_dir) == os.getpid()
        with run_lock(run_dir, wait=False) as again:
            assert not again
    assert not lock_path(run_dir).exists()  # released and removed
    with run_lock(run_dir, wait=False) as held:
        assert held


def test_train_and_move_aside_refuse_a_run_being_trained(tmp_path: Path) -> None:
    dataset = make_synthetic_prepared(n_users=40, n_items=30, mean_length=6.0, seed=0)
    entry = plan_entry(build_config(overrides={"max_epochs": 1}), tmp_path / "run")
    (tmp_path / "run").mkdir()
    with run_lock(entry.run_dir, wait=False):
        with pytest.raises(LossbenchError, match=f"being trained by process {os.getpid()}"):
            train_alone(entry, dataset)
        with pytest.raises(LossbenchError, match="being trained by process"):
            move_aside(entry.run_dir)
    assert not (tmp_path / "run" / CONFIG_FILE).exists()


def finish_slowly(trained: list[tuple[str, Path]], who: str) -> Any:
    def train(entry: PlanEntry, dataset: Any, console: Console) -> RunResult:
        trained.append((who, entry.run_dir))
        time.sleep(0.2)
        entry.run_dir.mkdir(parents=True, exist_ok=True)
        config = {"config": entry.config.model_dump(mode="json")}
        (entry.run_dir / CONFIG_FILE).write_text(json.dumps(config))
        (entry.run_dir / METRICS_FILE).write_text("{}")
        return RunResult(entry.run_dir, {}, {})

    return train


def test_two_comparisons_on_one_folder_train_each_run_once(tmp_path: Path) -> None:
    grid = make_grid({"losses": ["bce", "ce", "improved"], "seeds": [0, 1]}, "test")
    entries = build_plan(grid, {}, tmp_path).entries
    trained: list[tuple[str, Path]] = []
    results: dict[str, list[Path]] = {}

    def comparison(who: str, delay: float) -> None:
        time.sleep(delay)
        execute = partial(run_locally, train=finish_slowly(trained, who))
        results[who] = execute(entries, lambda name, split: None, Console(quiet=True))

    threads = [
        threading.Thread(target=comparison, args=(who, delay))
        for who, delay in (("first", 0.0), ("second", 0.05))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    runs = [run_dir for _, run_dir in trained]
    assert sorted(runs) == sorted(entry.run_dir for entry in entries)  # each exactly once
    assert results["first"] and results["second"]  # the work was shared
    assert sorted(results["first"] + results["second"]) == sorted(runs)
    assert not list(tmp_path.rglob(".*.lock"))
