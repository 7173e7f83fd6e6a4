"""Wall-clock time of one comparison grid under the local executor and under Ray.

    python bench/executors.py                        # sasrec x {bce, ce, improved} x seeds
    python bench/executors.py --seeds 4 --epochs 3   # a bigger grid
    python bench/executors.py --local-threads 1      # local runs on one thread each
    python bench/executors.py --json

One grid on the synthetic dataset (small model, a fixed number of epochs: patience above
them, so every run does the same work), with enough seeds that each core gets about two
runs, timed in this one process: first the local executor (one run at a time, every core's
thread on it), then Ray with one CPU per run (as many runs side by side as there are cores).
Ray's start (a local instance sized to the local machine) is timed apart and not counted; its
workers' start (each imports torch) is. With GPUs, the same grid again on the GPUs: local
(one run at a time on one GPU) against Ray with `--gpus-per-run 1` and `0.5`.
Each timing trains into a fresh temporary folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lossbench.compare.execute.ray_cluster import import_ray
from lossbench.compare.execute.ray_executor import RayExecutor, RunResources
from lossbench.compare.execute.runner import execute_plan, run_locally
from lossbench.compare.execute.types import Executor
from lossbench.compare.plan.build import build_plan
from lossbench.compare.plan.grid import make_grid
from lossbench.data.prepared import PreparedDataset
from lossbench.data.store import ensure_prepared
from lossbench.errors import LossbenchError
from lossbench.paths import default_data_dir

LOSSES = ["bce", "ce", "improved"]


def time_grid(
    dataset: PreparedDataset, settings: dict[str, Any], seeds: int, ray: RunResources | None
) -> float:
    """Seconds to train the grid from nothing, locally (`ray` None) or as Ray tasks."""
    grid = make_grid({"losses": LOSSES, "seeds": list(range(seeds))}, "bench")
    with tempfile.TemporaryDirectory() as out:
        plan = build_plan(grid, settings, Path(out))
        executor: Executor = run_locally if ray is None else RayExecutor(ray, Path(out))
        start = time.perf_counter()
        execute_plan(plan, lambda name, split: dataset, executor=executor)
        return time.perf_counter() - start


def bench_executors(
    data_dir: Path, seeds: int | None, epochs: int, local_threads: int | None = None
) -> dict[str, Any]:
    import torch

    ray = import_ray()
    cores = os.cpu_count() or 1
    seeds = seeds or max(1, math.ceil(2 * cores / len(LOSSES)))
    dataset = ensure_prepared(data_dir, "synthetic")
    settings: dict[str, Any] = {
        "max_epochs": epochs,
        "patience": epochs + 1,
        "model_settings": {"hidden_size": 32, "num_layers": 1, "max_len": 50},
    }
    threads = local_threads or cores
    row: dict[str, Any] = {
        "runs": len(LOSSES) * seeds,
        "epochs": epochs,
        "cores": cores,
        "gpus": torch.cuda.device_count(),
        "local_threads": threads,
    }
    cpu = {**settings, "device": "cpu"}
    row["local_seconds"] = time_grid(dataset, {**cpu, "threads": threads}, seeds, None)

    started = time.perf_counter()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    row["ray_start_seconds"] = time.perf_counter() - started
    try:
        one_cpu = RunResources(None, 1, 0.0, 0)
        row["ray_seconds"] = time_grid(dataset, {**cpu, "threads": 1}, seeds, one_cpu)
        if row["gpus"]:
            gpu = {**settings, "device": "auto", "threads": 1}
            local_gpu = {**settings, "device": "cuda", "threads": 1}
            row["local_gpu_seconds"] = time_grid(dataset, local_gpu, seeds, None)
            for share in (1.0, 0.5):
                resources = RunResources(None, 1, share, 0)
                row[f"ray_gpus_{share:g}_seconds"] = time_grid(dataset, gpu, seeds, resources)
    finally:
        ray.shutdown()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--seeds", type=int, default=None, help="default: two runs per core")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of every run")
    parser.add_argument(
        "--local-threads", type=int, default=None, help="threads of a local run (default: all)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")
    args = parser.parse_args()
    given = [args.seeds, args.local_threads]
    if any(n is not None and n < 1 for n in given) or args.epochs < 1:
        parser.exit(2, "--seeds, --epochs and --local-threads must be >= 1\n")
    row = bench_executors(args.data_dir, args.seeds, args.epochs, args.local_threads)
    if args.json:
        json.dump(row, sys.stdout, indent=2)
        print()
        return
    print(
        f"synthetic, sasrec x {{{', '.join(LOSSES)}}}: {row['runs']} runs of {row['epochs']} "
        f"epochs, {row['cores']} cores, {row['gpus']} GPUs"
    )
    local, ray = row["local_seconds"], row["ray_seconds"]
    start = row["ray_start_seconds"]
    print(f"local, {row['local_threads']} thread(s) per run: {local:8.1f} s")
    print(f"ray, 1 CPU per run:      {ray:8.1f} s  (Ray's own start, {start:.1f} s, not counted)")
    print(f"local / ray:             {local / ray:8.2f}x")
    if row["gpus"]:
        local_gpu = row["local_gpu_seconds"]
        print(f"local, one GPU:          {local_gpu:8.1f} s")
        for share in ("1", "0.5"):
            seconds = row[f"ray_gpus_{share}_seconds"]
            ratio = local_gpu / seconds
            print(f"ray, {share} GPU per run: {seconds:8.1f} s  (local / ray {ratio:.2f}x)")


if __name__ == "__main__":
    try:
        main()
    except LossbenchError as error:  # bad input: one line, no traceback
        sys.exit(f"error: {error}")
