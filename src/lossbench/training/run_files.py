"""The run folder: what a finished run leaves for people and for `compare` / `report`.

- `config.json`: the resolved configuration, loss settings and environment (written first)
- `history.csv`: one row per epoch (loss, validation metrics, seconds, peak memory)
- `model.pt`: the best weights (a state dict; load with `torch.load(..., weights_only=True)`)
- `test_ranks.parquet`: `user`, `target`, `rank` for every test user (per-user significance;
  under a temporal split only the users with a test target); a target that counts as not
  found (`--seen-targets miss`) has rank 2**62 (`NOT_FOUND_RANK`)
- `topk.parquet`: `user`, `target`, `topk` (best first), with `--save-topk K`
- `metrics.json`: validation and test metrics, timings, the seen-items rule (`seen_targets`:
  miss, rank or keep); written last, so its presence means the run finished.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch import Tensor

from lossbench.atomic import write_json, write_with
from lossbench.training.evaluate import EvaluationResult

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
RANKS_FILE = "test_ranks.parquet"
TOPK_FILE = "topk.parquet"
WEIGHTS_FILE = "model.pt"


class RunFiles:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.history: list[dict[str, Any]] = []

    def start(self, record: dict[str, Any]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (METRICS_FILE, HISTORY_FILE, RANKS_FILE, TOPK_FILE, WEIGHTS_FILE):
            (self.run_dir / stale).unlink(missing_ok=True)
        write_json(self.run_dir / CONFIG_FILE, record)

    def append_history(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        frame = pl.DataFrame(self.history)
        write_with(self.run_dir / HISTORY_FILE, frame.write_csv)

    def finish(
        self,
        state_dict: dict[str, Tensor],
        result: EvaluationResult,
        user_rows: Tensor,
        targets: Tensor,
        metrics: dict[str, Any],
    ) -> None:
        """`user_rows` (U,), `targets` (U,): the test set's users (id - 1) and targets."""
        cpu_state = {name: tensor.detach().cpu() for name, tensor in state_dict.items()}
        write_with(self.run_dir / WEIGHTS_FILE, lambda path: torch.save(cpu_state, path))
        users = pl.Series("user", user_rows.numpy() + 1, dtype=pl.Int32)
        ranks = pl.DataFrame(
            [
                users,
                pl.Series("target", targets.numpy(), dtype=pl.Int32),
                pl.Series("rank", result.ranks.numpy(), dtype=pl.Int64),
            ]
        )
        write_with(self.run_dir / RANKS_FILE, ranks.write_parquet)
        if result.topk is not None:
            topk = ranks.select("user", "target").with_columns(
                pl.Series("topk", result.topk.numpy(), dtype=pl.List(pl.Int32))
            )
            write_with(self.run_dir / TOPK_FILE, topk.write_parquet)
        write_json(self.run_dir / METRICS_FILE, metrics)


def is_finished(run_dir: Path) -> bool:
    return (run_dir / METRICS_FILE).is_file()


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return dict(json.loads((run_dir / METRICS_FILE).read_text()))
