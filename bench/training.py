"""Training and validation speed of sasrec x {bce, improved}, with efficiency, plus the
bounded-memory check on a 1,000,000-item catalogue.

    python bench/training.py                      # lastfm and beauty-s3rec, 2 epochs each
    python bench/training.py --json               # the same numbers as JSON
    python bench/training.py --million-items      # only the 1M-item memory check
    python bench/training.py --no-plain           # skip the plain reference (minutes on beauty)

Each row also times one epoch of the plain computation the study's code does (padded to
max_len, logits of every non-padding position materialized), in the same process: this
machine's speed drifts by +-30% over minutes, so the ratio to it is steadier than seconds.

Efficiency = useful FLOPs / (training seconds x matmul FLOP/s measured just before on the
shapes that dominate this workload; `efficiency_vs_square_peak` uses a 2048^3 matmul
instead). Useful FLOPs count non-padding positions only, analytically:
per position and layer 24 D^2 (projections and feed-forward) + 4 c D (attention over c keys),
plus the loss's scoring (2 D V for the full softmax, 2 D (1 + K) for K negatives), times 3 for
forward + backward. Datasets come from `--data-dir` (prepared with `lossbench preprocess`).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness import (
    MILLION,
    catalogue_step_config,
    plain_loss,
    random_catalogue,
    run_config,
    timed_run,
)
from lossbench.data.prepared import PreparedDataset
from lossbench.data.sequences import build_sequence_tensors
from lossbench.data.store import ensure_prepared
from lossbench.errors import LossbenchError
from lossbench.models.transformer import padding_computed
from lossbench.paths import default_data_dir
from lossbench.training.config import TrainConfig
from lossbench.training.setup import make_model, seed_everything


def matmul_flops(m: int, k: int, n: int, repeats: int = 3) -> float:
    """FLOP/s of an (m x k) @ (k x n) fp32 matmul, best of `repeats`."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best


def workload_flops(hidden: int, n_items: int, positions: int = 12800) -> float:
    """FLOP/s of the three scoring matmuls of a full-softmax step, weighted by their work:
    logits (N x D @ D x V), grad of hidden states (N x V @ V x D), grad of items (D x N @ N x V)."""
    seconds = sum(
        2 * m * k * n / matmul_flops(m, k, n)
        for m, k, n in (
            (positions, hidden, n_items),
            (positions, n_items, hidden),
            (hidden, positions, n_items),
        )
    )
    return 3 * 2 * positions * hidden * n_items / seconds


def useful_flops_per_epoch(
    dataset: PreparedDataset, config: dict[str, Any], loss: str, negatives: int
) -> float:
    d, layers, max_len = config["hidden_size"], config["num_layers"], config["max_len"]
    lengths = np.minimum(dataset.train_lengths, max_len + 1) - 1  # training positions per user
    lengths = lengths[lengths > 0].astype(np.float64)
    positions = lengths.sum()
    keys = (lengths * (lengths + 1) / 2).sum()  # causal attention: position i sees i + 1 keys
    encoder = layers * (24 * d * d * positions + 4 * d * keys)
    scoring = (
        2 * d * dataset.n_items * positions
        if loss == "improved"
        else 2 * d * (1 + negatives) * positions
    )
    return 3 * (encoder + scoring)


def bench_dataset(
    name: str, loss: str, data_dir: Path, epochs: int, precision: str, with_plain: bool = True
) -> dict[str, Any]:
    dataset = ensure_prepared(data_dir, name)
    config = run_config(name, loss, epochs, precision=precision)
    # Matmul speed just before training: this machine's speed drifts over minutes.
    hidden_size = make_model(config, dataset.n_items)[1]["hidden_size"]
    reference = workload_flops(hidden_size, dataset.n_items + 1)
    square = matmul_flops(2048, 2048, 2048)
    run = timed_run(config, dataset)
    # The first epoch pays for warm-up (allocator, kernels): report the fastest.
    train_seconds = run["train_seconds_fastest"]
    plain_seconds = (
        plain_padded_epoch_seconds(dataset, config, loss, epochs=1) if with_plain else None
    )
    negatives = run["loss_settings"]["negatives"]
    useful = useful_flops_per_epoch(dataset, run["model_settings"], loss, negatives)
    return {
        "dataset": name,
        "loss": loss,
        "precision": precision,
        "train_seconds_per_epoch": train_seconds,
        "train_seconds_median_epoch": run["train_seconds_median"],
        "plain_padded_seconds_per_epoch": plain_seconds,
        "speedup_vs_plain": plain_seconds / train_seconds if plain_seconds else None,
        "validation_seconds": run["validation_seconds"],
        "peak_memory_mb": run["peak_memory_mb"],
        "useful_gflop_per_epoch": useful / 1e9,
        "workload_matmul_gflops": reference / 1e9,
        "square_matmul_gflops": square / 1e9,
        "efficiency": useful / (train_seconds * reference),
        "efficiency_vs_square_peak": useful / (train_seconds * square),
    }


def plain_padded_epoch_seconds(
    dataset: PreparedDataset, config: TrainConfig, loss: str, epochs: int = 2
) -> float:
    """Seconds per epoch of the plain computation the study's code does: every user padded to
    max_len, the encoder over all positions, (non-padding positions x catalogue) logits
    materialized for the full softmax (or one sampled negative for bce); same model, batches
    and optimizer. The fastest of `epochs` epochs: a same-machine, same-moment stand-in for
    the study's code (this machine's speed drifts by +-30% over minutes)."""
    seed_everything(config.seed)
    model, settings = make_model(config, dataset.n_items)
    model.train()
    with padding_computed(model):  # the plain code computes padding too
        return _plain_epochs(model, settings["max_len"], dataset, config, loss, epochs)


def _plain_epochs(
    model: torch.nn.Module,
    max_len: int,
    dataset: PreparedDataset,
    config: TrainConfig,
    loss: str,
    epochs: int,
) -> float:
    sequences = build_sequence_tensors(dataset, max_len=max_len)
    windows = sequences.train_windows.long()  # (U, max_len + 1), held as int32
    lengths = sequences.train_lengths
    users = torch.nonzero(lengths >= 2).squeeze(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    best = float("inf")
    for _ in range(epochs):
        start = time.perf_counter()
        order = users[torch.randperm(len(users))]
        for batch_users in torch.split(order, config.batch_size):
            inputs, targets = windows[batch_users, :-1], windows[batch_users, 1:]  # (B, L)
            targets = targets.where(inputs > 0, 0)  # trains where the input is an item
            negatives = torch.randint(1, dataset.n_items + 1, targets.shape)
            value = plain_loss(model, inputs, targets, loss, negatives)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
        best = min(best, time.perf_counter() - start)
    return best


def bench_million_items(steps: int = 2) -> dict[str, Any]:
    """sasrec + improved, batch 128 x length 50, on random sequences over 1,000,000 items."""
    dataset = random_catalogue(MILLION)
    start = time.perf_counter()
    run = timed_run(catalogue_step_config(dataset, steps, "cpu"), dataset)
    return {
        "n_items": MILLION,
        "batch": "128 x 50",
        "steps": steps,
        "seconds_per_step": run["train_seconds_fastest"],
        "total_seconds": time.perf_counter() - start,
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--datasets", default="lastfm,beauty-s3rec")
    parser.add_argument("--losses", default="bce,improved")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--million-items", action="store_true", help="only the 1M-item check")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--no-plain", action="store_true", help="skip the plain padded reference epoch"
    )
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    if args.million_items:
        rows.append(bench_million_items())
    else:
        for name in args.datasets.split(","):
            for loss in args.losses.split(","):
                rows.append(
                    bench_dataset(
                        name,
                        loss,
                        args.data_dir,
                        args.epochs,
                        args.precision,
                        with_plain=not args.no_plain,
                    )
                )
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for row in rows:
        print(
            "  ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            )
        )


if __name__ == "__main__":
    try:
        main()
    except LossbenchError as error:  # bad input: one line, no traceback
        sys.exit(f"error: {error}")
