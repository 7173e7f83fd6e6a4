"""Softmax cross-entropy over the full catalogue (`ce`, `improved`, `mlm`).

Classes are items 1..n_items only: the padding row 0 and any special ids (BERT4Rec's mask)
are never scored. Small problems take the plain path (`F.cross_entropy` on the logits); when
N x n_items exceeds `params.softmax_max_logits`, the log-sum-exp is computed over item chunks
by a custom autograd function that recomputes each chunk's logits in backward, so peak memory
is about N x softmax_chunk instead of N x n_items.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lossbench.errors import LossbenchError
from lossbench.losses.base import LossInputs, LossParams


def full_softmax_ce(inputs: LossInputs, params: LossParams) -> Tensor:
    """-mean_n log softmax(h_n E[1:]^T)[y_n - 1]; N = 0 gives a connected zero."""
    hidden, targets, table = inputs.hidden, inputs.targets, inputs.item_embeddings
    item_rows = table[1:]  # (n_items, D): padding row 0 is never a class
    n_positions, n_items = hidden.shape[0], item_rows.shape[0]
    if n_positions * n_items <= params.softmax_max_logits:
        logits = hidden @ item_rows.T  # (N, n_items); autocast upcasts the CE itself to fp32
        per_position = F.cross_entropy(logits, targets - 1, reduction="none")
    else:
        log_norm = chunked_logsumexp(hidden, item_rows, params.softmax_chunk)  # (N,) fp32+
        target_logits = (hidden * table[targets]).sum(-1)  # (N,)
        per_position = log_norm - target_logits.to(log_norm.dtype)
    return per_position.sum() / max(n_positions, 1)


def chunked_logsumexp(hidden: Tensor, item_rows: Tensor, chunk: int) -> Tensor:
    """(N,) logsumexp_i (hidden @ item_rows.T)[:, i], `chunk` rows at a time.

    Differentiable in both inputs. The matmuls run in the autocast dtype when autocast is on
    (else the inputs' dtype); the log-sum-exp is accumulated in at least float32.
    """
    if chunk < 1:
        raise LossbenchError(f"softmax_chunk must be >= 1, got {chunk}")
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type) and hidden.dtype != torch.float64:
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = torch.promote_types(hidden.dtype, item_rows.dtype)
    result: Tensor = _ChunkedLogSumExp.apply(hidden, item_rows, chunk, compute_dtype)
    return result


def _chunk_logits(hidden: Tensor, item_rows: Tensor, start: int, chunk: int) -> Tensor:
    """(N, C) logits of items start..start+C, matmul in hidden's dtype, result in fp32+."""
    rows = item_rows[start : start + chunk].to(hidden.dtype)  # (C, D)
    return (hidden @ rows.T).to(torch.promote_types(hidden.dtype, torch.float32))


Grads = tuple[Tensor | None, Tensor | None, None, None]


class _ChunkedLogSumExp(torch.autograd.Function):
    """Forward: per-chunk logsumexp, then logsumexp over chunks. Backward: recompute each
    chunk's logits and push softmax * grad into both inputs; nothing N x n_items is kept."""

    @staticmethod
    def forward(
        ctx: Any, hidden: Tensor, item_rows: Tensor, chunk: int, compute_dtype: torch.dtype
    ) -> Tensor:
        starts = range(0, item_rows.shape[0], chunk)
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden.to(compute_dtype)  # (N, D)
            per_chunk = [torch.logsumexp(_chunk_logits(h, item_rows, s, chunk), 1) for s in starts]
            log_norm = torch.logsumexp(torch.stack(per_chunk, dim=1), dim=1)  # (N,)
        ctx.save_for_backward(hidden, item_rows, log_norm)
        ctx.chunk = chunk
        ctx.compute_dtype = compute_dtype
        return log_norm

    @staticmethod
    def backward(ctx: Any, grad_log_norm: Tensor) -> Grads:
        hidden, item_rows, log_norm = ctx.saved_tensors
        chunk, compute_dtype = ctx.chunk, ctx.compute_dtype
        need_hidden, need_rows = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.zeros_like(hidden, dtype=log_norm.dtype) if need_hidden else None
        grad_rows = torch.empty_like(item_rows) if need_rows else None
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden.to(compute_dtype)  # (N, D)
            upstream = grad_log_norm.to(log_norm.dtype).unsqueeze(1)  # (N, 1)
            for start in range(0, item_rows.shape[0], chunk):
                rows = item_rows[start : start + chunk].to(compute_dtype)  # (C, D)
                logits = _chunk_logits(h, item_rows, start, chunk)  # (N, C), recomputed
                # d logsumexp / d logits = softmax; times the upstream gradient of each row.
                weights = torch.exp(logits - log_norm.unsqueeze(1)) * upstream
                weights = weights.to(compute_dtype)  # (N, C)
                if grad_hidden is not None:
                    grad_hidden += weights @ rows  # (N, D), accumulated in fp32 or wider
                if grad_rows is not None:
                    grad_rows[start : start + chunk] = weights.T @ h  # (C, D)
        if grad_hidden is not None:
            grad_hidden = grad_hidden.to(hidden.dtype)
        return grad_hidden, grad_rows, None, None
