"""Finished reproduction run folders with known ranks, for tests of reports and docs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from lossbench.evaluation.metrics import metrics_from_ranks
from lossbench.reproduce.plan import build_reproduction
from lossbench.reproduce.tables import get_table
from lossbench.training.entry import PlanEntry

N_USERS = 1000


def finish_fake_run(entry: PlanEntry, ranks: np.ndarray) -> None:
    """A finished run folder for `entry`, as `train_entry` leaves it (without weights)."""
    run_dir = entry.run_dir
    run_dir.mkdir(parents=True)
    record = {
        "config": entry.config.model_dump(mode="json"),
        "model_settings": entry.model_settings.model_dump(mode="json"),
        "loss_settings": {"loss": entry.config.loss_name, "negatives": entry.loss.negatives},
        "environment": {"device": "cpu", "precision": "fp32"},
    }
    (run_dir / "config.json").write_text(json.dumps(record))
    pl.DataFrame(
        {
            "user": np.arange(1, len(ranks) + 1, dtype=np.int32),
            "target": np.ones(len(ranks), dtype=np.int32),
            "rank": ranks.astype(np.int64),
        }
    ).write_parquet(run_dir / "test_ranks.parquet")
    pl.DataFrame(
        {"epoch": [1], "loss": [1.0], "elapsed_seconds": [1.0], "valid_ndcg@10": [0.1]}
    ).write_csv(run_dir / "history.csv")
    metrics = {
        "valid": metrics_from_ranks(ranks, [10, 20]),
        "test": metrics_from_ranks(ranks, [10, 20]),
        "best_epoch": 1,
        "epochs": 1,
        "train_seconds": 1.0,
        "train_seconds_per_epoch": 1.0,
        "validation_metric": "ndcg@20",
        "loss": entry.config.loss_name,
        "model": entry.config.model,
        "dataset": entry.config.dataset,
        "seed": entry.config.seed,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def ranks_with_hits(hits: int, seed: int) -> np.ndarray:
    """N_USERS ranks of which exactly `hits` are in the top 10: HR@10 = hits / N_USERS, and
    NDCG@10 = 0.55 HR@10 or so (hits at rank 2 and 3: 1/log2(3) = 0.63, 1/log2(4) = 0.5), about
    the study's ratio of the two."""
    rng = np.random.default_rng(seed)
    ranks = rng.integers(50, 500, N_USERS)
    hit_users = rng.choice(N_USERS, hits, replace=False)
    ranks[hit_users] = np.where(np.arange(hits) < round(0.38 * hits), 2, 3)
    return ranks


# Hits of 1,000 users per cell: most at the study's HR@10, sasrec bce at half of it (far),
# s3rec improved below s3rec bce (the study's direction reversed, and far).
HITS = {
    ("gru4rec", "ce"): 31,
    ("gru4rec", "improved"): 46,
    ("srgnn", "ce"): 16,
    ("srgnn", "improved"): 39,
    ("sasrec", "bce"): 20,
    ("sasrec", "improved"): 59,
    ("s3rec", "bce"): 69,
    ("s3rec", "improved"): 30,
}


def save_fake_table2(out: Path) -> Path:
    """table2 on lastfm, seeds 0 and 1, every run finished with ranks from `HITS`."""
    reproduction = build_reproduction(get_table("table2"), ["lastfm"], [0, 1], {}, out)
    for entry in reproduction.plan.entries:
        key = (entry.config.model, entry.config.loss_name)
        finish_fake_run(entry, ranks_with_hits(HITS[key], entry.config.seed))
    reproduction.plan.save()
    reproduction.save()
    return out


def save_fake_comparison(out: Path) -> Path:
    """`compare --dataset lastfm --model sasrec --losses bce,improved --seeds 0,1`, finished."""
    from lossbench.compare.plan.build import build_plan
    from lossbench.compare.plan.grid import make_grid

    grid = make_grid(
        {
            "datasets": ["lastfm"],
            "models": ["sasrec"],
            "losses": ["bce", "improved"],
            "seeds": [0, 1],
        },
        "test",
    )
    plan = build_plan(grid, {}, out)
    for entry in plan.entries:
        key = (entry.config.model, entry.config.loss_name)
        finish_fake_run(entry, ranks_with_hits(HITS[key], entry.config.seed))
    plan.save()
    return out
