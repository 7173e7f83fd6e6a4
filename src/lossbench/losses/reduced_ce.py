"""Reduced Cross-Entropy (`rece`): full softmax CE approximated on the logits that
locality-sensitive hashing says are large, chunk by chunk, with duplicates counted once.

Gusak, Mezentsev, Oseledets, Frolov, "RECE: Reduced Cross-Entropy Loss for Large-Catalogue
Sequential Recommenders", CIKM 2024 (arXiv 2408.02354); the authors' code is dalibra/RECE
(`model.py`, `rece_forward`). Per step and per hashing round:

1. draw n_b random directions; every hidden state and every item goes to the bucket of its
   largest projection (argmax), and both are sorted by bucket;
2. the sorted positions and items are cut into n_b chunks each (c_x = N / n_b positions,
   c_y = n_items / n_b items, padded); position chunk k scores item chunks k - e .. k + e
   (e = `rece_extra_chunks`), so a position meets the items hashed near it;
3. over all rounds, a position's candidates form one softmax with its positive: an item found
   in m rounds (or m neighbouring windows) enters once, its logit lowered by log m, and the
   positive's own id and the padding never enter as negatives.

Defaults are the authors' Kindle Store setting (rounds 8, one extra chunk each side) with their
bucket rule n_b = sqrt(4 (1 + 2e) min(N, n_items)), which balances the projections' memory
(rounds x n_b x max(N, n_items)) against the logits' (rounds x N x (1 + 2e) n_items / n_b).
lossbench differs only in mechanics: the projections of the catalogue are taken in item chunks,
each round's logits are recomputed in backward rather than kept (memory of one round), and the
duplicate count of a (position, item) pair is read from the chunk indices of every round rather
than by sorting all candidates. Within a bucket, positions and items are ordered by their
projection, so the loss does not depend on the order of the batch's positions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from lossbench.losses.base import LossInputs, LossParams
from lossbench.losses.scalable_ce import TOPK_LOGITS, require_generator


def rece_buckets(n_positions: int, n_items: int, extra_chunks: int) -> int:
    """The authors' n_b = int(sqrt(4 (1 + 2e) min(N, n_items))), at least 1."""
    return max(1, int(math.sqrt(4.0 * (1 + 2 * extra_chunks) * min(n_positions, n_items))))


def rece(inputs: LossInputs, params: LossParams) -> Tensor:
    """-mean_n log softmax over [s(y_n), candidates of n from every round, each once][0]."""
    hidden, targets, table = inputs.hidden, inputs.targets, inputs.item_embeddings
    n_positions, n_items = hidden.shape[0], table.shape[0] - 1
    if n_positions == 0:
        return hidden.sum() * 0.0  # connected zero
    generator = require_generator(inputs, "rece")
    extra = params.rece_extra_chunks
    n_buckets = params.rece_buckets or rece_buckets(n_positions, n_items, extra)
    n_buckets = max(1, min(n_buckets, n_positions, n_items))
    with torch.no_grad():
        directions = torch.randn(
            params.rece_rounds,
            n_buckets,
            hidden.shape[1],
            generator=generator,
            device=hidden.device,
            dtype=hidden.dtype,
        )
        layout = _Layout.build(hidden.detach(), table.detach()[1:], directions, extra)
        rounds = [_duplicates(layout, r, targets) for r in range(params.rece_rounds)]
    positive = (hidden * table[targets]).sum(-1)  # (N,)
    # Each round's logits are recomputed in backward: memory of one round's, not all.
    log_norms = [
        checkpoint(_round_log_norm, hidden, table, *round_, use_reentrant=False)
        for round_ in rounds
    ]  # each (N,): the round's candidates, duplicates counted
    everything = torch.stack([positive, *log_norms], dim=0)  # (1 + rounds, N)
    return (torch.logsumexp(everything, dim=0) - positive).mean()


class _Layout:
    """Every round's sorted positions and items, cut into chunks (all int64 index tensors)."""

    def __init__(
        self, x_sorted: Tensor, y_sorted: Tensor, x_chunk: Tensor, y_chunk: Tensor, extra: int
    ) -> None:
        self.x_sorted = x_sorted  # (R, n_b, c_x) position rows; N = padding
        self.y_sorted = y_sorted  # (R, n_b, c_y) item ids (1-based); 0 = padding
        self.x_chunk = x_chunk  # (R, N + 1) chunk of each position row in each round
        self.y_chunk = y_chunk  # (R, n_items + 1) chunk of each item id in each round
        self.extra = extra

    @staticmethod
    def build(hidden: Tensor, item_rows: Tensor, directions: Tensor, extra: int) -> _Layout:
        rounds, n_buckets = directions.shape[0], directions.shape[1]
        x_sorted, x_chunk = _sorted_chunks(
            directions @ hidden.T, n_buckets, pad=hidden.shape[0]
        )  # (R, n_b, c_x), (R, N + 1)
        y_bucket, y_value = _argmax_buckets(directions, item_rows)  # (R, V) each
        y_sorted, y_chunk = _sorted_chunks_from(y_bucket, y_value, n_buckets, pad=-1)
        # Items as 1-based ids (padding -1 -> 0); the chunk of id 0 is never read.
        y_sorted = y_sorted + 1
        y_chunk = torch.cat([y_chunk.new_full((rounds, 1), -1), y_chunk[:, :-1]], dim=1)
        # int32 chunk numbers: the duplicate count compares N x W pairs per round.
        return _Layout(x_sorted, y_sorted, x_chunk.int(), y_chunk.int(), extra)

    def window(self, r: int) -> Tensor:
        """(n_b, (1 + 2e) c_y) item ids each position chunk scores in round r (0: none)."""
        y = self.y_sorted[r]  # (n_b, c_y)
        padded = torch.nn.functional.pad(y, (0, 0, self.extra, self.extra))  # (n_b + 2e, c_y)
        windows = padded.unfold(0, 1 + 2 * self.extra, 1)  # (n_b, c_y, 1 + 2e)
        return windows.transpose(1, 2).reshape(y.shape[0], -1)


def _argmax_buckets(directions: Tensor, item_rows: Tensor) -> tuple[Tensor, Tensor]:
    """(R, V) bucket and largest projection of every item, in item chunks."""
    rounds, n_buckets = directions.shape[0], directions.shape[1]
    chunk = max(1, TOPK_LOGITS // (rounds * n_buckets))
    buckets, values = [], []
    for start in range(0, item_rows.shape[0], chunk):
        projections = directions @ item_rows[start : start + chunk].T  # (R, n_b, c)
        value, bucket = projections.max(dim=1)
        buckets.append(bucket)
        values.append(value)
    return torch.cat(buckets, dim=1), torch.cat(values, dim=1)


def _sorted_chunks(projections: Tensor, n_buckets: int, pad: int) -> tuple[Tensor, Tensor]:
    value, bucket = projections.max(dim=1)  # (R, N)
    return _sorted_chunks_from(bucket, value, n_buckets, pad)


def _sorted_chunks_from(
    bucket: Tensor, value: Tensor, n_buckets: int, pad: int
) -> tuple[Tensor, Tensor]:
    """Rows sorted by (bucket, projection), padded with `pad` to n_b chunks of equal size:
    (R, n_b, c) sorted rows and (R, rows + 1) each row's chunk (last entry: padding's)."""
    rounds, n_rows = bucket.shape
    size = -(-n_rows // n_buckets)  # c
    by_value = torch.argsort(value, dim=1, descending=True, stable=True)
    by_bucket = torch.argsort(bucket.gather(1, by_value), dim=1, stable=True)
    order = by_value.gather(1, by_bucket)  # (R, rows): by bucket, then projection
    padded = order.new_full((rounds, n_buckets * size), pad)
    padded[:, :n_rows] = order
    chunk_of = order.new_empty((rounds, n_rows + 1))
    chunk_of[:, -1] = -1
    slots = torch.arange(n_rows, device=order.device).expand(rounds, -1) // size
    chunk_of.scatter_(1, order, slots)
    return padded.view(rounds, n_buckets, size), chunk_of


def _round_log_norm(
    hidden: Tensor, table: Tensor, rows: Tensor, items: Tensor, counts: Tensor
) -> Tensor:
    """(N,) logsumexp over one round's candidates of each position, each lowered by log of
    the number of rounds that pair them (`counts`, 0: not a candidate); -inf for positions
    without one. rows (n_b, c_x) position rows (N: padding), items (n_b, W) ids (0: none)."""
    n_positions = hidden.shape[0]
    with torch.no_grad():
        log_count = counts.to(hidden.dtype).log_()  # (n_b, c_x, W)
        log_count.masked_fill_(counts == 0, float("inf"))  # no candidate: logit -inf
        # A slot with no candidate at all: its logsumexp is -inf, whose gradient is NaN.
        empty = (counts == 0).all(dim=2)  # (n_b, c_x)
    h = hidden[rows.clamp(max=n_positions - 1)]  # (n_b, c_x, D)
    logits = h @ table[items].transpose(1, 2) - log_count  # (n_b, c_x, W)
    logits = logits.masked_fill(empty.unsqueeze(2), 0.0)
    per_slot = torch.logsumexp(logits, dim=2).masked_fill(empty, float("-inf")).reshape(-1)
    result = per_slot.new_full((n_positions + 1,), float("-inf"))
    result = result.scatter(0, rows.reshape(-1), per_slot)
    return result[:n_positions]


def _duplicates(layout: _Layout, r: int, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Round r's position rows (n_b, c_x), candidate ids (n_b, W) and, per pair, in how many
    rounds the two meet (chunks at most e apart), int8 (n_b, c_x, W); 0 where the candidate
    is padding or the position's own positive. Computed once, kept for backward (1 byte a
    logit, where recomputing it would cost `rounds` comparisons a logit)."""
    rows = layout.x_sorted[r]  # (n_b, c_x), N = padding
    items = layout.window(r)  # (n_b, W), 0 = none
    small = torch.int8 if len(layout.x_chunk) < 128 else torch.int16  # counts <= rounds
    count = torch.zeros(
        rows.shape[0], rows.shape[1], items.shape[1], dtype=small, device=rows.device
    )
    for x_chunk, y_chunk in zip(layout.x_chunk, layout.y_chunk, strict=True):
        apart = x_chunk[rows].unsqueeze(2) - y_chunk[items].unsqueeze(1)  # (n_b, c_x, W)
        count += apart.abs_() <= layout.extra
    own = targets[rows.clamp(max=targets.shape[0] - 1)].unsqueeze(2) == items.unsqueeze(1)
    count.masked_fill_(own | (items == 0).unsqueeze(1), 0)
    return rows, items, count
