"""Softmax cross-entropy over the full catalogue (`ce`, `improved`, `mlm`).

Classes are items 1..n_items only: the padding row 0 and any special ids (BERT4Rec's mask)
are never scored. Nothing N x n_items is ever materialized; about `softmax_chunk` logits
exist at once (at least one block's), so peak memory is set by the chunk, not by positions
x catalogue:

- usual catalogues (up to `max_fused_items`): one pass over position chunks computes each
  chunk's logits, loss and both gradients at once (the softmax minus the one-hot target,
  pushed into the hidden states and the item table) while the chunk is still in cache;
  backward only scales them. Three matmuls, no recomputation, and about twice as fast as
  `F.cross_entropy` on CPU, which writes, fills and re-reads N x n_items.
- huge catalogues: the log-sum-exp runs over item chunks (`item_chunks.py`), recomputing
  each chunk's logits in backward.

The chunk changes speed, never results. Which path runs depends on the catalogue alone, and
all arithmetic but one matmul happens block by block, on blocks set by the shapes (about
`BLOCK_LOGITS` logits each: on CPU 256 positions of lastfm, 64 of beauty-s3rec), never by the
chunk: the sums that cross chunks (the item table's gradient over positions), the matmuls
with a long inner dimension (whose threads may split it), and the exp2 and column sums,
whose vectorized kernels round their tail elements differently from the rest (so where a
tensor, or a thread's share of it, ends must not move with the chunk). A chunk is a whole
number of blocks; only its logits come from one matmul, each logit its own length-D dot
product (in fp64, whose MKL matmul rounds a logit differently by the number of columns, a
chunk is one block). Loss and both gradients are equal to the last bit whatever the chunk
(tested), so training can pick the chunk per machine (`lossbench.training.softmax_chunk`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lossbench.errors import LossbenchError
from lossbench.losses.base import LossInputs, LossParams
from lossbench.losses.item_chunks import chunked_logsumexp, item_block

# A block of positions holds about this many logits, by device type: on CPU 1M fp32 logits
# (4 MB) stay in cache; a GPU needs large kernels (64M: a whole batch at once).
BLOCK_LOGITS = {"cuda": 1 << 26}
DEFAULT_BLOCK_LOGITS = 1 << 20
# Positions per block are a multiple of this (and at least this many): the (V, rows)
# logits then start every column on a cache line, and the three matmuls run up to 40%
# faster on CPU (beauty-s3rec: 86 rows 61 GFLOP/s, 64 rows 94).
FUSED_ALIGN = 64
# Catalogues up to this size take the fused path, by device type; above it, item chunks.
MAX_FUSED_ITEMS = {"cuda": 1 << 20}
DEFAULT_MAX_FUSED_ITEMS = 1 << 15
# Spare columns in each row of the logits buffer: a block is then never a contiguous
# tensor (a contiguous one is split into vector runs differently from a strided one).
_ROW_PAD = 16

# Every |logit| is kept below this: exp then stays within float32's normal range
# (e^-80 .. e^80, no overflow, no denormals) and the sum of the catalogue's terms too.
_EXP_LIMIT = 80.0
_LOG2_E = 1.0 / math.log(2.0)
_LN_2 = math.log(2.0)


def softmax_chunk_for(device: torch.device, chunk: int | None) -> int:
    """Logits held at once: `chunk` when given, else 1M (4 MB, cache-sized) on CPU, 64M on GPU.
    Training resolves None to the size measured fastest on the machine's CPU first."""
    if chunk is not None:
        if chunk < 1:
            raise LossbenchError(f"softmax_chunk must be >= 1, got {chunk}")
        return chunk
    return 1 << 26 if device.type == "cuda" else 1 << 20


def max_fused_items(device: torch.device) -> int:
    """The largest catalogue the fused path takes on `device` (the chunk plays no part)."""
    return MAX_FUSED_ITEMS.get(device.type, DEFAULT_MAX_FUSED_ITEMS)


def full_softmax_ce(inputs: LossInputs, params: LossParams) -> Tensor:
    """-mean_n log softmax(h_n E[1:]^T)[y_n - 1]; N = 0 gives a connected zero."""
    hidden, targets, table = inputs.hidden, inputs.targets, inputs.item_embeddings
    n_positions, n_items = hidden.shape[0], table.shape[0] - 1
    chunk = softmax_chunk_for(hidden.device, params.softmax_chunk)
    compute_dtype = _compute_dtype(hidden, table)
    if n_items <= max_fused_items(hidden.device):
        block = fused_block(n_items, hidden.device, compute_dtype)
        rows = max(block, chunk // max(n_items, 1) // block * block)  # whole blocks
        if compute_dtype == torch.float64:
            rows = block  # MKL's fp64 matmul rounds a logit by how many columns it computes
        if compute_dtype.itemsize == 2:
            rows = block  # one contiguous block per chunk: oneDNN copies strided operands
        # The whole table goes in (row 0 gets a zero gradient): a `table[1:]` slice would cost
        # a table-sized zero fill and copy in its backward, every step.
        total: Tensor = _FusedSoftmaxCE.apply(hidden, table, targets, rows, block, compute_dtype)
        return total / max(n_positions, 1)
    item_rows = table[1:]  # (n_items, D): padding row 0 is never a class
    block = item_block(n_positions, hidden.device)
    items_per_chunk = max(1, chunk // max(n_positions, 1))
    if compute_dtype == torch.float64:
        items_per_chunk = block  # as above
    log_norm = chunked_logsumexp(hidden, item_rows, items_per_chunk, block)  # (N,)
    target_logits = (hidden * table[targets]).sum(-1)  # (N,)
    per_position = log_norm - target_logits.to(log_norm.dtype)
    return per_position.sum() / max(n_positions, 1)


def fused_block(
    n_items: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> int:
    """Positions per block of the fused path: about `BLOCK_LOGITS` logits, a multiple of
    `FUSED_ALIGN` (on CPU, lastfm's 3,646 items: 256; beauty-s3rec's 12,101: 64). 16-bit
    logits take four times as many per block (beauty-s3rec: 320 positions): the per-block
    (V, D) work (the item table's gradient, rounded from bf16 and summed in fp32) is spread
    over more positions; a bf16 beauty-s3rec loss step took 38.6 ms at 128 positions, 33.0 at
    320 and 32.1 at 640 on an AMX Xeon, one thread."""
    logits = BLOCK_LOGITS.get(device.type, DEFAULT_BLOCK_LOGITS) if device else DEFAULT_BLOCK_LOGITS
    if dtype.itemsize == 2:
        logits *= 4
    rows = logits // max(n_items, 1)
    return max(FUSED_ALIGN, rows - rows % FUSED_ALIGN)


def fused_rows(chunk: int, n_items: int) -> int:
    """Positions per fused chunk of about `chunk` logits on CPU: a whole number of blocks, at
    least one (1M logits: lastfm 256 positions, beauty-s3rec 64; 4M: 1,024 and 320)."""
    block = fused_block(n_items)
    return max(block, chunk // max(n_items, 1) // block * block)


def _compute_dtype(hidden: Tensor, item_rows: Tensor) -> torch.dtype:
    """The matmuls' dtype: autocast's when it is on (fp64 inputs excepted), else the inputs'."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type) and hidden.dtype != torch.float64:
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(hidden.dtype, item_rows.dtype)


class _FusedSoftmaxCE(torch.autograd.Function):
    """sum_n (logsumexp_i z_ni - z_n,y_n) with z = hidden @ table[1:].T, `rows` positions at
    a time. Forward also computes the gradients (each chunk's logits are used while hot);
    backward multiplies them by the upstream scalar.

    Per block, w = exp(z - shift) with norm = sum_i w; d loss / d z = w / norm - one_hot,
    and the 1 / norm is applied to the small (b, D) matmul operands, not to (V, b). The
    one-hot part and the target logits are done once for all positions after the loop (a
    gather and an index_add on (N, D) rows), so each block runs as few operations as possible.
    shift is the column max (any logits), or 0 on CPU when a bound shows that no logit can
    leave exp's normal range: that skips two of the four passes over the chunk (max,
    subtract), about 5% of the loss on beauty-s3rec, where matmuls take three quarters."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        table: Tensor,
        targets: Tensor,
        rows: int,
        block: int,
        compute_dtype: torch.dtype,
    ) -> Tensor:
        accumulate = torch.promote_types(compute_dtype, torch.float32)  # softmax in fp32+
        want_grads = hidden.requires_grad or table.requires_grad
        with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
            h = hidden.detach().to(compute_dtype)  # (N, D)
            # Logits in base 2 (z * log2 e, scaled on the small operand, before any cast):
            # exp2 is ~1.7x faster than exp on CPU and w = 2^(z log2 e) = e^z all the same.
            h_base2 = (hidden.detach().to(accumulate) * _LOG2_E).to(compute_dtype)  # (N, D)
            items = table.detach()[1:].to(compute_dtype)  # (V, D): row 0 is never a class
            n_positions, n_items = h.shape[0], items.shape[0]
            if compute_dtype.itemsize == 2 and h.device.type == "cpu":
                h, h_base2 = _pad_rows(h), _pad_rows(h_base2)  # (N', D), N' >= N
            log_norms = torch.empty(h.shape[0], dtype=accumulate, device=h.device)  # (N',)
            grad_hidden = torch.empty_like(h, dtype=accumulate) if want_grads else None
            grad_table = torch.zeros_like(table, dtype=accumulate) if want_grads else None
            grad_items = grad_table[1:] if grad_table is not None else None  # (V, D) view
            unshifted = _exp_cannot_overflow(h, items)
            # Every chunk's logits go to this one buffer: a fresh (V, n) tensor per chunk
            # (allocated while the previous chunk's is still alive) made the loss ~15%
            # slower on CPU, its memory cold in cache.
            pad = 0 if compute_dtype.itemsize == 2 else _ROW_PAD
            buffer = torch.empty(n_items * (rows + pad), dtype=compute_dtype, device=h.device)
            for start in range(0, h.shape[0], rows):
                stop = min(start + rows, h.shape[0])
                if pad:
                    logits = buffer.view(n_items, rows + pad)[:, : stop - start]  # (V, n)
                else:  # 16-bit: (V, n) contiguous, the last block's too
                    logits = buffer[: n_items * (stop - start)].view(n_items, stop - start)
                # The chunk's one wide matmul: each logit its own length-D dot product.
                torch.mm(items, h_base2[start:stop].T, out=logits)  # base 2
                for part in _parts(start, stop, block):
                    at = slice(start + part.start, start + part.stop)  # global positions
                    block_logits = logits[:, part]  # (V, b): contiguous only in 16 bits
                    weights, norm = _block_weights(block_logits, log_norms[at], unshifted)
                    if grad_hidden is not None and grad_items is not None:
                        _block_grads(weights, norm, items, h[at], grad_hidden[at], grad_items)
            log_norms = log_norms[:n_positions]  # padding rows' normalizers dropped
            if grad_hidden is not None:
                grad_hidden = grad_hidden[:n_positions]
            target_rows = table.detach()[targets].to(accumulate)  # (N, D)
            h_wide = hidden.detach().to(accumulate)
            total = (log_norms - (h_wide * target_rows).sum(1)).sum()
            if grad_hidden is not None and grad_table is not None:
                grad_hidden -= target_rows  # the one-hot part: d z_y / d h = e_y
                grad_table.index_add_(0, targets, h_wide, alpha=-1.0)  # d z_y / d e_y = h
        ctx.save_for_backward(
            *(g for g in (grad_hidden, grad_table) if g is not None),
        )
        ctx.dtypes = (hidden.dtype, table.dtype)
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: Tensor) -> tuple[Tensor | None, ...]:
        grad_hidden, grad_table = ctx.saved_tensors
        hidden_dtype, table_dtype = ctx.dtypes
        scale = grad_total.to(grad_hidden.dtype)
        return (
            (grad_hidden * scale).to(hidden_dtype) if ctx.needs_input_grad[0] else None,
            (grad_table * scale).to(table_dtype) if ctx.needs_input_grad[1] else None,
            None,
            None,
            None,
            None,
        )


def _pad_rows(h: Tensor) -> Tensor:
    """(N, D) -> (N', D): zero rows up to a multiple of `FUSED_ALIGN`. oneDNN (16-bit matmuls
    on CPU) compiles a kernel per new shape, and a ragged last block met a new one every step.
    A zero row's logits are 0: its normalizer and hidden gradient are dropped, and it adds
    nothing to the item table's gradient (its (b, D) operand is zero)."""
    spare = -h.shape[0] % FUSED_ALIGN
    return torch.nn.functional.pad(h, (0, 0, 0, spare)) if spare else h


def _parts(start: int, stop: int, block: int) -> list[slice]:
    """The blocks of positions start..stop (a chunk starts on a block), relative to start."""
    return [slice(at, min(at + block, stop - start)) for at in range(0, stop - start, block)]


def _exp_cannot_overflow(hidden: Tensor, items: Tensor) -> bool:
    """On CPU: is max_n |h_n| * max_i |e_i| (a bound on every |logit|, Cauchy-Schwarz) small
    enough that exp(z) and its sum over the catalogue stay normal floats? Two cheap
    reductions; the host sync they need is free on CPU (a GPU always shifts by the max)."""
    if hidden.device.type != "cpu" or hidden.shape[0] == 0 or items.shape[0] == 0:
        return False
    bound = float(hidden.detach().norm(dim=1).max()) * float(items.detach().norm(dim=1).max())
    return bound + math.log(items.shape[0]) < _EXP_LIMIT


def _block_weights(logits: Tensor, log_norm: Tensor, unshifted: bool) -> tuple[Tensor, Tensor]:
    """From (V, b) logits in base 2 (z log2 e), overwritten: w = exp(z - shift) (V, b) and
    its column sums (1, b); the natural-log normalizers shift + log(sum) go to `log_norm`
    (b,)."""
    if unshifted:  # |logits| < _EXP_LIMIT - log V: exp needs no shift
        weights = logits.exp2_()  # in place, (V, b)
        norm = _column_sums(weights, log_norm.dtype)  # (1, b)
        torch.log(norm[0], out=log_norm)
        return weights, norm
    shift = logits.amax(0, keepdim=True)  # (1, b), base 2
    weights = logits.sub_(shift).exp2_()  # in place: (V, b), max 1
    norm = _column_sums(weights, log_norm.dtype)  # (1, b), >= 1
    torch.add(norm[0].log(), shift[0], alpha=_LN_2, out=log_norm)
    return weights, norm


def _column_sums(weights: Tensor, accumulate: torch.dtype) -> Tensor:
    """(V, b) -> (1, b) column sums in `accumulate`. bf16 weights (exp2 ran in fp32 inside the
    kernel and rounded once; bf16 has fp32's exponent range, so nothing overflows) are summed
    by the bf16 kernel, which accumulates in fp32 and rounds the sum once (relative error
    below 2^-8, under the bf16 logits' own); asking for an fp32 sum would first copy the
    whole block to fp32, 5x slower."""
    if weights.dtype == accumulate:
        return weights.sum(0, keepdim=True)
    return weights.sum(0, keepdim=True).to(accumulate)


def _block_grads(
    weights: Tensor,
    norm: Tensor,
    items: Tensor,
    h: Tensor,
    grad_hidden: Tensor,
    grad_items: Tensor,
) -> None:
    """One block's share of the softmax part of both gradients, from its (V, b) weights and
    their (1, b) column sums: grad_hidden (b, D) = (w / norm)^T items, grad_items (V, D) +=
    (w / norm) h."""
    inverse = norm.reciprocal_().T  # (b, 1), fp32 or wider: scale the small (b, D) operands
    if weights.dtype == grad_items.dtype:  # fp32 / fp64
        torch.mm(weights.T, items, out=grad_hidden).mul_(inverse)
        grad_items.addmm_(weights, h * inverse)
    else:  # bf16 products (fp32 accumulation inside), scaled and summed in fp32
        torch.mul(weights.T @ items, inverse, out=grad_hidden)  # (b, D)
        grad_items += weights @ (h * inverse).to(weights.dtype)  # (V, D)


__all__ = ["chunked_logsumexp", "full_softmax_ce", "fused_block", "fused_rows"]
