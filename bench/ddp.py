"""Tokens per second of one run trained by 1 and by N data-parallel processes.

    python bench/ddp.py                          # synthetic, sasrec + improved, 1 and 2 CPU ranks
    python bench/ddp.py --processes 1,2,4        # more ranks (on the GPUs when CUDA is here)
    python bench/ddp.py --dataset lastfm --epochs 3 --json ddp.json

Each timing is the installed `lossbench train` (through `torchrun` above one process) into a
fresh temporary folder, with a fixed number of epochs (patience above them, so every run does
the same work) and one torch thread per rank on CPU. Tokens are the training positions of an
epoch (every position of every training window for `improved`); tokens per second divides them
by the median epoch's training seconds (history.csv), so process start-up and evaluation are
not counted. On CPU every rank has its own threads: with 2 cores, 2 ranks of 1 thread use the
same cores as 1 rank of 2 threads, and gain only what the smaller batches per rank lose less
to memory; DDP pays on GPUs and on machines with cores to spare.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import polars as pl
import torch

from lossbench.data.sequences import build_sequence_tensors
from lossbench.data.store import ensure_prepared
from lossbench.paths import default_data_dir
from lossbench.training.batches import TrainBatcher

SCRIPT = Path(sys.executable).parent / "lossbench"


def epoch_tokens(data_dir: Path, dataset: str, max_len: int) -> int:
    """Training positions of one epoch of `improved` (every position of every window)."""
    prepared = ensure_prepared(data_dir, dataset)
    sequences = build_sequence_tensors(prepared, max_len=max_len)
    batcher = TrainBatcher(sequences, 128, "all", "random", seed=0)
    return int(batcher.target_counts(prepared.n_items).sum())


def timed_run(args: argparse.Namespace, processes: int, out: Path) -> dict[str, Any]:
    """One `lossbench train` over `processes` ranks; its seconds per epoch from history.csv."""
    flags = ["train", "--dataset", args.dataset, "--model", "sasrec", "--loss", args.loss,
             "--max-epochs", str(args.epochs), "--patience", str(args.epochs + 1),
             "--threads", "1", "--out", str(out), "--data-dir", str(args.data_dir)]  # fmt: skip
    command = [str(SCRIPT), *flags]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                   str(processes), "-m", "lossbench", *flags]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    seconds = pl.read_csv(out / "history.csv")["train_seconds"].to_list()
    record = json.loads((out / "config.json").read_text())
    return {
        "processes": processes,
        "devices": record["environment"]["distributed"]["devices"],
        "seconds_per_epoch": statistics.median(seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--loss", default="improved")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--processes", default="1,2", help="comma-separated rank counts")
    parser.add_argument("--max-len", type=int, default=50, help="the preset's max length")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()
    tokens = epoch_tokens(args.data_dir, args.dataset, args.max_len)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"{args.dataset}, sasrec + {args.loss}: {tokens:,} tokens per epoch, on {device}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for processes in (int(n) for n in args.processes.split(",")):
            row = timed_run(args, processes, Path(tmp) / f"p{processes}")
            row["tokens_per_second"] = tokens / row["seconds_per_epoch"]
            rows.append(row)
            speedup = row["tokens_per_second"] / rows[0]["tokens_per_second"]
            print(
                f"{processes} process(es): {row['seconds_per_epoch']:.2f} s/epoch, "
                f"{row['tokens_per_second']:,.0f} tokens/s ({speedup:.2f}x of "
                f"{rows[0]['processes']})"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
