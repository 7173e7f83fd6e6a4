"""The run folder: what a finished run leaves for people and for `compare` / `report`.

- `config.json`: the resolved configuration, loss settings and environment (written first)
- `history.csv`: one row per epoch (loss, validation metrics, seconds, peak memory)
- `model.pt`: the best weights (a state dict; load with `torch.load(..., weights_only=True)`)
- `test_ranks.parquet`: `user`, `target`, `rank` for every test user (per-user significance;
  under a temporal split only the users with a test target); a target that counts as not
  found (`--seen-targets miss`) has rank 2**62 (`NOT_FOUND_RANK`)
- `topk.parquet`, with `--save-topk K`: `user`, `target`, `topk` (K item ids, best first),
  and the same in the source file's ids (`original_user`, `original_target`, `original_topk`)
  when the dataset has id maps (every prepared one does)
- `checkpoint.pt`: while the run trains, everything needed to continue it after an
  interruption (see `checkpoint.py`); removed when the run finishes.
- `metrics.json`: validation and test metrics, timings, the seen-items rule (`seen_targets`:
  miss, rank or keep), and under `files` the size and sha256 of every other file the run
  wrote (as prepared data records its files); written last, so its presence means the run
  finished. `run_problems` checks a finished folder against it.

Two runs "have the same settings" when their recorded configurations agree on every setting
but the execution-only ones (`EXECUTION_ONLY`): `setting_changes` lists the others that differ,
generically, so a setting added to `TrainConfig` is compared without further code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch import Tensor

from lossbench import __version__
from lossbench.atomic import write_json, write_with
from lossbench.data.fingerprint import META_KEY as FINGERPRINT_KEY
from lossbench.data.integrity import damage, file_record
from lossbench.data.prepared import OriginalIds, PreparedDataset
from lossbench.data.sequences import SequenceTensors
from lossbench.errors import LossbenchError
from lossbench.losses.softmax_backend import softmax_backend
from lossbench.plugins import changed_sources
from lossbench.training.config import TrainConfig
from lossbench.training.distributed import SINGLE_PROCESS, ProcessGroup
from lossbench.training.entry import PlanEntry
from lossbench.training.evaluate import EvaluationResult
from lossbench.training.setup import LossSettings

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
RANKS_FILE = "test_ranks.parquet"
TOPK_FILE = "topk.parquet"
WEIGHTS_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"

# How a run executes, not what it computes (the softmax chunk changes speed, never a bit): a
# resumed comparison may change these freely, they never keep runs apart in a report, and run
# folders written before one existed still match. In any section of a record.
EXECUTION_ONLY = frozenset({"threads", "checkpoint_every", "softmax_chunk"})
NOT_RECORDED = "(not recorded)"
# Settings added after run folders were written, whose default is the behaviour those runs
# had: a record without one compares as that default (a setting not listed here and missing
# from a record is NOT_RECORDED, which differs from every value).
BACKFILLED = (
    "split",
    "valid_quantile",
    "test_quantile",
    "shuffle_train",
    "logq",
    "scaled_ce_alpha",
    "sce_bucket_size_y",
    "rece_rounds",
    "rece_extra_chunks",
)
REPLACED = ".replaced-"  # run folders set aside by a resumed comparison: `seed0.replaced-<time>`
FILES_KEY = "files"  # metrics.json: {file name: {"size", "sha256"}} of the run's other files
RECORDED = (CONFIG_FILE, HISTORY_FILE, WEIGHTS_FILE, RANKS_FILE, TOPK_FILE)
METRICS_KEYS = ("dataset", "model", "loss", "seed", "valid", "test")  # what report reads


class RunFiles:
    def __init__(self, run_dir: Path, original_ids: OriginalIds | None = None) -> None:
        """`original_ids`: the dataset's id maps, for the original ids in `topk.parquet`."""
        self.run_dir = run_dir
        self.original_ids = original_ids
        self.history: list[dict[str, Any]] = []

    def start(self, record: dict[str, Any], history: list[dict[str, Any]] | None = None) -> None:
        """Write config.json; `history`: the epochs a resumed run has already trained."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (METRICS_FILE, HISTORY_FILE, RANKS_FILE, TOPK_FILE, WEIGHTS_FILE):
            (self.run_dir / stale).unlink(missing_ok=True)
        for temporary in self.run_dir.glob(".*.tmp"):  # left by a process killed mid-write
            temporary.unlink(missing_ok=True)
        write_json(self.run_dir / CONFIG_FILE, record)
        self.history = []
        for row in history or []:
            self.append_history(row)

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
            if self.original_ids is not None:
                topk = topk.with_columns(
                    original_topk_ids(self.original_ids, user_rows, targets, result.topk)
                )
            write_with(self.run_dir / TOPK_FILE, topk.write_parquet)
        written = [name for name in RECORDED if (self.run_dir / name).is_file()]
        files = {name: file_record(self.run_dir / name) for name in written}
        write_json(self.run_dir / METRICS_FILE, {**metrics, FILES_KEY: files})
        (self.run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)  # finished: nothing to resume


def original_topk_ids(
    original: OriginalIds, user_rows: Tensor, targets: Tensor, topk: Tensor
) -> list[pl.Series]:
    """`original_user`, `original_target`, `original_topk`: the source file's ids of the
    test users (rows `user_rows`, (U,)), their targets (U,) and top-K items (U, K)."""
    best = topk.numpy()
    flat = original.items.gather(best.ravel() - 1)  # (U * K,) item i is row i - 1
    lists = (
        flat.reshape(best.shape).arr.to_list()
        if best.size
        else pl.Series([[]] * len(best), dtype=pl.List(pl.String))
    )
    return [
        original.users.gather(user_rows.numpy()).alias("original_user"),
        original.items.gather(targets.numpy() - 1).alias("original_target"),
        lists.alias("original_topk"),
    ]


def run_record(
    entry: PlanEntry,
    dataset: PreparedDataset,
    sequences: SequenceTensors,
    loss: LossSettings,
    group: ProcessGroup = SINGLE_PROCESS,
) -> dict[str, Any]:
    """config.json: the configuration, the resolved model settings and the loss as it trains
    (its softmax chunk measured on this machine), the code's sources, the data."""
    return {
        "config": entry.config.model_dump(mode="json"),
        "model_settings": entry.model_settings.model_dump(),
        "loss_settings": loss.record(),
        "sources": entry.sources,
        "dataset": {
            "name": dataset.name,
            "n_users": dataset.n_users,
            "n_items": dataset.n_items,
            "split": entry.config.split_spec.identity(),
            "valid_users": len(sequences.valid.targets),
            "test_users": len(sequences.test.targets),
            # users, items, interactions and split hash of the prepared files (None: prepared
            # before fingerprints existed)
            "fingerprint": dataset.meta.get(FINGERPRINT_KEY),
        },
        "environment": {
            "device": str(entry.device),
            "torch": torch.__version__,
            "lossbench": __version__,
            "threads": torch.get_num_threads(),
            "precision": entry.config.precision,
            "loss_backend": softmax_backend(loss.spec, entry.device),  # None: not a full softmax
            # Data-parallel processes; "devices": one per rank (str(entry.device) on each).
            "distributed": {**group.describe(), "devices": [str(entry.device)] * group.world_size},
        },
    }


def is_finished(run_dir: Path) -> bool:
    return (run_dir / METRICS_FILE).is_file()


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """metrics.json of a finished run, as the run reported it (without the file records); a
    damaged one is a LossbenchError naming it."""
    problem, metrics = _parse_metrics(run_dir)
    if problem is None and not all(key in metrics for key in METRICS_KEYS):
        problem = f"{run_dir / METRICS_FILE} is damaged (it lacks the metrics a run records)"
    if problem is not None:
        raise LossbenchError(f"{problem}; {DAMAGED_FIX}")
    return {key: value for key, value in metrics.items() if key != FILES_KEY}


DAMAGED_FIX = (
    "rerun the comparison with the same --out (it sets the damaged run aside as "
    f"<run>{REPLACED}<time> and trains it again), or move the run folder away"
)


def _parse_metrics(run_dir: Path) -> tuple[str | None, dict[str, Any]]:
    """(None, metrics) or (a phrase naming metrics.json and what is wrong with it, {})."""
    path = run_dir / METRICS_FILE
    try:
        metrics = json.loads(path.read_bytes())
    except OSError as error:
        return f"{path} cannot be read ({(error.strerror or str(error)).lower()})", {}
    except ValueError:
        return f"{path} is damaged (not valid JSON: cut short or overwritten)", {}
    if not isinstance(metrics, dict):
        return f"{path} is damaged (not a JSON object)", {}
    return None, metrics


def run_problems(run_dir: Path, *, hashes: bool) -> list[str]:
    """What is wrong with a finished run folder: metrics.json unreadable, or a file it records
    missing or changed since it was written (`hashes=False`: sizes only, a stat per file).
    Runs finished before files were recorded are checked for a readable metrics.json only."""
    problem, metrics = _parse_metrics(run_dir)
    if problem is not None:
        return [problem]
    records = metrics.get(FILES_KEY)
    if not isinstance(records, dict):
        return []
    problems = []
    for name, record in sorted(records.items()):
        if not isinstance(record, dict):
            return [f"{run_dir / METRICS_FILE} is damaged (its file records are not readable)"]
        found = damage(run_dir / name, record.get("size"), record.get("sha256"), hashes=hashes)
        if found is not None:
            problems.append(found)
    return problems


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """config.json of a run folder, or None when it is missing or unreadable."""
    try:
        record = json.loads((run_dir / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def flat_settings(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"lr": 0.001, "model_settings": {"max_len": 50}} -> {"lr": ..., "model_settings.max_len":
    ...}, without the execution-only settings."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in EXECUTION_ONLY:
            continue
        if isinstance(value, Mapping):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def with_backfilled(config: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded configuration with the defaults of the `BACKFILLED` settings it predates."""
    defaults = {name: TrainConfig.model_fields[name].default for name in BACKFILLED}
    return {**defaults, **config}


def setting_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(setting, old value, new value) for every setting of two configurations that differs; a
    setting one of them lacks shows as NOT_RECORDED."""
    before, after = flat_settings(with_backfilled(old)), flat_settings(with_backfilled(new))
    changes = []
    for key in sorted(before.keys() | after.keys()):
        was, now = before.get(key, NOT_RECORDED), after.get(key, NOT_RECORDED)
        if was != now:
            changes.append((key, was, now))
    return changes


def source_changes(
    sources: Mapping[str, Any] | None, entry: PlanEntry
) -> list[tuple[str, Any, Any]]:
    """(`loss source sha256`, old, new) for a plugin loss or model whose source file is not
    the one a recorded run was trained with."""
    changes = []
    for part in changed_sources(sources, entry.sources):
        was = ((sources or {}).get(part) or {}).get("sha256") or "built-in"
        changes.append((f"{part} source sha256", was, entry.sources[part]["sha256"]))
    return changes


def describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
    """'lr 0.001 -> 0.01, max_epochs 200 -> 10'."""
    return ", ".join(
        f"{key} {setting_text(was)} -> {setting_text(now)}" for key, was, now in changes
    )


def setting_text(value: Any) -> str:
    """A setting's value as a user reads it: 0.001, true, [1, 5], bce, null."""
    return value if isinstance(value, str) else json.dumps(value)
