"""What the bench scripts share: datasets, run configs, timed runs, the plain computation.

Not a script: `training.py`, `gpu.py` and `contention.py` import it (they run with this
folder on `sys.path`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lossbench.data.download import download_dataset
from lossbench.data.prepared import PreparedDataset, is_prepared
from lossbench.data.preprocess import preprocess_dataset
from lossbench.data.registry import get_dataset
from lossbench.data.store import ensure_prepared
from lossbench.losses import full_softmax
from lossbench.training.config import TrainConfig, build_config
from lossbench.training.loop import train_run

MILLION = 1_000_000


def prepared_dataset(data_dir: Path, name: str, mirror: str | None = None) -> PreparedDataset:
    """`name` prepared in `data_dir`: downloaded (from `mirror` when given) and preprocessed
    with lossbench's own functions first if needed."""
    if not is_prepared(data_dir, name) and get_dataset(name).generator is None:
        download_dataset(data_dir, name, mirror=mirror, show_progress=False)
        preprocess_dataset(data_dir, name)
    return ensure_prepared(data_dir, name)


def run_config(
    dataset: str,
    loss: str,
    epochs: int,
    *,
    precision: str = "fp32",
    device: str = "cpu",
    compile: bool = False,
    **overrides: Any,
) -> TrainConfig:
    """sasrec + `loss` with the study's Table 2 settings, `epochs` epochs, no early stop."""
    return build_config(
        overrides={
            "dataset": dataset,
            "model": "sasrec",
            "loss": loss,
            "max_epochs": epochs,
            "patience": epochs + 1,
            "precision": precision,
            "device": device,
            "compile": compile,
            **overrides,
        }
    )


def timed_run(config: TrainConfig, dataset: PreparedDataset) -> dict[str, Any]:
    """Train `config` in a throwaway folder; its epochs' seconds (each ends on a device
    sync: the epoch's loss is read back), validation seconds and peak memory."""
    with tempfile.TemporaryDirectory() as run_dir:
        result = train_run(config, dataset, Path(run_dir))
    epochs = [h["train_seconds"] for h in result.history]
    ordered = sorted(epochs)
    return {
        "epochs": len(epochs),
        "first_epoch_seconds": epochs[0],  # warm-up, and compilation with --compile
        "train_seconds_fastest": ordered[0],
        # The middle epoch too: the fastest flatters when the machine's speed drifts.
        "train_seconds_median": ordered[len(ordered) // 2],
        "validation_seconds": min(h["eval_seconds"] for h in result.history),
        "peak_memory_mb": result.metrics["peak_memory_mb"],
        "test_ndcg@10": result.metrics["test"].get("ndcg@10"),
        "threads": result.config["environment"]["threads"],
        "loss_settings": result.config["loss_settings"],
        "model_settings": result.config["model_settings"],
    }


def random_catalogue(n_items: int, users: int = 128, length: int = 51) -> PreparedDataset:
    """`users` random sequences of `length` items over `n_items` items (seeded)."""
    rng = np.random.default_rng(0)
    return PreparedDataset(
        name=f"random-{n_items}",
        n_items=n_items,
        train_offsets=np.arange(users + 1, dtype=np.int64) * length,
        train_items=rng.integers(1, n_items + 1, users * length),
        valid_items=rng.integers(1, n_items + 1, users),
        test_items=rng.integers(1, n_items + 1, users),
    )


def catalogue_step_config(dataset: PreparedDataset, steps: int, device: str) -> TrainConfig:
    """sasrec + improved, batch 128 x length 50 (one step per epoch), on `dataset`."""
    return run_config(
        dataset.name, "improved", steps, device=device, batch_size=128, eval_batch_size=128
    )


@contextmanager
def item_chunked_softmax() -> Iterator[None]:
    """Every catalogue takes the full softmax's item-chunked path (huge catalogues' path)."""
    saved = dict(full_softmax.MAX_FUSED_ITEMS), full_softmax.DEFAULT_MAX_FUSED_ITEMS
    full_softmax.MAX_FUSED_ITEMS = dict.fromkeys((*saved[0], "cpu"), 0)
    full_softmax.DEFAULT_MAX_FUSED_ITEMS = 0
    try:
        yield
    finally:
        full_softmax.MAX_FUSED_ITEMS, full_softmax.DEFAULT_MAX_FUSED_ITEMS = saved


def plain_loss(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss: str,
    negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """The plain computation of the study's code on (B, L) left-padded `inputs` and
    `targets` (0 where nothing trains): the model on every position, then bce with the
    given (B, L) `negatives`, or the full softmax with (positions x catalogue) logits
    materialized and `F.cross_entropy`. Call inside `padding_computed(model)`
    (`lossbench.models.transformer`: the encoder runs every position, as the study's code)."""
    table: torch.Tensor = model.item_embedding.weight  # type: ignore[union-attr,assignment]
    hidden = model(inputs)  # (B, L, D): every position, padding included
    trains = targets.reshape(-1) > 0
    if loss == "bce":
        assert negatives is not None
        positive = (hidden * table[targets]).sum(-1).reshape(-1)
        negative = (hidden * table[negatives]).sum(-1).reshape(-1)
        return -(F.logsigmoid(positive[trains]) + F.logsigmoid(-negative[trains])).mean()
    at_positions = hidden.reshape(-1, hidden.shape[-1])[trains]  # (N, D)
    logits = at_positions @ table[1 : model.n_items + 1].T  # type: ignore[operator]
    return F.cross_entropy(logits, targets.reshape(-1)[trains] - 1)
