"""The full softmax's log-sum-exp for huge catalogues: item chunks, recomputed in backward.

For catalogues too large for the fused path (1M items), the (N, items) logits are taken a
chunk of items at a time: forward keeps only one log-sum-exp per block of items, backward
recomputes each chunk's logits and pushes the softmax into both inputs. Nothing N x n_items
is kept. As in the fused path, all arithmetic but the chunk's logits matmul runs block by
block, on blocks of `item_block(N)` items that the chunk never changes (the transcendental
functions only ever see freshly allocated, contiguous block tensors), so the chunk changes
speed and memory, never bits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lossbench.errors import LossbenchError

# A block of items holds about this many logits (by device type, as the fused path's
# blocks), and a multiple of ITEM_ALIGN items.
ITEM_BLOCK_LOGITS = {"cuda": 1 << 26}
DEFAULT_ITEM_BLOCK_LOGITS = 1 << 20
ITEM_ALIGN = 256


def item_block(n_positions: int, device: torch.device | None = None) -> int:
    """Items per block for N positions: about `ITEM_BLOCK_LOGITS` logits, a multiple of
    `ITEM_ALIGN` (on CPU, 6,400 positions: 256 items; 256 positions: 4,096)."""
    logits = DEFAULT_ITEM_BLOCK_LOGITS
    if device is not None:
        logits = ITEM_BLOCK_LOGITS.get(device.type, DEFAULT_ITEM_BLOCK_LOGITS)
    items = logits // max(n_positions, 1)
    return max(ITEM_ALIGN, items - items % ITEM_ALIGN)


def chunked_logsumexp(hidden: Tensor, item_rows: Tensor, chunk: int, block: int) -> Tensor:
    """(N,) logsumexp_i (hidden @ item_rows.T)[:, i], about `chunk` items at a time.

    The arithmetic is set by `block` alone: one log-sum-exp per block of items, then one over
    the blocks, and both gradients block by block; a chunk is a whole number of blocks (at
    least one). Differentiable in both inputs. The matmuls run in the autocast dtype when
    autocast is on (else the inputs' dtype); the log-sum-exp is accumulated in at least fp32.
    """
    if chunk < 1 or block < 1:
        raise LossbenchError(f"softmax_chunk must be >= 1, got {min(chunk, block)}")
    chunk = max(block, chunk - chunk % block)
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type) and hidden.dtype != torch.float64:
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = torch.promote_types(hidden.dtype, item_rows.dtype)
    result: Tensor = _ChunkedLogSumExp.apply(hidden, item_rows, chunk, block, compute_dtype)
    return result


def _blocks(start: int, stop: int, block: int) -> list[tuple[slice, slice]]:
    """(columns within the chunk, global items) of each block of items start..stop."""
    return [
        (slice(at - start, min(at + block, stop) - start), slice(at, min(at + block, stop)))
        for at in range(start, stop, block)
    ]


Grads = tuple[Tensor | None, Tensor | None, None, None, None]


class _ChunkedLogSumExp(torch.autograd.Function):
    """Forward: per-block logsumexp, then logsumexp over blocks. Backward: recompute each
    chunk's logits and push softmax * grad into both inputs; nothing N x n_items is kept."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        item_rows: Tensor,
        chunk: int,
        block: int,
        compute_dtype: torch.dtype,
    ) -> Tensor:
        n_items = item_rows.shape[0]
        accumulate = torch.promote_types(compute_dtype, torch.float32)
        with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
            h = hidden.detach().to(compute_dtype)  # (N, D)
            # The table cast once per step (fp32: the table itself), kept for backward.
            rows_compute = item_rows.detach().to(compute_dtype)  # (n_items, D)
            # One preallocated (blocks, N) result: small per-chunk results interleaved with the
            # big per-chunk temporaries fragment the heap (1M items: 2.5 GB of RSS).
            per_block = torch.empty(
                -(-n_items // block), h.shape[0], dtype=accumulate, device=h.device
            )
            for start in range(0, n_items, chunk):
                stop = min(start + chunk, n_items)
                logits = h @ rows_compute[start:stop].T  # (N, C): one matmul
                for columns, items in _blocks(start, stop, block):
                    # max and subtract are exact; exp and the sum see a fresh (N, b) tensor.
                    block_logits = logits[:, columns].to(accumulate)
                    torch.logsumexp(block_logits, 1, out=per_block[items.start // block])
            log_norm = torch.logsumexp(per_block, dim=0)  # (N,)
        cast = rows_compute if rows_compute.dtype != item_rows.dtype else None
        ctx.save_for_backward(hidden, item_rows, log_norm, cast)
        ctx.sizes = (chunk, block)
        ctx.compute_dtype = compute_dtype
        return log_norm

    @staticmethod
    def backward(ctx: Any, grad_log_norm: Tensor) -> Grads:
        hidden, item_rows, log_norm, cast = ctx.saved_tensors
        rows_compute = item_rows.detach() if cast is None else cast  # (n_items, D)
        (chunk, block), compute_dtype = ctx.sizes, ctx.compute_dtype
        need_hidden, need_rows = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.zeros_like(hidden, dtype=log_norm.dtype) if need_hidden else None
        grad_rows = torch.empty_like(item_rows) if need_rows else None
        with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
            h = hidden.detach().to(compute_dtype)  # (N, D)
            upstream = grad_log_norm.to(log_norm.dtype).unsqueeze(1)  # (N, 1)
            for start in range(0, item_rows.shape[0], chunk):
                stop = min(start + chunk, item_rows.shape[0])
                rows = rows_compute[start:stop]  # (C, D)
                logits = h @ rows.T  # (N, C), recomputed
                for columns, items in _blocks(start, stop, block):
                    # d logsumexp / d logits = softmax; times the upstream gradient of each row.
                    shifted = logits[:, columns].to(log_norm.dtype) - log_norm.unsqueeze(1)
                    weights = (shifted.exp_() * upstream).to(compute_dtype)  # (N, b)
                    if grad_hidden is not None:  # (N, D), in fp32 or wider
                        grad_hidden += weights @ rows[columns]
                    if grad_rows is not None:
                        grad_rows[items] = weights.T @ h  # (b, D)
        if grad_hidden is not None:
            grad_hidden = grad_hidden.to(hidden.dtype)
        return grad_hidden, grad_rows, None, None, None
