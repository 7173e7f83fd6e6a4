"""What each loss costs as the catalogue grows: one SASRec training step per registered loss on
synthetic catalogues, median step seconds and peak memory.

    python bench/loss_cost.py                                   # 10k, 100k, 1M, 3M items
    python bench/loss_cost.py --items 1000000 --json cost.json  # one size
    python bench/loss_cost.py --losses improved,sce,rece --items 100000

A step is the whole of training's: SASRec (hidden 64, 2 layers, max length 50) on one fixed
batch of 128 random sequences x 50 positions, its hidden states at the loss's positions (all
6,400; the last 128; or a fixed 20% for `mlm`), what the loss declares it needs (negatives
from the uniform sampler, the trainer's generator), the loss, backward and an Adam update.
Each (loss, catalogue) runs in its own process (`--one`), so its peak memory (the process's
peak RSS on CPU, the allocator's peak on CUDA) is its own: the model, its gradients and Adam's
state included (at 1M items the item table alone is 256 MB, x4 with gradient and moments).
`--json FILE` writes a list of {"loss", "items", "step_seconds", "peak_mb", "cpu_seconds"}
(the last the process's CPU time per step); a loss that fails (out of memory, or a catalogue
smaller than its negatives) gets "error" instead.
Timings on a shared machine vary with the other processes: compare losses from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import torch

from lossbench.atomic import write_json
from lossbench.losses import LOSSES, LossInputs, LossSpec
from lossbench.losses.base import LossParams
from lossbench.losses.samplers import build_sampler
from lossbench.models import build_model
from lossbench.models.base import SequenceModel, scoring_table
from lossbench.training.memory import peak_memory_mb, reset_peak_memory

SIZES = (10_000, 100_000, 1_000_000, 3_000_000)
BATCH, LENGTH, HIDDEN = 128, 50, 64
MASK_SHARE = 0.2  # mlm's share of positions (its trainer's default mask probability)


def registered_losses() -> list[str]:
    """Every registered loss once (an alias such as `cce` is the same spec as `improved`)."""
    names: list[str] = []
    for name, spec in LOSSES.items():
        if all(LOSSES[other] is not spec for other in names):
            names.append(name)
    return names


def one_step_cost(
    loss: str, n_items: int, steps: int, device: torch.device, warmup: int = 1
) -> dict[str, Any]:
    """Median seconds of `steps` training steps (after `warmup` more) and the peak memory."""
    spec = LOSSES[loss]
    generator = torch.Generator(device=device).manual_seed(0)
    model, _ = build_model("sasrec", n_items, {"hidden_size": HIDDEN, "max_len": LENGTH})
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = torch.Generator().manual_seed(1)
    sequences = torch.randint(1, n_items + 1, (BATCH, LENGTH + 1), generator=data).to(device)
    inputs, targets = sequences[:, :-1], sequences[:, 1:]
    positions = _positions(spec, data).to(device)  # (N,) flat indices into (B * L)
    flat_targets = targets.reshape(-1)[positions]  # (N,)
    counts = torch.ones(n_items + 1)
    sampler = None
    if spec.samples_negatives:
        sampler = build_sampler("uniform", spec.negatives, counts, counts, device)
    reset_peak_memory(device)
    seconds, cpu_seconds = [], []
    for _ in range(steps + warmup):
        started, cpu_started = time.perf_counter(), time.process_time()
        hidden = model(inputs).reshape(BATCH * LENGTH, -1)[positions]  # (N, D)
        negatives = sampler.sample(flat_targets, None, generator) if sampler else None
        given = LossInputs(
            hidden,
            flat_targets,
            scoring_table(cast(SequenceModel, model)),
            negatives,
            generator=generator if "generator" in spec.declared else None,
        )
        value = spec.fn(given, LossParams())
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        float(value.detach())  # the step is done (a device sync on CUDA)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
    return {
        "loss": loss,
        "items": n_items,
        "step_seconds": statistics.median(seconds[warmup:]),
        "peak_mb": peak_memory_mb(device),
        # The process's CPU time: with one thread, the step's time without the machine's
        # other processes (on a shared CPU the wall time is mostly waiting).
        "cpu_seconds": statistics.median(cpu_seconds[warmup:]),
    }


def _positions(spec: LossSpec, generator: torch.Generator) -> torch.Tensor:
    """Flat (row * LENGTH + column) training positions of the batch, by the loss's default."""
    every = torch.arange(BATCH * LENGTH)
    if spec.positions == "last":
        return every.view(BATCH, LENGTH)[:, -1].contiguous()
    if spec.positions == "masked":
        count = int(MASK_SHARE * BATCH * LENGTH)
        return torch.randperm(BATCH * LENGTH, generator=generator)[:count].sort().values
    return every


def in_own_process(loss: str, n_items: int, steps: int, device: str, warmup: int) -> dict[str, Any]:
    """`one_step_cost` in a fresh interpreter; a crash or an out-of-memory kill is recorded."""
    command = [sys.executable, __file__, "--one", loss, str(n_items)]
    command += ["--steps", str(steps), "--warmup", str(warmup), "--device", device]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result
    tail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    return {"loss": loss, "items": n_items, "error": tail[:300]}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| loss | items | step seconds | CPU seconds | peak MB |"]
    lines.append("| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['loss']} | {row['items']:,} | {row['error']} | | |")
        else:
            seconds, cpu, peak = row["step_seconds"], row["cpu_seconds"], row["peak_mb"]
            cells = f"{seconds:.3f} | {cpu:.3f} | {peak:,.0f}"
            lines.append(f"| {row['loss']} | {row['items']:,} | {cells} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--items", type=int, action="append", help="catalogue size (repeatable)")
    parser.add_argument("--losses", help="comma-separated (default: every registered loss)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="write the rows to this file")
    parser.add_argument("--one", nargs=2, metavar=("LOSS", "ITEMS"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        loss, items = args.one[0], int(args.one[1])
        result = one_step_cost(loss, items, args.steps, torch.device(args.device), args.warmup)
        print(json.dumps(result))
        return 0
    losses = args.losses.split(",") if args.losses else registered_losses()
    unknown = [name for name in losses if name not in LOSSES]
    sizes = args.items or list(SIZES)
    if unknown or min(sizes) < 2 or args.steps < 1 or args.warmup < 0:
        what = f"unknown loss {unknown[0]!r}" if unknown else "--items >= 2, --steps >= 1"
        print(f"loss_cost.py: {what}; valid losses: {', '.join(LOSSES)}", file=sys.stderr)
        return 2
    rows = []
    for n_items in sizes:
        for loss in losses:
            rows.append(in_own_process(loss, n_items, args.steps, args.device, args.warmup))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
            if args.json:
                write_json(args.json, rows)
    print(f"\n{table(rows)}\n(threads: {os.environ.get('OMP_NUM_THREADS', 'torch default')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
