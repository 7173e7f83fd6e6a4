"""The executors: options checked before anything runs, the same metrics from Ray tasks as
from the local loop, a killed worker retried or reported, Ctrl-C then resume, a missing extra.

The Ray tests share one local Ray instance (2 CPUs), started and shut down by a fixture;
the ones that kill workers or interrupt the driver are marked slow.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

import lossbench
from lossbench.cli import app
from lossbench.cli.executor_options import ExecutorOptions, settings_from
from lossbench.compare.execute import ray_cluster
from lossbench.compare.execute.executors import (
    ExecutorSettings,
    RunHandling,
    local_executor,
    make_executor,
)
from lossbench.compare.execute.failures import FAILURE_FILE, FailedRuns
from lossbench.compare.execute.ray_executor import RayExecutor, RunResources, show_run
from lossbench.compare.execute.runner import execute_plan
from lossbench.compare.plan.build import ComparisonPlan, build_plan
from lossbench.compare.plan.grid import make_grid, read_grid_file
from lossbench.data.prepared import PreparedDataset
from lossbench.data.splits import SplitSpec
from lossbench.data.store import make_synthetic_prepared
from lossbench.errors import LossbenchError
from lossbench.training.entry import PlanEntry
from lossbench.training.loop import RunResult, train_entry
from lossbench.training.observers import FiniteLoss
from lossbench.training.run_files import METRICS_FILE

SRC = Path(lossbench.__file__).resolve().parents[1]
QUICK = ["--max-epochs", "1", "--hidden-size", "16", "--max-len", "20"]
QUICK_SETTINGS: dict[str, Any] = {
    "max_epochs": 1,
    "model_settings": {"hidden_size": 16, "max_len": 20},
}
runner = CliRunner()


# --- options, without Ray ------------------------------------------------------------------


def ray_settings(**values: Any) -> ExecutorSettings:
    return ExecutorSettings(kind="ray", **values)


def test_ray_runs_get_their_cpus_as_threads_and_bad_combinations_are_refused(
    tmp_path: Path,
) -> None:
    pytest.importorskip("ray")
    factory, settings = make_executor(ray_settings(cpus_per_run=3), {"lr": 0.01}, tmp_path)
    check, watcher, failed = FiniteLoss(), FiniteLoss(), FailedRuns()
    executor = factory(RunHandling(checks=(check,), watchers=(watcher,), failed=failed))
    assert isinstance(executor, RayExecutor)
    assert executor.resources == RunResources(None, 3, 0.0, 0)
    assert executor.failed is failed and executor.watchers == (watcher,)
    # The checks go with every run to its worker; the watchers stay on the driver.
    assert executor.train.keywords == {"observers": [check]}  # type: ignore[union-attr]
    assert settings == {"lr": 0.01, "threads": 3}
    _, settings = make_executor(ray_settings(), {"threads": 2}, tmp_path)
    assert settings["threads"] == 2  # --threads alone sets the CPUs per run
    refused = [
        (ray_settings(cpus_per_run=1), {"threads": 2}, "disagree"),
        (ray_settings(gpus_per_run=1.5), {}, "whole GPUs"),
        (ray_settings(gpus_per_run=0.5), {"device": "cpu"}, "use no GPU"),
        (ray_settings(), {"device": "cuda"}, "add --gpus-per-run"),
        (ExecutorSettings(cpus_per_run=2), {}, "--cpus-per-run apply to --executor ray"),
    ]
    for executor_settings, training, words in refused:
        with pytest.raises(LossbenchError, match=words):
            make_executor(executor_settings, training, tmp_path)
    factory, settings = make_executor(ExecutorSettings(), {"threads": 2}, tmp_path)
    assert factory is local_executor and settings == {"threads": 2}


def test_executor_table_of_a_grid_file_under_the_flags(tmp_path: Path) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(
        '[grid]\nlosses = ["bce"]\n[executor]\nkind = "ray"\ncpus_per_run = 2\ngpus_per_run = 0.5\n'
    )
    read_grid_file(path)  # the executor table is allowed beside [grid] and [settings]
    settings = settings_from(ExecutorOptions(cpus_per_run=1, max_retries=2), path)
    assert settings == ExecutorSettings(kind="ray", cpus_per_run=1, gpus_per_run=0.5, max_retries=2)
    path.write_text('[executor]\nkind = "dask"\n')
    with pytest.raises(LossbenchError, match=r"executor\.kind in .*unknown executor 'dask'"):
        settings_from(ExecutorOptions(), path)
    path.write_text("[executor]\nworkers = 4\n")
    with pytest.raises(LossbenchError, match="valid fields are: kind, ray_address"):
        settings_from(ExecutorOptions(), path)


def test_run_slots_count_what_every_node_holds_at_once() -> None:
    nodes = [{"Resources": {"CPU": 8.0, "GPU": 2.0}}, {"Resources": {"CPU": 4.0}}]
    assert ray_cluster.run_slots(nodes, 1, 0.0) == 12
    assert ray_cluster.run_slots(nodes, 3, 0.0) == 3
    assert ray_cluster.run_slots(nodes, 2, 0.5) == 4  # the GPU-less node holds none
    assert ray_cluster.run_slots(nodes, 1, 1.0) == 2


def test_executor_ray_without_ray_installed_is_one_line_exit_2(tmp_path: Path) -> None:
    script = (
        "import sys; sys.modules['ray'] = None\n"  # `import ray` now raises ImportError
        "from lossbench.cli import main\n"
        f"sys.argv = ['lossbench', '--data-dir', {str(tmp_path)!r}, 'compare', "
        "'--executor', 'ray', '--out', " + repr(str(tmp_path / "out")) + "]\n"
        "main()\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 2, completed.stderr
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, completed.stderr
    assert "pip install 'lossbench[ray]'" in lines[0]
    assert not (tmp_path / "out").exists()  # refused before anything was planned


class Recorder:
    """An observer that keeps what it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def on_start(self, run_dir: Path, record: dict[str, Any]) -> None:
        self.calls.append(("start", (run_dir, record)))

    def on_epoch(self, row: dict[str, Any]) -> None:
        self.calls.append(("epoch", row))

    def on_finish(self, metrics: dict[str, Any]) -> None:
        self.calls.append(("finish", metrics))


def test_a_tracker_on_the_driver_is_told_what_the_loop_would_have_told_it(
    tmp_path: Path,
) -> None:
    """Under Ray a tracker watches from the driver: a run's files, once it ends, tell it the
    same start, epochs and end as the training loop tells an observer beside it."""
    plan = build_plan(
        make_grid({"losses": ["bce"], "seeds": [0]}, "test"),
        {**QUICK_SETTINGS, "max_epochs": 2, "patience": 5, "threads": 1},
        tmp_path,
    )
    (entry,) = plan.entries
    beside, from_files = Recorder(), Recorder()
    train_entry(entry, small_dataset("synthetic", entry.config.split_spec), observers=[beside])
    show_run([from_files], entry.run_dir)
    assert [kind for kind, _ in from_files.calls] == ["start", "epoch", "epoch", "finish"]
    assert from_files.calls == beside.calls
    show_run([], entry.run_dir)  # no watcher: nothing is read


# --- on a local Ray instance ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    # Workers import this checkout's lossbench, and this module's functions by value.
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", "RAY_USAGE_STATS_ENABLED")}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), saved["PYTHONPATH"]]))
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield ray
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def compare(data_dir: Path, out: Path, *args: str) -> str:
    result = runner.invoke(
        app,
        ["--data-dir", str(data_dir), "compare", "--losses", "bce,improved", "--seeds", "0,1"]
        + QUICK
        + ["--out", str(out), *args],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_ray_tasks_give_the_local_loops_metrics_to_the_last_digit(
    ray_instance: Any, data_dir: Path, tmp_path: Path
) -> None:
    compare(data_dir, tmp_path / "local", "--threads", "1")
    shown = compare(data_dir, tmp_path / "ray", "--executor", "ray", "--cpus-per-run", "1")
    assert "done synthetic sasrec + bce, seed 1: test ndcg@20" in shown and "[4/4]" in shown
    runs = sorted((tmp_path / "local").glob("synthetic/sasrec/*/seed*"))
    assert len(runs) == 4
    for local_run in runs:
        ray_run = tmp_path / "ray" / local_run.relative_to(tmp_path / "local")
        local_metrics = json.loads((local_run / METRICS_FILE).read_text())
        ray_metrics = json.loads((ray_run / METRICS_FILE).read_text())
        assert ray_metrics["test"] == local_metrics["test"], local_run
        assert ray_metrics["valid"] == local_metrics["valid"], local_run
        record = json.loads((ray_run / "config.json").read_text())
        assert record["config"]["threads"] == 1 and record["environment"]["threads"] == 1
    # Finished runs are reused whichever executor trained them.
    again = compare(data_dir, tmp_path / "ray", "--threads", "1")
    assert "reusing 4 finished run(s) of 4" in again


def test_reproduce_trains_its_cells_as_ray_tasks_with_the_local_metrics(
    ray_instance: Any, data_dir: Path, tmp_path: Path
) -> None:
    def reproduce(out: Path, *args: str) -> None:
        arguments = ["--data-dir", str(data_dir), "reproduce", "table3", "--dataset"]
        arguments += ["synthetic", "--seeds", "0", *QUICK, "--out", str(out), *args]
        result = runner.invoke(app, [*arguments, "--permutations", "99"])
        assert result.exit_code == 0, result.output + repr(result.exception)

    reproduce(tmp_path / "local", "--threads", "1")
    reproduce(tmp_path / "ray", "--executor", "ray", "--cpus-per-run", "1")
    runs = sorted((tmp_path / "local").glob("synthetic/*/*/seed0"))
    assert len(runs) == 3  # sasrec + bce, bert4rec + mlm, sasrec + improved
    for local_run in runs:
        ray_run = tmp_path / "ray" / local_run.relative_to(tmp_path / "local")
        local_metrics = json.loads((local_run / METRICS_FILE).read_text())
        ray_metrics = json.loads((ray_run / METRICS_FILE).read_text())
        for split in ("valid", "test"):
            assert ray_metrics[split] == local_metrics[split], local_run


def test_reproduce_refuses_ray_options_without_the_ray_executor() -> None:
    result = runner.invoke(
        app, ["reproduce", "table3", "--dataset", "synthetic", "--cpus-per-run", "2"]
    )
    assert isinstance(result.exception, LossbenchError)
    assert "--cpus-per-run apply to --executor ray" in str(result.exception)


def blind(path: str, token: str) -> tuple[str, bool]:
    """A node that cannot see the out folder."""
    return "10.0.0.7", False


def test_a_node_that_cannot_see_the_out_folder_stops_the_comparison_before_training(
    ray_instance: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ray_cluster, "sees_token", blind)
    plan = small_plan(tmp_path, ["bce"], [0])
    with pytest.raises(LossbenchError, match="node 10.0.0.7 cannot see the out folder") as error:
        execute_plan(plan, small_dataset, executor=RayExecutor(RESOURCES, tmp_path))
    assert "shared filesystem" in str(error.value)
    assert not plan.entries[0].run_dir.exists()
    assert list(tmp_path.glob(".worker-check-*")) == []  # the token file is removed


PLUGIN = """
from lossbench.losses import LossInputs, LossParams
import torch.nn.functional as F


def plain_ce(inputs: LossInputs, params: LossParams):
    logits = inputs.hidden @ inputs.item_embeddings[1:].T
    return F.cross_entropy(logits, inputs.targets - 1)


def boom(inputs: LossInputs, params: LossParams):
    raise ValueError("boom at the first batch")
"""


def test_a_failed_run_under_ray_is_recorded_and_the_command_exits_1_as_locally(
    ray_instance: Any, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Losses from a file reach the workers; a run that raises is a FAIL line, its traceback
    in failure.txt, the other run finishes, the exit code is the local executor's 1."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_losses.py").write_text(PLUGIN)
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["--data-dir", str(data_dir), "compare", "--seeds", "0", *QUICK, "--out", str(out)]
        + ["--losses", "./my_losses.py:plain_ce,./my_losses.py:boom", "--executor", "ray"],
    )
    assert result.exit_code == 1, result.output + repr(result.exception)
    line = "FAIL training synthetic sasrec + ./my_losses.py:boom, seed 0: ValueError: boom"
    assert line in result.output
    (fine,) = out.glob("synthetic/sasrec/my_losses.py-plain_ce/seed0")
    (failed,) = out.glob("synthetic/sasrec/my_losses.py-boom/seed0")
    assert (fine / METRICS_FILE).is_file() and not (failed / METRICS_FILE).exists()
    assert "boom at the first batch" in (failed / FAILURE_FILE).read_text()


# --- worker deaths and interruptions (slow: several worker processes start) ---------------

RESOURCES = RunResources(address=None, cpus=1, gpus=0.0, max_retries=0)


def small_dataset(name: str, split: SplitSpec) -> PreparedDataset:
    return make_synthetic_prepared(n_users=200, n_items=80, mean_length=12.0, seed=3)


def small_plan(out: Path, losses: list[str], seeds: list[int]) -> ComparisonPlan:
    grid = make_grid({"losses": losses, "seeds": seeds}, "test")
    return build_plan(grid, {**QUICK_SETTINGS, "threads": 1}, out)


def die_once(entry: PlanEntry, dataset: PreparedDataset, console: Console) -> RunResult:
    """Kills its worker process the first time it trains bce (a marker file remembers)."""
    marker = entry.run_dir.parents[3] / "killed-once"
    if entry.config.loss_name == "bce" and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return train_entry(entry, dataset, console)


@pytest.mark.slow
@pytest.mark.parametrize("retries", [1, 0])
def test_a_killed_worker_is_retried_or_its_run_reported_failed(
    ray_instance: Any, tmp_path: Path, retries: int
) -> None:
    plan = small_plan(tmp_path, ["bce", "improved"], [0])
    bce, improved = (entry.run_dir for entry in plan.entries)
    resources = RunResources(None, 1, 0.0, max_retries=retries)
    executor = RayExecutor(resources, tmp_path, train=die_once)
    console = Console(record=True, width=200)
    prepared: list[str] = []

    def prepare(name: str, split: SplitSpec) -> PreparedDataset:
        prepared.append(name)
        return small_dataset(name, split)

    if retries:
        trained = execute_plan(plan, prepare, console, executor=executor)
        assert prepared == ["synthetic"]  # by the driver, once; workers only read it
        assert sorted(trained) == sorted([bce, improved])
        assert (tmp_path / "killed-once").is_file()  # it did die once
        assert (bce / METRICS_FILE).is_file()
    else:
        failed = FailedRuns()  # as a comparison runs it: recorded, the others go on
        executor = RayExecutor(resources, tmp_path, train=die_once, failed=failed)
        assert execute_plan(plan, small_dataset, console, executor=executor) == [improved]
        (failure,) = failed.failures
        assert failure.label == "synthetic sasrec + bce, seed 0" and failure.run_dir == bce
        assert "WorkerCrashedError" in failure.error and "--max-retries" in failure.error
        assert "WorkerCrashedError" in (bce / FAILURE_FILE).read_text()
        assert "failed synthetic sasrec + bce, seed 0" in console.export_text()
        assert not (bce / METRICS_FILE).exists()
    metrics = json.loads((improved / METRICS_FILE).read_text())  # the other run is intact
    assert metrics["epochs"] == 1 and 0.0 < metrics["test"]["ndcg@20"] <= 1.0


def sleep_on_improved_seed_1(
    entry: PlanEntry, dataset: PreparedDataset, console: Console
) -> RunResult:
    """Trains like any run, except one that never ends until it is cancelled."""
    if (entry.config.loss_name, entry.config.seed) != ("improved", 1):
        return train_entry(entry, dataset, console)
    out = entry.run_dir.parents[3]
    (out / "slow-started").write_text("")
    try:
        while True:
            time.sleep(0.1)
    except KeyboardInterrupt:
        (out / "slow-cancelled").write_text("")
        raise


def worker_pid() -> int:
    return os.getpid()


def interrupt_when_a_run_finishes(out: Path) -> None:
    """Ctrl-C to this process as soon as one run folder holds metrics.json."""
    deadline = time.monotonic() + 600
    while not list(out.glob(f"*/*/*/seed*/{METRICS_FILE}")) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_ctrl_c_cancels_the_runs_and_a_rerun_reuses_the_finished_ones(
    ray_instance: Any, tmp_path: Path
) -> None:
    plan = small_plan(tmp_path, ["bce", "improved"], [0, 1])
    executor = RayExecutor(RESOURCES, tmp_path, train=sleep_on_improved_seed_1)
    threading.Thread(target=interrupt_when_a_run_finishes, args=(tmp_path,), daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        execute_plan(plan, small_dataset, executor=executor)
    finished = [entry.run_dir for entry in plan.entries if (entry.run_dir / METRICS_FILE).exists()]
    assert finished and (plan.entries[3].run_dir not in finished)
    if (tmp_path / "slow-started").exists():
        assert (tmp_path / "slow-cancelled").exists()  # it was interrupted, not left running
    assert list(tmp_path.rglob("*.tmp")) == []  # nothing half-written
    # Both CPUs are free again: no cancelled run still holds one.
    ray_instance.get(ray_instance.remote(num_cpus=2)(worker_pid).remote(), timeout=120)
    saved = {run: (run / METRICS_FILE).read_bytes() for run in finished}

    console = Console(record=True, width=200)
    rest = [entry.run_dir for entry in plan.entries if entry.run_dir not in finished]
    trained = execute_plan(plan, small_dataset, console, executor=RayExecutor(RESOURCES, tmp_path))
    assert sorted(trained) == sorted(rest)
    assert f"reusing {len(finished)} finished run(s) of 4" in console.export_text()
    assert all((run / METRICS_FILE).read_bytes() == saved[run] for run in finished)
    assert all((entry.run_dir / METRICS_FILE).is_file() for entry in plan.entries)
