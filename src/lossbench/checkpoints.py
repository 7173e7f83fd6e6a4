"""Checkpoint files, the one place they are written and read: written atomically (a killed
process leaves the previous file whole), read as tensors and plain values only
(`weights_only=True`) with one message for a file that is damaged or was not written by
lossbench."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lossbench.atomic import write_with
from lossbench.errors import LossbenchError


def load_checkpoint(path: Path) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU. torch's own error for a file holding
    other objects advises loading it with `weights_only=False`, which would run code from the
    file; the message here names the file and the likely cause instead."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LossbenchError(f"no checkpoint at {path}") from None
    except Exception as error:  # pickle, zip and torch errors vary by torch version
        raise LossbenchError(
            f"{path} is not a readable checkpoint ({type(error).__name__}): it is damaged, "
            "truncated, or holds more than tensors and plain values; use a file written by "
            "lossbench"
        ) from None


def save_checkpoint_file(payload: Any, path: Path) -> None:
    """`torch.save(payload, path)` through a temporary file renamed into place."""
    import torch

    write_with(path, lambda temporary: torch.save(payload, temporary))
