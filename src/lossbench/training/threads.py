"""CPU threads that follow the cores other processes leave free.

torch starts one thread per core, and its threads spin while they wait for each other.
When another process keeps one of two cores busy, one of those threads shares a core with
it, and every parallel region waits for it: an epoch takes several times as long as alone.
Passive waiting (`OMP_WAIT_POLICY=PASSIVE`) softens that but slows the idle machine, and
must be set before torch loads. Fewer threads cost nothing of the kind: with one thread
per free core no thread waits for a core.

So, unless `--threads` is given, a run starts with as many threads as cores are free (the
cores it may run on, less what other processes used of them over the last moments, rounded
to the nearest core, at least one, at most torch's default) and measures again every
`RECHECK_SECONDS` between steps, so a job that starts or ends later moves the count too.
The thread count changes no result (tested). "Used by other processes" is the busy time of
the run's cores in `/proc/stat` less the run's own CPU time; where that file does not exist
(not Linux) the run keeps torch's default, as with `--threads`.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

RECHECK_SECONDS = 3.0
FIRST_SAMPLE_SECONDS = 0.1  # the shortest look at the machine before the first decision
_PROC_STAT = Path("/proc/stat")
_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = (
    Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
    Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
)
# /proc/stat fields after the cpu name: user nice system idle iowait irq softirq steal ...
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


def threads_for(max_threads: int, cores: int, others: float, quota: float | None = None) -> int:
    """Threads for a run that may use `cores` while other processes use `others` of them
    (in cores, e.g. 0.97), within a CPU `quota` (cores) if any: the free cores rounded to
    the nearest, within 1..max_threads."""
    free = cores - max(others, 0.0)
    if quota is not None:
        free = min(free, quota)
    return max(1, min(max_threads, math.floor(free + 0.5)))


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU seconds at one moment: busy time of the run's cores, the process's own."""

    wall: float
    busy: float
    own: float


def others_busy(before: CpuSample, after: CpuSample) -> float:
    """Cores' worth of time other processes used between two samples (>= 0)."""
    wall = after.wall - before.wall
    if wall <= 0:
        return 0.0
    return max(0.0, (after.busy - before.busy) - (after.own - before.own)) / wall


def run_cores() -> set[int]:
    """The CPUs this process may run on."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def cpu_quota(v2: Path = _CGROUP_V2, v1: tuple[Path, Path] = _CGROUP_V1) -> float | None:
    """The cgroup's CPU limit in cores (a container's `--cpus`), or None when unlimited."""
    try:
        quota, period = v2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us, period_us = (int(path.read_text()) for path in v1)
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def busy_seconds(cores: set[int], stat: str, ticks_per_second: float) -> float:
    """Busy CPU seconds so far of `cores`, from the text of /proc/stat."""
    total = 0
    for line in stat.splitlines():
        name, _, fields = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            values = fields.split()
            total += sum(int(values[i]) for i in _BUSY_FIELDS if i < len(values))
    return total / ticks_per_second


@functools.cache
def torch_default_threads() -> int:
    """torch's thread count before any run changed it (OMP_NUM_THREADS, else the cores)."""
    return torch.get_num_threads()


class ThreadGovernor:
    """Sets a run's torch threads and keeps them on the free cores (see the module doc)."""

    def __init__(
        self,
        requested: int | None,
        clock: Callable[[], float] = time.monotonic,
        sample: Callable[[], CpuSample | None] | None = None,
    ) -> None:
        self.requested = requested
        self.clock = clock
        self.cores = run_cores()
        self.quota = cpu_quota()
        self.max_threads = torch_default_threads()
        self.sample = sample or self._sample
        self.last = None if requested is not None else self.sample()

    def start(self) -> int:
        """Set the run's first thread count (after at least a short look at the machine)."""
        if self.requested is not None:
            torch.set_num_threads(self.requested)
        elif self.last is not None:
            waited = self.clock() - self.last.wall
            if waited < FIRST_SAMPLE_SECONDS:
                time.sleep(FIRST_SAMPLE_SECONDS - waited)
            self._adjust()
        return torch.get_num_threads()

    def tick(self) -> None:
        """Between steps: measure again when `RECHECK_SECONDS` have passed since the last."""
        if self.last is not None and self.clock() - self.last.wall >= RECHECK_SECONDS:
            self._adjust()

    def _adjust(self) -> None:
        assert self.last is not None
        now = self.sample()
        if now is None:
            return
        others = others_busy(self.last, now)
        threads = threads_for(self.max_threads, len(self.cores), others, self.quota)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        self.last = now

    def _sample(self) -> CpuSample | None:
        try:
            stat = _PROC_STAT.read_text()
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        return CpuSample(self.clock(), busy_seconds(self.cores, stat, ticks), time.process_time())
