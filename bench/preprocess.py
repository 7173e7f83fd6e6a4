"""Benchmark: preprocess a generated 20-million-row ratings file in the ml-20m CSV format.

Run `python bench/preprocess.py [--rows N]`. Prints the generation time, then rows/s and the
peak resident memory of reading, filtering (ml-20m protocol), re-indexing, splitting and
writing the prepared files. Everything happens in a temporary folder that is removed after.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from lossbench.data.prepared import prepared_dir
from lossbench.data.preprocess import build_tables, summary_stats, write_prepared
from lossbench.data.readers import read_interactions
from lossbench.data.registry import get_dataset
from lossbench.errors import LossbenchError

N_USERS, N_ITEMS = 138_493, 26_744  # ml-20m's sizes


def generate_ratings(path: Path, rows: int, seed: int = 0) -> None:
    """`userId,movieId,rating,timestamp`, sorted by user like the real file.

    Like ml-20m, a user rates a movie at most once: user u's j-th movie is
    `(start_u + j * stride_u) mod N_ITEMS` with a stride coprime to N_ITEMS.
    """
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, 1.0, N_USERS)
    lengths = np.minimum(np.floor(weights / weights.sum() * rows), N_ITEMS).astype(np.int64)
    while (missing := rows - lengths.sum()) > 0:  # exactly `rows` rows in total
        room = np.flatnonzero(lengths < N_ITEMS)[:missing]
        lengths[room] += 1
    users = np.repeat(np.arange(1, N_USERS + 1, dtype=np.int64), lengths)  # (rows,)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    position = np.arange(rows, dtype=np.int64) - starts  # j: index within the user's rows
    strides = rng.choice(np.arange(1, N_ITEMS, 2), N_USERS)
    strides[np.gcd(strides, N_ITEMS) != 1] = 1
    offsets = rng.integers(0, N_ITEMS, N_USERS)
    items = (np.repeat(offsets, lengths) + position * np.repeat(strides, lengths)) % N_ITEMS + 1
    ratings = rng.integers(1, 11, size=rows) / 2.0  # 0.5 .. 5.0
    timestamps = rng.integers(789_652_009, 1_427_784_002, size=rows)
    frame = pl.DataFrame(
        {"userId": users, "movieId": items, "rating": ratings, "timestamp": timestamps}
    )
    frame.write_csv(path)


def peak_memory_gib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1 << 30) if sys.platform == "darwin" else peak / (1 << 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000_000)
    rows = parser.parse_args().rows
    protocol = get_dataset("ml-20m").protocol
    with tempfile.TemporaryDirectory(prefix="lossbench-bench-") as folder:
        csv = Path(folder) / "ratings.csv"
        start = time.perf_counter()
        generate_ratings(csv, rows)
        generated = time.perf_counter() - start
        size_mb = csv.stat().st_size / 1e6
        print(f"generated {rows:,} rows ({size_mb:,.0f} MB) in {generated:.1f} s")
        memory_before = peak_memory_gib()

        start = time.perf_counter()
        raw = read_interactions(csv, "movielens-csv")
        read = time.perf_counter() - start
        tables = build_tables(raw, protocol)
        del raw
        meta = {"name": "bench", **summary_stats(tables), "report": tables.report}
        write_prepared(prepared_dir(Path(folder), "bench"), tables, meta)
        elapsed = time.perf_counter() - start

    print(f"protocol: {protocol.model_dump()}")
    print(
        f"kept {meta['n_users']:,} users, {meta['n_items']:,} items, "
        f"{meta['n_interactions']:,} interactions"
    )
    print(f"preprocess: {elapsed:.1f} s (read {read:.1f} s) = {rows / elapsed:,.0f} rows/s")
    print(
        f"peak memory (ru_maxrss): {peak_memory_gib():.2f} GiB "
        f"(after generation: {memory_before:.2f} GiB)"
    )


if __name__ == "__main__":
    try:
        main()
    except LossbenchError as error:  # bad input: one line, no traceback
        sys.exit(f"error: {error}")
