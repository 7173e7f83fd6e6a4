"""Scalable Cross-Entropy (`sce`): the softmax over each position's positive and the hardest
negatives that a random-projection bucketing finds, never the whole catalogue's logits.

Mezentsev, Gusak, Oseledets, Frolov, "Scalable Cross-Entropy Loss for Sequential
Recommendations with Large Item Catalogs", RecSys 2024 (arXiv 2409.18721); the authors' code is
AIRI-Institute/Scalable-SASRec (`model.py`, configs) and the same loss is RePlay's
`replay/models/nn/loss/sce.py`. Per step:

1. draw n_b random directions B (n_b, D), scaled by D^-1/4 (with mix_x: B = Omega^T X, Omega
   (N, n_b) random, so the directions are mixtures of the batch's hidden states);
2. each bucket takes the bucket_size_x hidden states and the bucket_size_y items with the
   largest projections on its direction (a maximum inner product search: the items most likely
   to outscore the positive);
3. inside each bucket, a softmax over the positive and the bucket's items (the positive's own id
   masked out), and each position's loss is its largest over the buckets that hold it;
4. the mean over the positions some bucket holds (others contribute nothing this step).

The published rule is n_b = bucket_size_x = 2 sqrt(N) for N training positions (the authors'
grid: `int(2 * (batch_size * interactions_per_user) ** 0.5)`) and bucket_size_y in {64, ...,
4096}; lossbench's default 256 is the authors' leave-one-out Beauty setting, mix_x off as there.
Cost: two projections (n_b x (N + n_items) x D), a top-k over the catalogue (taken in item
chunks, so memory stays at n_b x chunk) and n_b x bucket_size_x x bucket_size_y logits. With
every position and every item in each bucket it is exactly the full softmax CE (tested).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lossbench.errors import LossbenchError
from lossbench.losses.base import LossInputs, LossParams

# Projections of items held at once by the catalogue's top-k (bounds its memory).
TOPK_LOGITS = 1 << 22


def sce_memory_bytes(n_positions: int, n_items: int, dim: int, params: LossParams) -> int:
    """Bytes `sce` holds at its peak for N positions (fp32, beside the weights): the
    catalogue's projections in item chunks, the gathered rows and bucketed hidden states
    with their gradients, the n_b b_x b_y logits (about six copies: masked, joined, their
    log-sum-exp and gradients), the table's gradient."""
    n_buckets = params.sce_buckets or max(1, int(2.0 * math.sqrt(n_positions)))
    size_x = min(params.sce_bucket_size_x or n_buckets, n_positions)
    size_y = min(params.sce_bucket_size_y, n_items)
    projections = 8 * min(n_items * n_buckets, max(TOPK_LOGITS, size_y * n_buckets))
    rows = 8 * (n_positions + n_buckets * size_y + n_buckets * size_x) * dim
    logits = 24 * n_buckets * size_x * size_y
    return projections + rows + logits + 4 * n_items * dim


def sce(inputs: LossInputs, params: LossParams) -> Tensor:
    """Mean over bucketed positions of -log softmax([s(y), s(bucket items)])[0], the largest
    such loss of each position over its buckets."""
    hidden, targets, table = inputs.hidden, inputs.targets, inputs.item_embeddings
    n_positions, dim = hidden.shape
    n_items = table.shape[0] - 1
    if n_positions == 0:
        return hidden.sum() * 0.0  # connected zero
    generator = require_generator(inputs, "sce")
    n_buckets = params.sce_buckets or max(1, int(2.0 * math.sqrt(n_positions)))
    size_x = min(params.sce_bucket_size_x or n_buckets, n_positions)  # published: = n_b
    size_y = min(params.sce_bucket_size_y, n_items)
    if n_buckets < 1 or size_y < 1:
        raise LossbenchError("sce needs at least one bucket and one item per bucket")
    with torch.no_grad():
        directions = _directions(hidden, n_buckets, params.sce_mix_x, generator)  # (n_b, D)
        top_x = torch.topk(directions @ hidden.detach().T, size_x, dim=1).indices  # (n_b, bx)
        top_y = catalogue_topk(directions, table.detach()[1:], size_y) + 1  # (n_b, by) ids
    # One gather of the targets' and the buckets' rows: its backward writes one dense
    # table-sized gradient, not one per gather (256 MB each at 1M items x 64 dims).
    rows = table[torch.cat([targets, top_y.reshape(-1)])]  # (N + n_b by, D)
    positive = (hidden * rows[:n_positions]).sum(-1)  # (N,)
    x_bucket = hidden[top_x]  # (n_b, bx, D)
    y_bucket = rows[n_positions:].view(n_buckets, size_y, dim)  # (n_b, by, D)
    wrong = x_bucket @ y_bucket.transpose(1, 2)  # (n_b, bx, by)
    is_positive = targets[top_x].unsqueeze(2) == top_y.unsqueeze(1)  # (n_b, bx, by)
    wrong = wrong.masked_fill(is_positive, float("-inf"))
    correct = positive[top_x].unsqueeze(2)  # (n_b, bx, 1)
    per_slot = torch.logsumexp(torch.cat([wrong, correct], dim=2), dim=2) - correct[..., 0]
    # Each position's largest loss over the buckets holding it (ties share the gradient).
    per_position = per_slot.new_zeros(n_positions).scatter_reduce(
        0, top_x.reshape(-1), per_slot.reshape(-1), reduce="amax", include_self=False
    )
    held = torch.zeros(n_positions, dtype=torch.bool, device=hidden.device)
    held[top_x.reshape(-1)] = True
    return (per_position * held).sum() / held.sum().clamp(min=1)


def _directions(hidden: Tensor, n_buckets: int, mix_x: bool, generator: torch.Generator) -> Tensor:
    """(n_b, D) bucket directions with entries of variance D^-1/2 (the authors' scale)."""
    dim = hidden.shape[1]
    scale = dim**-0.25
    if mix_x:
        omega = torch.randn(
            hidden.shape[0],
            n_buckets,
            generator=generator,
            device=hidden.device,
            dtype=hidden.dtype,
        )
        return (omega * scale).T @ hidden.detach()
    return scale * torch.randn(
        n_buckets, dim, generator=generator, device=hidden.device, dtype=hidden.dtype
    )


def catalogue_topk(directions: Tensor, item_rows: Tensor, k: int) -> Tensor:
    """(n_b, k) 0-based indices of the k items with the largest projection on each direction,
    over item chunks of about `TOPK_LOGITS` / n_b items (never n_b x n_items at once)."""
    n_buckets, n_items = directions.shape[0], item_rows.shape[0]
    chunk = max(k, TOPK_LOGITS // max(n_buckets, 1))
    best_values: Tensor | None = None
    best_index: Tensor | None = None
    for start in range(0, n_items, chunk):
        scores = directions @ item_rows[start : start + chunk].T  # (n_b, c)
        values, index = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        index = index + start
        if best_values is not None and best_index is not None:
            values = torch.cat([best_values, values], dim=1)
            index = torch.cat([best_index, index], dim=1)
            values, keep = torch.topk(values, k, dim=1)
            index = index.gather(1, keep)
        best_values, best_index = values, index
    assert best_index is not None
    return best_index


def require_generator(inputs: LossInputs, loss_name: str) -> torch.Generator:
    if inputs.generator is None:
        raise LossbenchError(
            f"loss '{loss_name}' draws random projections and needs LossInputs.generator "
            "(the trainer supplies one; in your own code pass a seeded torch.Generator)"
        )
    return inputs.generator
