"""Scale benchmark: generate an ML-20M-shaped (or larger) ratings file, prepare it, train
SASRec (max length 200) per loss; wall time, peak memory and tokens per second.

    python bench/scale.py --rows 20000000                 # generate, prepare, train every loss
    python bench/scale.py --rows 100000000 --no-train     # generate and prepare only
    python bench/scale.py --rows 20000000 --steps 40 --losses improved,sce
    python bench/scale.py --rows 20000000 --in-memory     # also prepare on the in-memory path

The file is generated (seeded, `--seed`) in MovieLens's `userId,movieId,rating,timestamp`
layout, one user block at a time, at ML-20M's shape scaled by `--rows`: users in proportion
(138,493 at 20,000,263 rows), items with the square root of the scale (26,744 at 20M), a
log-normal length per user, every (user, item) at most once. Each phase runs in its own
process, so each peak (ru_maxrss) is that phase's own: a training phase's covers reading the
prepared folder (memory-mapped), building the run (batches, evaluators, model, sampler), its
training steps and, with `--evaluate`, a validation pass over the full catalogue.

Training runs `--steps N` steps of the epoch (default: all of it) in the epoch's own random
order, the first one untimed (warm-up); with fewer steps than the epoch the epoch's time is
extrapolated from the mean step (and printed as such), and tokens/s is that of the steps
timed. `--evaluate first` (default) ranks the full catalogue for the validation users after
the first loss's steps only (the pass is the same for every loss: same model, same blocks);
`all` after every loss, `none` never; `--eval-users N` ranks a seeded sample of N of them
(the same blocks, so the same peak) and extrapolates the pass's time to all. Progress goes
to stderr at least once a minute. Everything is written under `--work` (default: a
temporary folder, removed after).
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
LOSSES = ("improved", "sampled-ce", "sce", "rece", "scaled-ce")
MAX_LEN = 200
PROGRESS_SECONDS = 30.0  # at most this long between two progress lines of a phase
HEARTBEAT_SECONDS = 60.0  # a line while a phase's process runs, at least this often
EVAL_PARTS = 8  # the validation pass in this many interleaved parts, a line after each
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
    last_line = time.perf_counter()
    with path.open("wb") as stream:
        first = 0
        while first < n_users:  # a block of whole users, about BLOCK_ROWS rows
            if time.perf_counter() - last_line >= PROGRESS_SECONDS:
                say(f"  generating: {int(ends[first]):,} of {rows:,} rows")
                last_line = time.perf_counter()
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


def say(text: str) -> None:
    """A progress line on stderr (the parent passes it through, unbuffered)."""
    print(text, file=sys.stderr, flush=True)


def train_phase(
    data_dir: Path, loss: str, steps: int | None, evaluate: bool, eval_users: int | None
) -> dict[str, Any]:
    """`steps` training steps of SASRec + `loss` (max length 200; None: the whole epoch),
    then, with `evaluate`, a validation pass (`validation_pass`). The run is built as
    `lossbench train` builds it (`set_up`); the steps are the loop's own, without its
    per-epoch bookkeeping."""
    import torch
    from rich.console import Console

    from lossbench.data.prepared import load_prepared
    from lossbench.training.config import build_config
    from lossbench.training.entry import plan_entry
    from lossbench.training.loop import RunHooks, set_up

    overrides = {"dataset": "scale", "model": "sasrec", "loss": loss, "max_epochs": 1}
    config = build_config(overrides={**overrides, "model_settings": {"max_len": MAX_LEN}})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        dataset = load_prepared(data_dir, "scale")
        run = set_up(plan_entry(config, Path(run_dir)), dataset, Console(quiet=True), RunHooks())
        row: dict[str, Any] = {"loss": loss, "setup_seconds": time.perf_counter() - started}
        row["setup_peak_gib"] = peak_gib()
        batcher = run.batcher
        epoch_steps = len(batcher)
        row["epoch_steps"] = epoch_steps
        row["epoch_tokens"] = int((batcher.lengths[batcher.users] - 1).sum())
        row |= timed_steps(run, min(steps or epoch_steps, epoch_steps), loss)
        row["train_peak_gib"] = peak_gib()
        row["extrapolated"] = row["steps"] < epoch_steps
        row["epoch_seconds"] = row["step_seconds"] * epoch_steps
        if evaluate:
            row |= validation_pass(run, loss, eval_users)
        row["peak_gib"] = peak_gib()
        row["threads"] = torch.get_num_threads()
    return row


def timed_steps(run: Any, steps: int, loss: str) -> dict[str, Any]:
    """`steps` steps of the epoch's batches, as `loop.train_epoch` runs them; the first is
    the warm-up (untimed unless it is the only one)."""
    import torch

    device = run.entry.device
    run.model.train()
    loss_sum = torch.zeros(())
    times: list[float] = []
    tokens: list[int] = []
    last_line = time.perf_counter()
    batches = run.batcher.epoch()
    for step in range(steps):
        parts = next(batches)
        started = time.perf_counter()
        run.optimizer.zero_grad(set_to_none=True)
        with run.autocast():
            step_loss = run.step([part.to(device) for part in parts])
        step_loss.backward()
        loss_sum += step_loss.detach()
        run.optimizer.step()
        run.threads.tick()
        times.append(time.perf_counter() - started)
        tokens.append(sum(int(torch.count_nonzero(part.inputs)) for part in parts))
        if time.perf_counter() - last_line >= PROGRESS_SECONDS or step + 1 == steps:
            say(f"  {loss}: step {step + 1}/{steps}, {sum(times):.0f} s, last {times[-1]:.1f} s")
            last_line = time.perf_counter()
    timed = slice(1, None) if steps > 1 else slice(None)
    seconds, timed_tokens = sum(times[timed]), sum(tokens[timed])
    return {
        "steps": steps,
        "train_seconds": sum(times),
        "step_seconds": seconds / len(times[timed]),
        "tokens": sum(tokens),
        "tokens_per_second": timed_tokens / seconds,
        "mean_loss": float(loss_sum) / steps,
    }


def validation_pass(run: Any, loss: str, users: int | None) -> dict[str, Any]:
    """Validation users ranked over the full catalogue (seen items excluded) as the run's
    evaluator ranks them: all of them, or a seeded sample of `users` (blocks of the same
    size and the same range of history lengths, so the same peak; the pass's time is then
    extrapolated to every user). In `EVAL_PARTS` interleaved parts of the blocks, so progress
    can be shown; the parts' ranks sum to the whole pass's."""
    import torch

    from lossbench.data.sequences import EvaluationSet, select_rows
    from lossbench.evaluation.metrics import metrics_from_ranks
    from lossbench.training.evaluate import Evaluator, score_block_rows
    from lossbench.training.memory import available_memory_bytes

    full, evaluator = run.valid.evaluation_set, run.valid
    everyone = len(full.targets)
    if users is not None and users < everyone:
        rows = np.sort(np.random.default_rng(0).choice(everyone, users, replace=False))
        offsets, items = select_rows(full.seen_offsets.numpy(), full.seen_items.numpy(), rows)
        sample = EvaluationSet(
            lengths=full.lengths[rows],
            targets=full.targets[rows],
            seen_offsets=torch.from_numpy(offsets),
            seen_items=torch.from_numpy(items),
            user_rows=full.rows()[rows],
        )
        evaluator = Evaluator(
            sample, evaluator.batch_size, evaluator.exclude_seen, evaluator.device,
            seen_targets=evaluator.seen_targets,
        )  # fmt: skip
    started = time.perf_counter()
    ranks = torch.zeros(len(evaluator.targets), dtype=torch.int64)
    for part in range(EVAL_PARTS):
        with run.autocast():
            ranks += evaluator.evaluate(run.model, shard=(part, EVAL_PARTS)).ranks
        say(
            f"  {loss}: validation part {part + 1}/{EVAL_PARTS} ({len(ranks):,} users), "
            f"{time.perf_counter() - started:.0f} s"
        )
    seconds = time.perf_counter() - started
    n_items = run.item_counts.shape[0] - 1
    free = available_memory_bytes(run.entry.device)
    return {
        "eval_seconds": seconds * everyone / len(ranks),
        "eval_extrapolated": len(ranks) < everyone,
        "eval_users": len(ranks),
        "valid_users": everyone,
        "eval_peak_gib": peak_gib(),
        "valid_ndcg@10": metrics_from_ranks(ranks, [10])["ndcg@10"],
        "score_block_rows": score_block_rows(n_items, evaluator.batch_size, free),
    }


def rss_gib() -> float:
    """The resident memory now (VmRSS), in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / (1 << 20)
    return float("nan")


def memory_phase(data_dir: Path) -> dict[str, Any]:
    """What a run holds before its first step, piece by piece (resident GiB after each):
    the prepared arrays (memory-mapped), the sequence tensors (training windows, seen-item
    CSRs), the two evaluators, one score block."""
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
    started = time.perf_counter()
    command = [sys.executable, __file__, *arguments]
    # Its progress lines (stderr) pass through as they come; a line at least every minute.
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        while True:
            try:
                stdout, _ = process.communicate(timeout=HEARTBEAT_SECONDS)
                break
            except subprocess.TimeoutExpired:
                say(f"  {arguments[1]}: running for {time.perf_counter() - started:.0f} s")
    if process.returncode != 0:
        sys.exit(f"error: phase {arguments[:2]} failed (exit {process.returncode}; see above)")
    return dict(json.loads(stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ML20M_ROWS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--losses", default=",".join(LOSSES), help="comma-separated")
    parser.add_argument("--steps", type=int, default=None, help="per loss; default: the epoch")
    parser.add_argument("--evaluate", choices=("first", "all", "none"), default="first")
    parser.add_argument("--eval-users", type=int, default=None, help="default: every user")
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
            evaluate = args.evaluate != "none"
            row = train_phase(args.work, args.loss, args.steps, evaluate, args.eval_users)
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
    say(f"generated {args.rows:,} rows; preparing")
    results["prepare"] = [child(["--phase", phase, *base]) for phase in phases]
    results["memory"] = child(["--phase", "memory", *base])
    results["train"] = []
    if not args.no_train:
        steps = ["--steps", str(args.steps)] if args.steps else []
        for index, loss in enumerate(args.losses.split(",")):
            evaluate = args.evaluate == "all" or (args.evaluate == "first" and index == 0)
            say(f"training sasrec + {loss}")
            flags = ["--evaluate", "first" if evaluate else "none", *steps]
            if args.eval_users:
                flags += ["--eval-users", str(args.eval_users)]
            results["train"].append(child(["--phase", "train", "--loss", loss, *flags, *base]))
    return results


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
        epoch = "extrapolated from" if row["extrapolated"] else "measured over"
        print(
            f"sasrec + {row['loss']} (max length {MAX_LEN}): epoch {row['epoch_seconds']:,.0f} s "
            f"({epoch} {row['steps']} of {row['epoch_steps']} steps, "
            f"{row['step_seconds']:.2f} s a step), {row['tokens_per_second']:,.0f} tokens/s; "
            f"peak {row['peak_gib']:.2f} GiB (set-up {row['setup_peak_gib']:.2f}, "
            f"steps {row['train_peak_gib']:.2f}), {row['threads']} threads"
        )
        if "eval_seconds" in row:
            sampled = f"extrapolated from {row['eval_users']:,}" if row["eval_extrapolated"] else ""
            print(
                f"  validation, {row['valid_users']:,} users x the full catalogue: "
                f"{row['eval_seconds']:,.0f} s {sampled}, peak {row['eval_peak_gib']:.2f} GiB "
                f"(blocks of {row['score_block_rows']} users)"
            )


if __name__ == "__main__":
    main()
