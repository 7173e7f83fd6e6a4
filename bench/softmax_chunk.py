"""Speed of the full softmax (`improved`, `ce`, `mlm`) against its chunk size, on this CPU,
beside the chunk training chose for this CPU.

    python bench/softmax_chunk.py                      # beauty-s3rec and lastfm shapes
    python bench/softmax_chunk.py --json
    python bench/softmax_chunk.py --chunks 1048576,4194304 --repeats 30

Training on CPU uses the chunk its probe measured fastest here (cached in the data folder's
`softmax_chunk.json`; `--softmax-chunk` overrides it); the chunk never changes a result.
This script shows how good that choice is: forward + backward of the fused loss on random
hidden states of one training batch of each dataset's shape (positions per batch of 256
users, catalogue size, width 64), the chunk sizes interleaved round by round (a machine's
speed drifts), the best time of each, then per dataset the chosen chunk's time beside the
best one's. Useful GFLOP/s counts the three matmuls (logits, grad of hidden states, grad
of the item table). No dataset files are needed (the probe runs if nothing is cached).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from lossbench.losses.base import LossInputs, LossParams
from lossbench.losses.full_softmax import full_softmax_ce, fused_rows
from lossbench.paths import default_data_dir
from lossbench.training.softmax_chunk import machine_softmax_chunk

# (name, training positions in one batch of 256 users, items): the study's Table 2 datasets.
SHAPES = [("beauty-s3rec", 1500, 12101), ("lastfm", 11000, 3646)]
DEFAULT_CHUNKS = [1 << 19, 1 << 20, 1 << 21, 1 << 22, 1 << 23]


def bench_shape(
    name: str, positions: int, n_items: int, chunks: list[int], repeats: int, width: int = 64
) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(0)
    table = (torch.randn(n_items + 1, width, generator=generator) * 0.02).requires_grad_()
    hidden = (torch.randn(positions, width, generator=generator) * 0.5).requires_grad_()
    targets = torch.randint(1, n_items + 1, (positions,), generator=generator)
    inputs = LossInputs(hidden, targets, table)

    def step(chunk: int) -> float:
        start = time.perf_counter()
        full_softmax_ce(inputs, LossParams(softmax_chunk=chunk)).backward()
        return time.perf_counter() - start

    for chunk in chunks:  # warm-up: allocator, kernels
        step(chunk)
    best = {chunk: float("inf") for chunk in chunks}
    for _ in range(repeats):
        for chunk in chunks:  # interleaved, so drift hits every size alike
            best[chunk] = min(best[chunk], step(chunk))
    flops = 3 * 2 * positions * n_items * width
    return [
        {
            "dataset": name,
            "positions": positions,
            "n_items": n_items,
            "chunk": chunk,
            "positions_per_chunk": fused_rows(chunk, n_items),
            "milliseconds": seconds * 1e3,
            "gflops": flops / seconds / 1e9,
        }
        for chunk, seconds in best.items()
    ]


def chosen_beside_best(rows: list[dict[str, Any]], chosen: int) -> list[dict[str, Any]]:
    """Per dataset: the best measured chunk and the chosen one, with their times."""
    lines = []
    for name in dict.fromkeys(row["dataset"] for row in rows):
        of_dataset = {row["chunk"]: row["milliseconds"] for row in rows if row["dataset"] == name}
        best = min(of_dataset, key=lambda chunk: (of_dataset[chunk], chunk))
        lines.append(
            {
                "dataset": name,
                "chosen_chunk": chosen,
                "chosen_milliseconds": of_dataset[chosen],
                "best_chunk": best,
                "best_milliseconds": of_dataset[best],
                "chosen_vs_best": of_dataset[chosen] / of_dataset[best],
            }
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", default=",".join(str(c) for c in DEFAULT_CHUNKS))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    args = parser.parse_args()
    try:
        chunks = [int(c) for c in args.chunks.split(",")]
    except ValueError:
        parser.exit(2, f"--chunks must be comma-separated integers, got {args.chunks!r}\n")
    if any(c < 1 for c in chunks) or args.repeats < 1:
        parser.exit(2, "--chunks and --repeats must be >= 1\n")
    capability = torch.backends.cpu.get_cpu_capability()
    chosen = machine_softmax_chunk(args.data_dir)  # first, at the threads training uses
    if chosen not in chunks:
        chunks.append(chosen)
    rows = [
        row
        for name, positions, n_items in SHAPES
        for row in bench_shape(name, positions, n_items, chunks, args.repeats)
    ]
    versus = chosen_beside_best(rows, chosen)
    if args.json:
        print(json.dumps({"cpu_capability": capability, "rows": rows, "chosen": versus}, indent=2))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {capability}")
    for row in rows:
        print(
            f"{row['dataset']:<13} chunk {row['chunk']:>9,} "
            f"({row['positions_per_chunk']:>4} positions)  "
            f"{row['milliseconds']:8.2f} ms  {row['gflops']:6.1f} GFLOP/s"
        )
    for line in versus:
        print(
            f"{line['dataset']:<13} chosen {line['chosen_chunk']:>9,}: "
            f"{line['chosen_milliseconds']:.2f} ms; best {line['best_chunk']:>9,}: "
            f"{line['best_milliseconds']:.2f} ms ({line['chosen_vs_best']:.2f}x)"
        )


if __name__ == "__main__":
    main()
