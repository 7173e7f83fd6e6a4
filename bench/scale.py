"""Scale benchmark: generate an ML-20M-shaped (or larger) ratings file, prepare it, train one
epoch of SASRec (max length 200) per loss; wall time, peak memory and tokens per second.

    python bench/scale.py --rows 20000000                 # generate, prepare, train every loss
    python bench/scale.py --rows 100000000 --no-train     # generate and prepare only
    python bench/scale.py --rows 20000000 --train-users 20000 --losses sampled-ce
    python bench/scale.py --rows 20000000 --in-memory     # also prepare on the in-memory path

The file is generated (seeded, `--seed`) in MovieLens's `userId,movieId,rating,timestamp`
layout, one user block at a time, at ML-20M's shape scaled by `--rows`: users in proportion
(138,493 at 20,000,263 rows), items with the square root of the scale (26,744 at 20M), a
log-normal length per user, every (user, item) at most once. Each phase runs in its own
process, so each peak (ru_maxrss) is that phase's own. Training reads the prepared folder;
`--train-users N` trains on N users drawn at random (the tokens/s holds, the epoch is
shorter). Everything is written under `--work` (default: a temporary folder, removed after).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

ML20M_ROWS, ML20M_USERS, ML20M_ITEMS = 20_000_263, 138_493, 26_744
LOSSES = ("improved", "sampled-ce")
SCALABLE = ("sce", "rece")  # trained too when this lossbench registers them
MAX_LEN = 200
BLOCK_ROWS = 2_000_000  # rows generated and written at a time


def shape(rows: int) -> tuple[int, int]:
    """(users, items) of a file of `rows` rows shaped like ML-20M."""
    scale = rows / ML20M_ROWS
    return max(1, round(ML20M_USERS * scale)), max(8, round(ML20M_ITEMS * math.sqrt(scale)))


def generate(path: Path, rows: int, seed: int) -> dict[str, int]:
    """Write `rows` ratings; user u's j-th movie is (start_u + j * stride_u) mod n_items + 1
    with a stride coprime to n_items, so no user rates a movie twice."""
    n_users, n_items = shape(rows)
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, 1.0, n_users)
    lengths = np.minimum(np.floor(weights / weights.sum() * rows), n_items).astype(np.int64)
    while (missing := rows - int(lengths.sum())) > 0:  # exactly `rows` rows
        room = np.flatnonzero(lengths < n_items)[:missing]
        lengths[room] += 1
    strides = rng.choice(np.arange(1, n_items, 2), n_users)
    strides[np.gcd(strides, n_items) != 1] = 1
    starts = rng.integers(0, n_items, n_users)
    ends = np.cumsum(lengths)
    with path.open("wb") as stream:
        first = 0
        while first < n_users:  # a block of whole users, about BLOCK_ROWS rows
            last = int(np.searchsorted(ends, ends[first] - lengths[first] + BLOCK_ROWS)) + 1
            last = min(max(last, first + 1), n_users)
            block = _user_block(rng, first, last, lengths, strides, starts, n_items)
            block.write_csv(stream, include_header=first == 0)
            first = last
    return {"rows": rows, "users": n_users, "items": n_items, "bytes": path.stat().st_size}


def _user_block(
    rng: np.random.Generator,
    first: int,
    last: int,
    lengths: np.ndarray,
    strides: np.ndarray,
    starts: np.ndarray,
    n_items: int,
) -> pl.DataFrame:
    """The rows of users first..last - 1 (0-based), in user order."""
    own = lengths[first:last]
    n = int(own.sum())
    users = np.repeat(np.arange(first + 1, last + 1, dtype=np.int64), own)  # (n,)
    position = np.arange(n, dtype=np.int64) - np.repeat(np.cumsum(own) - own, own)
    items = (
        np.repeat(starts[first:last], own) + position * np.repeat(strides[first:last], own)
    ) % n_items + 1
    return pl.DataFrame(
        {
            "userId": users,
            "movieId": items,
            "rating": rng.integers(1, 11, size=n) / 2.0,  # 0.5 .. 5.0
            "timestamp": rng.integers(789_652_009, 1_427_784_002, size=n),
        }
    )


def peak_gib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1 << 30) if sys.platform == "darwin" else peak / (1 << 20)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process: steadier than wall time on a busy machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def prepare_phase(csv: Path, data_dir: Path, in_memory: bool) -> dict[str, Any]:
    """Read, clean, split and write the prepared folder `data_dir/scale/prepared`."""
    from lossbench.data.prepared import FORMAT_VERSION, prepared_dir
    from lossbench.data.preprocess import (
        build_tables,
        build_tables_streamed,
        summary_stats,
        write_prepared,
    )
    from lossbench.data.readers import read_interactions
    from lossbench.data.registry import get_dataset
    from lossbench.data.splits import LOO
    from lossbench.data.streaming import read_compact

    protocol = get_dataset("ml-20m").protocol
    start = time.perf_counter()
    if in_memory:
        tables = build_tables(read_interactions(csv, "movielens-csv"), protocol)
    else:
        tables = build_tables_streamed(read_compact(csv, "movielens-csv", protocol), protocol)
    stats = summary_stats(tables)
    meta = {
        "name": "scale",
        **stats,
        "report": tables.report,
        "format_version": FORMAT_VERSION,
        "split": LOO.identity(),
    }
    write_prepared(prepared_dir(data_dir, "scale"), tables, meta)
    return {
        "path": "in-memory" if in_memory else "streamed",
        "seconds": time.perf_counter() - start,
        "cpu_seconds": cpu_seconds(),
        "peak_gib": peak_gib(),
        "users": stats["n_users"],
        "items": stats["n_items"],
        "interactions": stats["n_interactions"],
    }


def train_phase(data_dir: Path, loss: str, train_users: int | None) -> dict[str, Any]:
    """One epoch of SASRec + `loss` (max length 200), validated once, not tested."""
    import torch

    from lossbench.data.prepared import load_prepared
    from lossbench.training.config import build_config
    from lossbench.training.loop import train_run

    dataset = load_prepared(data_dir, "scale")
    overrides: dict[str, Any] = {
        "dataset": "scale",
        "model": "sasrec",
        "loss": loss,
        "max_epochs": 1,
        "patience": 2,
        "model_settings": {"max_len": MAX_LEN},
        "sample_users": train_users,
    }
    config = build_config(overrides={k: v for k, v in overrides.items() if v is not None})
    lengths = np.diff(dataset.train_offsets)
    if train_users is not None and train_users < len(lengths):
        lengths = lengths[np.random.default_rng(0).choice(len(lengths), train_users, False)]
    tokens = int(np.minimum(np.maximum(lengths - 1, 0), MAX_LEN).sum())  # approx. if sampled
    with tempfile.TemporaryDirectory() as run_dir:
        result = train_run(config, dataset, Path(run_dir), evaluate_test=False)
    seconds = result.history[0]["train_seconds"]
    return {
        "loss": loss,
        "train_seconds": seconds,
        "eval_seconds": result.history[0]["eval_seconds"],
        "tokens": tokens,
        "tokens_per_second": tokens / seconds,
        "peak_gib": peak_gib(),
        "run_peak_mb": result.metrics.get("peak_memory_mb"),
        "threads": torch.get_num_threads(),
    }


def rss_gib() -> float:
    """The resident memory now (VmRSS), in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / (1 << 20)
    return float("nan")


def memory_phase(data_dir: Path) -> dict[str, Any]:
    """What a run holds before its first step, piece by piece (resident GiB after each):
    the prepared arrays, the padded sequence tensors, the two evaluators, one score block."""
    import torch

    from lossbench.data.prepared import load_prepared
    from lossbench.data.sequences import build_sequence_tensors
    from lossbench.training.evaluate import Evaluator, score_block_rows
    from lossbench.training.memory import available_memory_bytes

    steps = {"start": rss_gib()}
    dataset = load_prepared(data_dir, "scale")
    steps["prepared arrays"] = rss_gib()
    sequences = build_sequence_tensors(dataset, MAX_LEN)
    steps["sequence tensors"] = rss_gib()
    cpu = torch.device("cpu")
    evaluators = [Evaluator(s, 256, True, cpu) for s in (sequences.valid, sequences.test)]
    steps["evaluators"] = rss_gib()
    block = score_block_rows(dataset.n_items, 256, available_memory_bytes(cpu))
    scores = torch.empty(dataset.n_items, block).fill_(1.0)  # one block of full-ranking scores
    steps["one score block"] = rss_gib()
    del scores, evaluators
    return {"steps": steps, "score_block_rows": block, "peak_gib": peak_gib()}


def child(arguments: list[str]) -> dict[str, Any]:
    """Run one phase of this script in a fresh process; its JSON line."""
    done = subprocess.run(
        [sys.executable, __file__, *arguments], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.exit(f"error: phase {arguments[:2]} failed: {done.stderr.strip().splitlines()[-1:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ML20M_ROWS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--losses", default=None, help="default: improved, sampled-ce, sce, rece")
    parser.add_argument("--train-users", type=int, default=None)
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--in-memory", action="store_true", help="also the in-memory path")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--phase", choices=("prepare", "prepare-in-memory", "memory", "train"))
    parser.add_argument("--file", type=Path)
    parser.add_argument("--loss")
    args = parser.parse_args()
    if args.phase is not None:  # inside a child process
        if args.phase == "train":
            row = train_phase(args.work, args.loss, args.train_users)
        elif args.phase == "memory":
            row = memory_phase(args.work)
        else:
            row = prepare_phase(args.file, args.work, args.phase == "prepare-in-memory")
        print(json.dumps(row))
        return
    with tempfile.TemporaryDirectory(prefix="lossbench-scale-") as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        report(run_all(args, work), args.json)


def run_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    csv = work / "ratings.csv"
    start = time.perf_counter()
    results: dict[str, Any] = {"file": generate(csv, args.rows, args.seed)}
    results["file"]["seconds"] = time.perf_counter() - start
    base = ["--work", str(work), "--file", str(csv)]
    phases = ["prepare-in-memory", "prepare"] if args.in_memory else ["prepare"]
    results["prepare"] = [child(["--phase", phase, *base]) for phase in phases]
    results["memory"] = child(["--phase", "memory", *base])
    results["train"] = []
    if not args.no_train:
        users = ["--train-users", str(args.train_users)] if args.train_users else []
        for loss in (args.losses or default_losses()).split(","):
            row = child(["--phase", "train", "--loss", loss, *users, *base])
            results["train"].append(row)
    return results


def default_losses() -> str:
    from lossbench.losses import LOSSES as REGISTERED

    return ",".join([*LOSSES, *(name for name in SCALABLE if name in REGISTERED)])


def report(results: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(results, indent=2))
        return
    file = results["file"]
    print(
        f"generated {file['rows']:,} rows ({file['users']:,} users, {file['items']:,} items, "
        f"{file['bytes'] / 1e9:.2f} GB) in {file['seconds']:.0f} s"
    )
    for row in results["prepare"]:
        print(
            f"prepare ({row['path']}): {row['seconds']:.1f} s ({row['cpu_seconds']:.1f} s of CPU), "
            f"peak {row['peak_gib']:.2f} GiB; "
            f"kept {row['users']:,} users, {row['items']:,} items, "
            f"{row['interactions']:,} interactions"
        )
    memory = results["memory"]
    pieces = ", ".join(f"{name} {gib:.2f}" for name, gib in memory["steps"].items())
    print(f"a run's data before training, resident GiB after each: {pieces}")
    print(f"  (score blocks of {memory['score_block_rows']} users)")
    for row in results["train"]:
        print(
            f"sasrec + {row['loss']} (max length {MAX_LEN}), one epoch: "
            f"{row['train_seconds']:.0f} s train ({row['tokens_per_second']:,.0f} tokens/s), "
            f"{row['eval_seconds']:.0f} s validation, peak {row['peak_gib']:.2f} GiB "
            f"(the run's own: {row['run_peak_mb'] / 1024:.2f} GiB), {row['threads']} threads"
        )


if __name__ == "__main__":
    main()
