"""An example of "your own loss" for the CI workflows: the full-catalogue softmax with label
smoothing, in the signature every lossbench loss has. A CI job smoke-compares it with
`improved` (the same softmax without smoothing) on every change to this file."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lossbench.losses.base import LossInputs, LossParams


def my_loss(inputs: LossInputs, params: LossParams) -> Tensor:
    """Mean label-smoothed cross-entropy of the (N,) targets over the whole catalogue."""
    logits = inputs.hidden @ inputs.item_embeddings[1:].T  # (N, n_items): row 0 is padding
    return F.cross_entropy(logits, inputs.targets - 1, label_smoothing=0.1)
