"""The tables of bench/contention.py and bench/softmax_chunk.py, from made-up timings."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import contention  # noqa: E402
import softmax_chunk as chunk_bench  # noqa: E402


def test_contention_table_gives_ratios_to_alone_and_to_the_former_setting() -> None:
    runs = [
        {"setting": "former", "condition": "alone", "seconds": 0.70, "threads": [2]},
        {"setting": "former", "condition": "alone", "seconds": 0.72, "threads": [2]},
        {"setting": "former", "condition": "shared", "seconds": 3.0, "threads": [2]},
        {"setting": "default", "condition": "alone", "seconds": 0.71, "threads": [2]},
        {"setting": "default", "condition": "shared", "seconds": 1.2, "threads": [1, 2]},
    ]
    former, default = contention.table(runs)
    assert former["alone_seconds"] == pytest.approx(0.71)  # the median of the rounds
    assert former["shared_over_alone"] == pytest.approx(3.0 / 0.71)
    assert former["alone_over_former_alone"] == 1.0
    assert default["alone_over_former_alone"] == pytest.approx(1.0)
    assert default["shared_over_alone"] == pytest.approx(1.2 / 0.71)
    assert default["threads_shared"] == [1, 2]


def test_softmax_chunk_bench_puts_the_chosen_chunk_beside_the_best() -> None:
    rows = [
        {"dataset": "beauty-s3rec", "chunk": 1 << 20, "milliseconds": 47.1},
        {"dataset": "beauty-s3rec", "chunk": 1 << 22, "milliseconds": 39.6},
        {"dataset": "lastfm", "chunk": 1 << 20, "milliseconds": 95.4},
        {"dataset": "lastfm", "chunk": 1 << 22, "milliseconds": 96.0},
    ]
    beauty, lastfm = chunk_bench.chosen_beside_best(rows, 1 << 20)
    assert beauty["best_chunk"] == 1 << 22 and beauty["chosen_vs_best"] == pytest.approx(
        47.1 / 39.6
    )
    assert lastfm["best_chunk"] == lastfm["chosen_chunk"] == 1 << 20
    assert lastfm["chosen_vs_best"] == 1.0
