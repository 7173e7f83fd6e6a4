"""Which implementation computes the full-catalogue softmax CE of `ce`, `improved` and `mlm`.

- `chunked` (`full_softmax.py`): lossbench's own, on every device; the reference, and the only
  backend on CPU.
- `cut-cross-entropy`: Cut Cross-Entropy (Wijmans et al., "Cut Your Losses in Large-Vocabulary
  Language Models", ICLR 2025, arXiv 2411.09009; apple/ml-cross-entropy, PyPI
  `cut-cross-entropy`, `pip install 'lossbench[cce]'`): its Triton kernels compute the
  log-sum-exp and both gradients tile by tile in on-chip memory, never writing the logits.
  Used on CUDA when the package imports. lossbench turns off its gradient filtering
  (`filter_eps=None`), so the gradients are exact rather than skipping small softmax entries.

The backend a run used is recorded (`environment.loss_backend` in config.json and
`loss_backend` in metrics.json). Parity of the two is checked on a GPU by `bench/gpu.py`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import torch
from torch import Tensor

from lossbench.losses.base import LossInputs, LossParams, LossSpec
from lossbench.losses.full_softmax import full_softmax_ce

Backend = Literal["chunked", "cut-cross-entropy"]


@functools.cache
def cce_installed() -> bool:
    """Does `cut_cross_entropy` import here (it needs Triton, so a CUDA machine)?"""
    try:
        from cut_cross_entropy import linear_cross_entropy  # noqa: F401
    except Exception:  # ImportError, or Triton failing to load without a GPU
        return False
    return True


def softmax_backend(spec: LossSpec, device: torch.device) -> Backend | None:
    """The backend of a full-softmax loss on `device`; None for any other loss."""
    if spec.fn is not full_softmax_ce and spec.fn is not cce_softmax_ce:
        return None
    return "cut-cross-entropy" if device.type == "cuda" and cce_installed() else "chunked"


def with_softmax_backend(spec: LossSpec, device: torch.device) -> LossSpec:
    """`spec` computing its full softmax with the backend `softmax_backend` picks."""
    backend = softmax_backend(spec, device)
    if backend is None:
        return spec
    fn = cce_softmax_ce if backend == "cut-cross-entropy" else full_softmax_ce
    return dataclasses.replace(spec, fn=fn)


def cce_softmax_ce(inputs: LossInputs, params: LossParams) -> Tensor:
    """-mean_n log softmax(h_n E[1:]^T)[y_n - 1] through `linear_cross_entropy` (CUDA)."""
    from cut_cross_entropy import linear_cross_entropy

    hidden, targets = inputs.hidden, inputs.targets
    n_positions = hidden.shape[0]
    if n_positions == 0:
        return hidden.sum() * 0.0  # connected zero
    items = inputs.item_embeddings[1:]  # (n_items, D): padding row 0 is never a class
    total: Tensor = linear_cross_entropy(
        hidden, items, targets - 1, reduction="sum", filter_eps=None, impl="cce"
    )
    return total / n_positions
