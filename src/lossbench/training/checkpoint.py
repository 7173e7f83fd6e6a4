"""Resumable checkpoints: everything a killed run needs to continue as if never stopped.

A checkpoint holds the model and optimizer states, every random state the run draws from (the
batcher's and the negative sampler's generators, torch's global generators that dropout uses,
Python's and numpy's), the history so far and the early-stopping state, best weights
included. Restoring all of it makes the continued run compute exactly what the uninterrupted
one would have (bit for bit on CPU). It is written atomically, holds only tensors and plain
values (so it loads with `weights_only=True`), and is removed when the run finishes.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lossbench.checkpoints import load_checkpoint, save_checkpoint_file
from lossbench.errors import LossbenchError

FORMAT = "lossbench-run-checkpoint-1"
# Without --checkpoint-every: a checkpoint once this much training time has passed since the
# last one on CPU (an interruption costs at most a few minutes), every epoch on GPU.
CHECKPOINT_SECONDS = 300.0


@dataclass
class TrainingState:
    """What a run has done so far: the part of a checkpoint that is not model or optimizer."""

    best_state: dict[str, Tensor]  # weights of the best validation epoch so far
    epoch: int = 0  # epochs finished
    best_value: float = float("-inf")
    best_epoch: int = 0
    elapsed_seconds: float = 0.0  # training and validation time, over every process
    history: list[dict[str, Any]] = field(default_factory=list)


def checkpoint_due(
    epoch: int, every: int | None, device: torch.device, seconds_since_last: float
) -> bool:
    """Whether to write a checkpoint after `epoch` (`every`: --checkpoint-every)."""
    if every is not None:
        return every > 0 and epoch % every == 0
    return device.type == "cuda" or seconds_since_last >= CHECKPOINT_SECONDS


def save_checkpoint(
    path: Path,
    record: Mapping[str, Any],
    state: TrainingState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generators: Mapping[str, torch.Generator],
) -> None:
    payload = {
        "format": FORMAT,
        "config": dict(record["config"]),  # what a rerun must ask for to continue it
        "sources": dict(record.get("sources") or {}),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generators": {name: g.get_state() for name, g in generators.items()},
        "global_random": _global_random_states(),
        "state": {
            "best_state": state.best_state,
            "epoch": state.epoch,
            "best_value": state.best_value,
            "best_epoch": state.best_epoch,
            "elapsed_seconds": state.elapsed_seconds,
            "history": state.history,
        },
    }
    save_checkpoint_file(payload, path)


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path` (tensors on the CPU), None when there is none."""
    if not path.is_file():
        return None
    try:
        checkpoint = load_checkpoint(path)
    except LossbenchError:  # damaged, or not a checkpoint: the message below says what to do
        checkpoint = None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise LossbenchError(
            f"{path} is not a readable lossbench run checkpoint; delete it to train the run "
            "from its first epoch"
        )
    return checkpoint


def restore_checkpoint(
    checkpoint: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generators: Mapping[str, torch.Generator],
) -> TrainingState:
    """Load a checkpoint into the run's objects; the training state it had."""
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    for name, generator in generators.items():
        generator.set_state(checkpoint["generators"][name])
    _set_global_random_states(checkpoint["global_random"])
    saved = checkpoint["state"]
    return TrainingState(
        best_state=saved["best_state"],
        epoch=int(saved["epoch"]),
        best_value=float(saved["best_value"]),
        best_epoch=int(saved["best_epoch"]),
        elapsed_seconds=float(saved["elapsed_seconds"]),
        history=list(saved["history"]),
    )


def _global_random_states() -> dict[str, Any]:
    """torch's CPU (and CUDA) generators, Python's and numpy's, as tensors and plain values."""
    version, python_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    keys = np.asarray(keys)  # (624,) uint32 Mersenne-Twister words
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor(python_state, dtype=torch.int64),
        "python_version": version,
        "python_gauss": gauss,
        "numpy": torch.from_numpy(keys.astype(np.int64)),
        "numpy_kind": kind,
        "numpy_position": int(position),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached": float(cached),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_global_random_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    python_state = tuple(int(value) for value in states["python"].tolist())
    random.setstate((states["python_version"], python_state, states["python_gauss"]))
    np.random.set_state(
        (
            states["numpy_kind"],
            states["numpy"].numpy().astype(np.uint32),
            states["numpy_position"],
            states["numpy_has_gauss"],
            states["numpy_cached"],
        )
    )
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
