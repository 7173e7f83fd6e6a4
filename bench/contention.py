"""Seconds per training epoch alone and beside a busy process, for the former thread setting
and today's default, in one run.

    python bench/contention.py                         # lastfm if prepared, else synthetic
    python bench/contention.py --dataset synthetic --epochs 4 --rounds 3 --json

Each training is its own `lossbench train` process (sasrec + improved), so torch's threads
start fresh every time. "former" is `--threads N` with N torch's default (one thread per
core, spin-waiting: what every run did before threads followed the free cores); "default"
gives no `--threads`. "shared" runs while a busy process started by this script (a Python
loop pinned to the last core this script may use) keeps that core busy. Seconds per epoch
are the median of the epochs after the first; within each round both settings run alone,
then both shared, in alternating order. Run it on an otherwise idle machine: it first
prints how many cores' worth other processes were using. Linux only (CPU affinity and
/proc/stat).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

import lossbench
from lossbench.data.prepared import is_prepared
from lossbench.paths import default_data_dir
from lossbench.training.run_files import HISTORY_FILE
from lossbench.training.threads import CpuSample, busy_seconds, others_busy, run_cores

# Variables that would pin torch's thread count in the children: the bench compares policies.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def child_environment(data_dir: Path) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if k not in _THREAD_VARIABLES}
    paths = [str(Path(lossbench.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    environment["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    environment["LOSSBENCH_DATA_DIR"] = str(data_dir)
    return environment


def torch_default_threads(environment: dict[str, str]) -> int:
    """torch's thread count in a fresh process with this environment."""
    code = "import torch; print(torch.get_num_threads())"
    done = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip())


def others_now(seconds: float = 1.0) -> float:
    """Cores' worth of CPU time other processes use now, on this script's cores."""
    cores = run_cores()
    ticks = os.sysconf("SC_CLK_TCK")

    def sample() -> CpuSample:
        stat = Path("/proc/stat").read_text()
        return CpuSample(time.monotonic(), busy_seconds(cores, stat, ticks), time.process_time())

    before = sample()
    time.sleep(seconds)
    return others_busy(before, sample())


@contextlib.contextmanager
def busy_core(core: int) -> Iterator[int]:
    """A Python loop pinned to `core` while the block runs (its pid)."""
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(loop.pid, {core})
        time.sleep(1.0)  # running, and seen by the next run's first look at the machine
        yield loop.pid
    finally:
        loop.kill()
        loop.wait()


def epoch_seconds(
    dataset: str, epochs: int, threads: int | None, environment: dict[str, str], out: Path
) -> dict[str, Any]:
    """Train once in a fresh process; the median epoch after the first, and its threads."""
    command = [
        *(sys.executable, "-m", "lossbench", "train", "--dataset", dataset),
        *("--model", "sasrec", "--loss", "improved", "--device", "cpu"),
        *("--max-epochs", str(epochs), "--patience", str(epochs), "--out", str(out)),
        *(("--threads", str(threads)) if threads is not None else ()),
    ]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"training failed ({' '.join(command[3:])}):\n{done.stderr[-2000:]}")
    history = pl.read_csv(out / HISTORY_FILE)
    seconds = history["train_seconds"].to_list()
    return {
        "seconds": statistics.median(seconds[1:]),
        "epochs": seconds,
        "threads": sorted(set(history["threads"].to_list())),
    }


def measure(
    dataset: str, epochs: int, rounds: int, data_dir: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    environment = child_environment(data_dir)
    former_threads = torch_default_threads(environment)
    setup = {
        "dataset": dataset,
        "epochs": epochs,
        "rounds": rounds,
        "cores": len(run_cores()),
        "former_threads": former_threads,
        "others_busy_before": others_now(),
    }
    settings = {"former": former_threads, "default": None}
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as work:
        for round_index in range(rounds):
            order = list(settings) if round_index % 2 == 0 else list(settings)[::-1]
            for condition in ("alone", "shared"):
                shared = condition == "shared"
                with busy_core(max(run_cores())) if shared else contextlib.nullcontext():
                    for name in order if condition == "alone" else order[::-1]:
                        out = Path(work) / f"{round_index}-{condition}-{name}"
                        run = epoch_seconds(dataset, epochs, settings[name], environment, out)
                        runs.append({"setting": name, "condition": condition, **run})
    return setup, runs


def table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting: median seconds alone and shared over the rounds, and the ratios."""

    def median(setting: str, condition: str) -> float:
        return statistics.median(
            r["seconds"] for r in runs if r["setting"] == setting and r["condition"] == condition
        )

    def threads(setting: str, condition: str) -> list[int]:
        chosen = {
            t
            for r in runs
            if (r["setting"], r["condition"]) == (setting, condition)
            for t in r["threads"]
        }
        return sorted(chosen)

    former_alone = median("former", "alone")
    rows = []
    for setting in ("former", "default"):
        alone, shared = median(setting, "alone"), median(setting, "shared")
        rows.append(
            {
                "setting": setting,
                "alone_seconds": alone,
                "shared_seconds": shared,
                "shared_over_alone": shared / alone,
                "alone_over_former_alone": alone / former_alone,
                "threads_alone": threads(setting, "alone"),
                "threads_shared": threads(setting, "shared"),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--dataset", default=None, help="default: lastfm if prepared")
    parser.add_argument("--epochs", type=int, default=4, help="per run; the first is dropped")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if args.epochs < 2 or args.rounds < 1:
        parser.exit(2, "--epochs must be >= 2 and --rounds >= 1\n")
    dataset = args.dataset or ("lastfm" if is_prepared(args.data_dir, "lastfm") else "synthetic")
    setup, runs = measure(dataset, args.epochs, args.rounds, args.data_dir)
    rows = table(runs)
    if args.json:
        print(json.dumps({"setup": setup, "table": rows, "runs": runs}, indent=2))
        return
    print(
        f"sasrec + improved on {dataset}, {setup['cores']} cores, former setting --threads "
        f"{setup['former_threads']}; other processes used {setup['others_busy_before']:.2f} "
        "cores before the start"
    )
    print(
        f"{'setting':<9} {'alone s':>8} {'shared s':>9} {'shared/alone':>13} "
        f"{'alone/former':>13}  threads alone / shared"
    )
    for row in rows:
        print(
            f"{row['setting']:<9} {row['alone_seconds']:8.3f} {row['shared_seconds']:9.3f} "
            f"{row['shared_over_alone']:12.2f}x {row['alone_over_former_alone']:12.3f}x  "
            f"{row['threads_alone']} / {row['threads_shared']}"
        )


if __name__ == "__main__":
    main()
