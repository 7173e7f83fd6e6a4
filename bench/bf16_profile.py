"""Where a Beauty epoch's time goes in fp32 and bf16, and how near the machine's limit the
full softmax runs.

    python bench/bf16_profile.py                  # beauty-s3rec: rates, softmax step, profile
    python bench/bf16_profile.py --json           # the same numbers as JSON
    python bench/bf16_profile.py --batches 0      # the whole epoch in the profile (slow)
    python bench/bf16_profile.py --acceptance     # also `lossbench train` fp32 then bf16

Three parts, all at the torch threads of the process (`OMP_NUM_THREADS`, `--threads`):

1. `matmul`: GFLOP/s of this machine's matrix products in fp32 and bf16: a square 2048^3
   product and the three products of the full softmax on one training batch (N positions,
   D = 64, V items): the logits N x D x V, the hidden states' gradient N x V x D, the item
   table's gradient D x N x V.
2. `softmax`: forward + backward of `improved`'s loss on that batch's shape (random states),
   fp32 and bf16 interleaved round by round (a shared machine's speed drifts), medians, and the
   achieved GFLOP/s of its three products beside the rates of part 1.
3. `profile`: `--batches` training steps of SASRec + improved on the dataset (the study's
   settings, `lossbench train`'s step: encoder, loss, backward, Adam) under torch.profiler,
   fp32 then bf16, the top operations by self time.

`--acceptance` runs `lossbench train --dataset D --model sasrec --loss improved --max-epochs 2
--threads 1 --precision P` for fp32 then bf16, one after the other, and prints each precision's
median train_seconds of epochs 1-2, the bf16 / fp32 ratio and each one's peak memory.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from harness import prepared_dataset, run_config
from lossbench.errors import LossbenchError
from lossbench.losses.base import LossInputs, LossParams
from lossbench.losses.full_softmax import full_softmax_ce
from lossbench.paths import default_data_dir
from lossbench.training.entry import plan_entry
from lossbench.training.loop import RunHooks, set_up
from lossbench.training.setup import cpu_has_bf16_matmul

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
CPU = torch.device("cpu")
WIDTH = 64


def autocast(precision: str, device: torch.device = CPU) -> AbstractContextManager[Any]:
    """What training wraps its steps in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(
    m: int, k: int, n: int, dtype: torch.dtype, repeats: int, device: torch.device = CPU
) -> float:
    """GFLOP/s of an (m x k) @ (k x n) product in `dtype` on `device`, best of `repeats`."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


def softmax_shapes(
    positions: int, n_items: int, square: int = 2048
) -> dict[str, tuple[int, int, int]]:
    """A square product and the full softmax's three products (M, K, N) on one batch."""
    return {
        f"square {square}^3": (square, square, square),
        "logits N x D x V": (positions, WIDTH, n_items),
        "grad hidden N x V x D": (positions, n_items, WIDTH),
        "grad items D x N x V": (WIDTH, positions, n_items),
    }


def matmul_rates(
    positions: int, n_items: int, repeats: int, device: torch.device = CPU, square: int = 2048
) -> list[dict[str, Any]]:
    return [
        {
            "product": name,
            "shape": list(shape),
            **{p: matmul_rate(*shape, dtype, repeats, device) for p, dtype in PRECISIONS.items()},
        }
        for name, shape in softmax_shapes(positions, n_items, square).items()
    ]


def softmax_step(
    positions: int, n_items: int, rounds: int, device: torch.device = CPU
) -> dict[str, Any]:
    """Median seconds and GFLOP/s of the loss's forward + backward, fp32 and bf16 (on CUDA
    also each one's peak memory), and how far bf16's loss and gradients are from fp32's."""
    generator = torch.Generator().manual_seed(0)
    table = (torch.randn(n_items + 1, WIDTH, generator=generator) * 0.05).to(device)
    hidden = (torch.randn(positions, WIDTH, generator=generator) * 0.5).to(device)
    targets = torch.randint(1, n_items + 1, (positions,), generator=generator).to(device)
    table.requires_grad_()
    hidden.requires_grad_()

    def step(precision: str) -> tuple[float, list[torch.Tensor]]:
        table.grad, hidden.grad = None, None
        synchronize(device)
        start = time.perf_counter()
        with autocast(precision, device):
            loss = full_softmax_ce(LossInputs(hidden, targets, table), LossParams())
        loss.backward()
        synchronize(device)
        assert hidden.grad is not None and table.grad is not None
        return time.perf_counter() - start, [loss.detach(), hidden.grad, table.grad]

    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    results = {p: step(p)[1] for p in PRECISIONS}  # warm-up
    memory = {}
    for precision in PRECISIONS:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            step(precision)
            memory[f"{precision}_peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    for _ in range(rounds):
        for precision in PRECISIONS:  # interleaved: drift hits both alike
            seconds[precision].append(step(precision)[0])
    flops = 3 * 2 * positions * WIDTH * n_items
    medians = {p: statistics.median(s) for p, s in seconds.items()}
    names = ("loss", "grad_hidden", "grad_table")
    differences = [
        float((low - wide).norm() / wide.norm().clamp(min=1e-30))
        for low, wide in zip(results["bf16"], results["fp32"], strict=True)
    ]
    return {
        "positions": positions,
        "n_items": n_items,
        **{f"{p}_ms": 1e3 * s for p, s in medians.items()},
        **{f"{p}_gflops": flops / s / 1e9 for p, s in medians.items()},
        "bf16_vs_fp32": medians["bf16"] / medians["fp32"],
        **memory,
        "bf16_relative_difference": dict(zip(names, differences, strict=True)),
    }


def profile_steps(name: str, data_dir: Path, precision: str, batches: int) -> dict[str, Any]:
    """`batches` training steps (0: a whole epoch) under torch.profiler: top ops by self time."""
    config = run_config(name, "improved", 1, precision=precision)
    dataset = prepared_dataset(data_dir, name)
    with tempfile.TemporaryDirectory() as run_dir:
        entry = plan_entry(config, Path(run_dir))
        run = set_up(entry, dataset, Console(quiet=True), RunHooks(evaluate_test=False))
    run.model.train()
    all_batches = list(run.batcher.epoch())
    chosen = all_batches[: batches or len(all_batches)]

    def step(parts: Any) -> None:
        with autocast(precision):
            loss = run.step(parts)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()

    step(chosen[0])  # warm-up
    with torch.profiler.profile() as profiler:
        start = time.perf_counter()
        for parts in chosen:
            step(parts)
        seconds = time.perf_counter() - start
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    top = [
        {
            "op": e.key,
            "self_ms": e.self_cpu_time_total / 1e3,
            "share": e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in events[:12]
    ]
    positions = sum(len(p.positions) for parts in chosen for p in parts)
    return {
        "precision": precision,
        "batches": len(chosen),
        "batches_per_epoch": len(all_batches),
        "positions_per_batch": positions / len(chosen),
        "seconds_profiled": seconds,
        "top_ops": top,
    }


def acceptance(name: str, data_dir: Path, rounds: int) -> dict[str, Any]:
    """`lossbench train ... --precision P` for fp32 then bf16, `rounds` times: each one's
    median train_seconds of epochs 1-2 and peak memory, and the bf16 / fp32 ratio."""
    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    memory: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for _ in range(rounds):
        for precision in PRECISIONS:
            with tempfile.TemporaryDirectory() as out:
                command = [sys.executable, "-m", "lossbench", "--data-dir", str(data_dir)]
                command += ["train", "--dataset", name, "--model", "sasrec", "--loss"]
                command += ["improved", "--max-epochs", "2", "--threads", "1"]
                command += ["--precision", precision, "--out", out]
                subprocess.run(command, check=True, capture_output=True)
                with next(Path(out).rglob("history.csv")).open() as file:
                    rows = list(csv.DictReader(file))
            seconds[precision] += [float(row["train_seconds"]) for row in rows]
            memory[precision].append(max(float(row["peak_memory_mb"]) for row in rows))
    medians = {p: statistics.median(s) for p, s in seconds.items()}
    return {
        "command": f"lossbench train --dataset {name} --model sasrec --loss improved "
        "--max-epochs 2 --threads 1 --precision P",
        **{f"{p}_median_train_seconds": s for p, s in medians.items()},
        **{f"{p}_peak_memory_mb": max(m) for p, m in memory.items()},
        "bf16_vs_fp32": medians["bf16"] / medians["fp32"],
    }


def print_lines(result: dict[str, Any]) -> None:
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU "
        f"{torch.backends.cpu.get_cpu_capability()}, bf16 matmuls: {result['bf16_matmul']}"
    )
    for row in result["matmul"]:
        print(
            f"{row['product']:<22} {'x'.join(map(str, row['shape'])):>16}  "
            f"fp32 {row['fp32']:7.1f}  bf16 {row['bf16']:7.1f} GFLOP/s"
        )
    soft = result["softmax"]
    print(
        f"softmax step {soft['positions']} x {WIDTH} x {soft['n_items']}: "
        f"fp32 {soft['fp32_ms']:.1f} ms ({soft['fp32_gflops']:.1f} GFLOP/s), "
        f"bf16 {soft['bf16_ms']:.1f} ms ({soft['bf16_gflops']:.1f} GFLOP/s), "
        f"bf16 / fp32 {soft['bf16_vs_fp32']:.2f}"
    )
    for profile in result["profile"]:
        print(
            f"\n{profile['precision']}: {profile['batches']} of {profile['batches_per_epoch']} "
            f"batches ({profile['positions_per_batch']:.0f} positions each) in "
            f"{profile['seconds_profiled']:.2f} s under the profiler"
        )
        for op in profile["top_ops"]:
            print(
                f"  {op['op']:<36} {op['self_ms']:9.1f} ms  {op['share']:6.1%}  "
                f"{op['calls']:>6} calls"
            )
    if "acceptance" in result:
        acc = result["acceptance"]
        print(
            f"\n{acc['command']}: median train_seconds fp32 "
            f"{acc['fp32_median_train_seconds']:.2f}, bf16 {acc['bf16_median_train_seconds']:.2f}"
            f" (bf16 / fp32 {acc['bf16_vs_fp32']:.2f}); peak memory fp32 "
            f"{acc['fp32_peak_memory_mb']:.0f} MB, bf16 {acc['bf16_peak_memory_mb']:.0f} MB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--dataset", default="beauty-s3rec")
    parser.add_argument("--batches", type=int, default=20, help="profiled steps (0: an epoch)")
    parser.add_argument("--repeats", type=int, default=3, help="matmul timings (best of)")
    parser.add_argument("--rounds", type=int, default=9, help="softmax steps (median of)")
    parser.add_argument("--acceptance", action="store_true", help="time `lossbench train` too")
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")
    args = parser.parse_args()
    if args.batches < 0 or args.repeats < 1 or args.rounds < 1:
        parser.exit(2, "--batches must be >= 0, --repeats and --rounds >= 1\n")
    profile = [profile_steps(args.dataset, args.data_dir, p, args.batches) for p in PRECISIONS]
    positions = round(profile[0]["positions_per_batch"])
    n_items = prepared_dataset(args.data_dir, args.dataset).n_items
    result: dict[str, Any] = {
        "dataset": args.dataset,
        "bf16_matmul": cpu_has_bf16_matmul(),
        "matmul": matmul_rates(positions, n_items, args.repeats),
        "softmax": softmax_step(positions, n_items, args.rounds),
        "profile": profile,
    }
    if args.acceptance:
        result["acceptance"] = acceptance(args.dataset, args.data_dir, rounds=1)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print_lines(result)


if __name__ == "__main__":
    try:
        main()
    except LossbenchError as error:  # bad input: one line, no traceback
        sys.exit(f"error: {error}")
