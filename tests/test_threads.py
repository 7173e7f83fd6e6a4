"""Threads on the free cores: the decision, the measurement it reads, and no effect on results."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lossbench.data.store import make_synthetic_prepared
from lossbench.training import threads as threads_module
from lossbench.training.config import build_config
from lossbench.training.loop import train_run
from lossbench.training.threads import (
    CpuSample,
    ThreadGovernor,
    busy_seconds,
    cpu_quota,
    others_busy,
    threads_for,
)


@pytest.fixture(autouse=True)
def keep_torch_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("max_threads", "cores", "others", "quota", "expected"),
    [
        (2, 2, 0.05, None, 2),  # idle: torch's default, as before
        (2, 2, 0.4, None, 2),  # a light background job: still both cores
        (2, 2, 0.6, None, 1),  # more than half a core taken: one thread
        (2, 2, 0.97, None, 1),  # one core busy
        (2, 2, 2.5, None, 1),  # all busy: never fewer than one
        (16, 16, 3.2, None, 13),
        (8, 16, 0.0, None, 8),  # at most torch's default (e.g. physical cores)
        (64, 64, 30.0, 2.0, 2),  # a container's --cpus 2 on a busy host
        (64, 64, 0.0, 1.5, 2),
        (64, 64, 63.0, 4.0, 1),
    ],
)
def test_threads_follow_the_free_cores(
    max_threads: int, cores: int, others: float, quota: float | None, expected: int
) -> None:
    assert threads_for(max_threads, cores, others, quota) == expected


def test_others_busy_is_the_cores_busy_time_less_the_runs_own() -> None:
    before = CpuSample(wall=10.0, busy=100.0, own=5.0)
    assert others_busy(before, CpuSample(wall=12.0, busy=103.0, own=6.0)) == 1.0
    assert others_busy(before, CpuSample(wall=12.0, busy=100.5, own=6.0)) == 0.0  # clock skew
    assert others_busy(before, before) == 0.0


STAT = """cpu  900 0 300 5000 10 0 5 0 0 0
cpu0 100 10 50 2000 7 1 2 3 0 0
cpu1 200 20 60 1000 3 4 5 6 0 0
cpu2 9999 0 0 0 0 0 0 0 0 0
intr 12345 0 0
ctxt 999
"""


def test_busy_seconds_sums_user_nice_system_irq_softirq_steal_of_the_runs_cores() -> None:
    # cpu0: 100 + 10 + 50 + 1 + 2 + 3 = 166 ticks; cpu1: 200 + 20 + 60 + 4 + 5 + 6 = 295
    assert busy_seconds({0, 1}, STAT, 100.0) == pytest.approx(4.61)
    assert busy_seconds({1}, STAT, 100.0) == pytest.approx(2.95)
    assert busy_seconds({7}, STAT, 100.0) == 0.0


def test_cpu_quota_reads_cgroup_v2_then_v1(tmp_path: Path) -> None:
    v2 = tmp_path / "cpu.max"
    v1 = (tmp_path / "quota", tmp_path / "period")
    v2.write_text("200000 100000\n")
    assert cpu_quota(v2, v1) == 2.0
    v2.write_text("max 100000\n")
    assert cpu_quota(v2, v1) is None
    v2.unlink()
    assert cpu_quota(v2, v1) is None  # neither file
    v1[0].write_text("150000\n")
    v1[1].write_text("100000\n")
    assert cpu_quota(v2, v1) == 1.5
    v1[0].write_text("-1\n")  # unlimited
    assert cpu_quota(v2, v1) is None


class FakeMachine:
    """A clock and /proc/stat-like samples: other processes use `others` cores."""

    def __init__(self) -> None:
        self.now, self.busy, self.others = 0.0, 0.0, 0.0

    def clock(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.busy += self.others * seconds

    def sample(self) -> CpuSample:
        return CpuSample(wall=self.now, busy=self.busy, own=0.0)


def governor_on(machine: FakeMachine, requested: int | None = None) -> ThreadGovernor:
    governor = ThreadGovernor(requested, clock=machine.clock, sample=machine.sample)
    governor.cores, governor.quota, governor.max_threads = {0, 1}, None, 2
    return governor


def test_governor_starts_on_the_free_cores_and_follows_them() -> None:
    machine = FakeMachine()
    machine.others = 1.0  # one core busy from the start
    governor = governor_on(machine)
    machine.advance(0.5)  # setting the run up
    assert governor.start() == 1
    machine.others = 0.0  # the other job ends
    machine.advance(threads_module.RECHECK_SECONDS / 2)
    governor.tick()
    assert torch.get_num_threads() == 1  # not yet measured again
    machine.advance(threads_module.RECHECK_SECONDS)
    governor.tick()
    assert torch.get_num_threads() == 2
    machine.others = 1.3  # a new job starts
    machine.advance(threads_module.RECHECK_SECONDS)
    governor.tick()
    assert torch.get_num_threads() == 1


def test_governor_keeps_the_requested_threads() -> None:
    machine = FakeMachine()
    machine.others = 2.0
    governor = governor_on(machine, requested=2)
    assert governor.start() == 2
    machine.advance(10 * threads_module.RECHECK_SECONDS)
    governor.tick()
    assert torch.get_num_threads() == 2


def test_governor_without_cpu_statistics_keeps_torchs_threads() -> None:
    torch.set_num_threads(1)
    governor = ThreadGovernor(None, sample=lambda: None)
    assert governor.start() == 1
    governor.tick()
    assert torch.get_num_threads() == 1


def test_changing_threads_during_a_run_changes_no_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One thread throughout, against a run whose governor flips between 2 and 1 threads at
    every step: the same losses, validation curve and test metrics, to the last bit."""
    dataset = make_synthetic_prepared(n_users=300, n_items=120, mean_length=12.0, seed=3)
    overrides = {
        "dataset": "synthetic",
        "model": "sasrec",
        "loss": "improved",
        "max_epochs": 2,
        "patience": 5,
        "batch_size": 64,
        "device": "cpu",
        "model_settings": {"hidden_size": 16, "max_len": 20, "num_heads": 2},
    }
    single = train_run(build_config(overrides={**overrides, "threads": 1}), dataset, tmp_path / "a")

    machine = FakeMachine()
    loads = itertools.cycle([0.0, 1.5])  # each measurement: free, then one core taken

    def sample(self: ThreadGovernor) -> CpuSample:
        machine.others = next(loads)
        machine.advance(1.0)
        return machine.sample()

    chosen: list[int] = []
    set_threads = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (chosen.append(n), set_threads(n)))
    monkeypatch.setattr(threads_module, "RECHECK_SECONDS", 0.0)
    monkeypatch.setattr(threads_module, "torch_default_threads", lambda: 2)
    monkeypatch.setattr(ThreadGovernor, "_sample", sample)
    flipping = train_run(build_config(overrides=overrides), dataset, tmp_path / "b")
    assert chosen.count(1) > 3 and chosen.count(2) > 3  # flipped back and forth
    assert [h["loss"] for h in flipping.history] == [h["loss"] for h in single.history]
    assert flipping.metrics["test"] == single.metrics["test"]
    assert flipping.metrics["valid"] == single.metrics["valid"]
