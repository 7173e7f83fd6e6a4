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
   in m rounds enters once, and the positive's own id and the padding never enter as negatives.

Defaults are the authors' Kindle Store setting (rounds 8, one extra chunk each side) with their
bucket rule n_b = sqrt(4 (1 + 2e) min(N, n_items)), which balances the projections' memory
(rounds x n_b x max(N, n_items)) against the logits' (rounds x N x (1 + 2e) n_items / n_b).

lossbench computes the same loss with less memory and time: the candidate pairs of a round are
scored item chunk by item chunk (item chunk j against position chunks j - e .. j + e, the same
pairs as the authors' position-major windows, without copying each item 1 + 2e times), a few
item chunks at a time, and recomputed in backward instead of kept. Duplicates are counted by
letting a pair enter only in the first round that meets it, where the authors lower each of
its m copies by log m: the same sum, exp(s) once. The earlier rounds' pairs are found by a
binary search of each item's chunk among its window's positions (about N (1 + 2e)^2 c_y / n_b
pairs a round pair, never a comparison per logit). Within a bucket, positions and items are
ordered by their projection, so the loss does not depend on the order of the batch's positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lossbench.losses.base import LossInputs, LossParams
from lossbench.losses.scalable_ce import require_generator

# Logits of one block of item chunks (forward and backward hold about two such blocks).
BLOCK_LOGITS = 1 << 22
# Projections held at once while bucketing (2 MB: in cache for the max that follows).
PROJECTION_LOGITS = 1 << 19
# Devices on which the excluded pairs are listed once per step (a binary search with a host
# round trip); elsewhere each block compares its pairs' chunks in every earlier round.
LISTED_ON = frozenset({"cpu"})
FAR = 1 << 28  # the chunk of padding: never within e of a real chunk (int32 differences)


def rece_buckets(n_positions: int, n_items: int, extra_chunks: int) -> int:
    """The authors' n_b = int(sqrt(4 (1 + 2e) min(N, n_items))), at least 1."""
    return max(1, int(math.sqrt(4.0 * (1 + 2 * extra_chunks) * min(n_positions, n_items))))


def rece_memory_bytes(n_positions: int, n_items: int, dim: int, params: LossParams) -> int:
    """Bytes `rece` holds at its peak for N positions (fp32, beside the weights): the layout
    (about 20 bytes per item and round, 48 while sorting), the listed pairs met in an earlier
    round (under uniform hashing, N (1 + 2e)^2 c_y / n_b per round pair), one block of
    logits with its mask and item rows in forward and backward, the table's gradient."""
    rounds, extra = params.rece_rounds, params.rece_extra_chunks
    n_buckets = params.rece_buckets or rece_buckets(n_positions, n_items, extra)
    n_buckets = max(1, min(n_buckets, n_positions, n_items))
    size_x, size_y = -(-n_positions // n_buckets), -(-n_items // n_buckets)
    width = (1 + 2 * extra) * size_x
    met = n_positions * (1 + 2 * extra) ** 2 * size_y // n_buckets  # per round pair
    listed = 4 * (rounds * n_positions + rounds * (rounds - 1) // 2 * met)
    block = min(n_buckets, max(1, BLOCK_LOGITS // (size_y * width))) * size_y * width
    build = 28 * rounds * n_items + 8 * min(PROJECTION_LOGITS, n_items * rounds * n_buckets)
    steps = 10 * block + 8 * block * dim // width + 4 * n_items * dim
    return 20 * rounds * n_items + listed + 16 * 2 * met + max(build, steps)


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
        layout = Layout.build(hidden.detach(), table.detach()[1:], directions, extra)
        # On CPU the excluded pairs are listed once (a binary search, cheap); elsewhere each
        # block compares every pair's chunks (no host round trip inside the step).
        excluded = None
        if hidden.device.type in LISTED_ON:
            excluded = [layout.excluded(r, targets) for r in range(layout.rounds)]
    padded_targets = torch.cat([targets, targets.new_full((1,), -1)])  # row N: padding
    given = _Inputs(layout, padded_targets, excluded)
    per_position: Tensor = _ReducedCrossEntropy.apply(hidden, table, given)
    return per_position.mean()


@dataclass(frozen=True)
class Layout:
    """Every round's chunks. Round r scores item chunk j (`items[r, j]`, c_y ids, 0: padding)
    against its window `window[r, j]` ((1 + 2e) c_x position rows, N: padding); a block of
    logits is (chunks, c_y, (1 + 2e) c_x)."""

    items: Tensor  # (R, n_b, c_y) int32 item ids, sorted by (bucket, projection)
    window: Tensor  # (R, n_b, W) int32 position rows of position chunks j - e .. j + e
    x_chunk: Tensor  # (R, N + 1) int32 chunk of each position row (row N: FAR)
    x_slot: Tensor  # (R, N) int32 place of each position in its window of its own chunk
    y_chunk: Tensor  # (R, n_items + 1) int32 chunk of each item id (id 0: -FAR)
    y_slot: Tensor  # (R, n_items + 1) int32 place of each item in its chunk
    extra: int

    @property
    def rounds(self) -> int:
        return int(self.items.shape[0])

    @staticmethod
    def build(hidden: Tensor, item_rows: Tensor, directions: Tensor, extra: int) -> Layout:
        n_positions, n_buckets = hidden.shape[0], directions.shape[1]
        x_bucket, x_value = _argmax_buckets(directions, hidden)  # (R, N) each
        x_order, x_chunk, x_rank = _sorted_chunks(x_bucket, x_value, n_buckets)
        del x_bucket, x_value
        y_bucket, y_value = _argmax_buckets(directions, item_rows)  # (R, n_items) each
        y_order, y_chunk, y_rank = _sorted_chunks(y_bucket, y_value, n_buckets)
        del y_bucket, y_value
        size_x = -(-n_positions // n_buckets)
        size_y = -(-item_rows.shape[0] // n_buckets)
        rows = _padded(x_order, n_buckets * size_x, n_positions).view(-1, n_buckets, size_x)
        # Position chunks j - e .. j + e of each item chunk j, padding rows beyond the ends.
        edge = torch.nn.functional.pad(rows, (0, 0, extra, extra), value=n_positions)
        window = edge.unfold(1, n_buckets, 1).permute(0, 3, 1, 2).flatten(2)  # (R, n_b, W)
        items = _padded(y_order.add_(1), n_buckets * size_y, 0).view(-1, n_buckets, size_y)
        del y_order
        x_slot = extra * size_x + x_rank % size_x  # its place in the window of its own chunk
        y_slot = torch.nn.functional.pad(y_rank.remainder_(size_y), (1, 0))
        x_chunk = torch.nn.functional.pad(x_chunk, (0, 1), value=FAR)
        y_chunk = torch.nn.functional.pad(y_chunk, (1, 0), value=-FAR)
        return Layout(items, window, x_chunk, x_slot, y_chunk, y_slot, extra)

    def excluded(self, r: int, targets: Tensor) -> Tensor:
        """Sorted flat indices into round r's (n_b, c_y, W) logits of the pairs that do not
        enter: each position's positive, and every pair an earlier round already met."""
        size_y, width = self.items.shape[2], self.window.shape[2]
        # The positive: in its position's window when the chunks are at most e apart.
        j = self.y_chunk[r, targets].long()  # (N,)
        apart = self.x_chunk[r, :-1].long() - j  # (N,)
        near = apart.abs() <= self.extra
        slot = self.x_slot[r] + apart * (width // (1 + 2 * self.extra))
        flat = [((j * size_y + self.y_slot[r, targets]) * width + slot)[near]]
        for earlier in range(r):
            flat.append(self._met_before(r, earlier))
        listed = torch.cat(flat).sort().values
        # int32 where the round's logits allow (half the memory of the list).
        return listed.int() if self.items[r].numel() * width < 2**31 else listed

    def _met_before(self, r: int, earlier: int) -> Tensor:
        """Flat indices of round r's pairs whose chunks are at most e apart in round `earlier`:
        per item chunk, the window's positions sorted by their earlier chunk, and a binary
        search of each item's earlier chunk among them."""
        width = self.window.shape[2]
        position_chunks = _rows(self.x_chunk[earlier], self.window[r])  # (n_b, W)
        sorted_chunks, order = position_chunks.sort(dim=1)
        item_chunks = _rows(self.y_chunk[earlier], self.items[r])  # (n_b, c_y)
        low = torch.searchsorted(sorted_chunks, item_chunks - self.extra)
        high = torch.searchsorted(sorted_chunks, item_chunks + self.extra, right=True)
        counts = (high - low).reshape(-1)  # (n_b c_y,) positions met by each item slot
        item_slot = torch.repeat_interleave(counts)  # (P,) flat (j, t) of each pair
        if item_slot.numel() == 0:
            return item_slot
        first = torch.cumsum(counts, 0) - counts  # (n_b c_y,)
        within = torch.arange(item_slot.shape[0], device=counts.device) - first[item_slot]
        chunk = item_slot // self.items.shape[2]
        place = order.view(-1)[chunk * width + low.view(-1)[item_slot] + within]
        return item_slot * width + place


def _argmax_buckets(directions: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """(R, rows) bucket and largest projection of every row, in blocks of rows whose
    projections stay in cache (the max over them costs as much as the matmul)."""
    rounds, n_buckets, dim = directions.shape
    flat = directions.reshape(rounds * n_buckets, dim)
    block = max(1, PROJECTION_LOGITS // (rounds * n_buckets))
    buckets = torch.empty(rounds, rows.shape[0], dtype=torch.long, device=rows.device)
    values = torch.empty(rounds, rows.shape[0], dtype=rows.dtype, device=rows.device)
    for start in range(0, rows.shape[0], block):
        projections = rows[start : start + block] @ flat.T  # (b, R n_b)
        value, bucket = projections.view(-1, rounds, n_buckets).max(dim=2)  # (b, R)
        buckets[:, start : start + block] = bucket.T
        values[:, start : start + block] = value.T
    return buckets, values


def _sorted_chunks(bucket: Tensor, value: Tensor, n_buckets: int) -> tuple[Tensor, Tensor, Tensor]:
    """(R, rows) int32: rows sorted by (bucket, largest float32 projection first, row), the
    chunk of each row (n_b chunks of ceil(rows / n_b)) and its place in the order. Per round
    one stable sort of an int64 key: the bucket above the float32 bits mapped to an
    order-preserving int32, reversed."""
    n_rounds, n_rows = bucket.shape
    size = -(-n_rows // n_buckets)
    order = torch.empty(n_rounds, n_rows, dtype=torch.int32, device=bucket.device)
    ranks = torch.empty_like(order)
    places = torch.arange(n_rows, dtype=torch.int32, device=bucket.device)
    for r in range(n_rounds):
        key = value[r].float().view(torch.int32).long()  # (rows,)
        key ^= (key >> 63) & 0x7FFFFFFF  # negative floats: monotone in the float
        key.neg_().add_(0x7FFFFFFF + (bucket[r] << 32))  # low part in [0, 2^32): larger first
        round_order = torch.sort(key, stable=True).indices
        del key
        order[r] = round_order
        ranks[r].scatter_(0, round_order, places)
    return order, torch.div(ranks, size, rounding_mode="floor"), ranks


def _rows(source: Tensor, index: Tensor) -> Tensor:
    """source[index] for an index of any shape (index_select: a row copy, where advanced
    indexing is several times slower on CPU)."""
    return source.index_select(0, index.reshape(-1)).view(*index.shape, *source.shape[1:])


def _padded(order: Tensor, size: int, pad: int) -> Tensor:
    return torch.nn.functional.pad(order, (0, size - order.shape[1]), value=pad)


def _blocks(layout: Layout) -> list[tuple[int, int]]:
    """Ranges of item chunks whose logits fit in about `BLOCK_LOGITS`."""
    n_chunks, size_y, width = layout.items.shape[1], layout.items.shape[2], layout.window.shape[2]
    step = max(1, BLOCK_LOGITS // (size_y * width))
    return [(start, min(start + step, n_chunks)) for start in range(0, n_chunks, step)]


def _block_logits(
    h: Tensor, t: Tensor, inputs: _Inputs, r: int, block: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Round r's logits of item chunks block[0]..block[1] (b, c_y, W), -inf where a pair does
    not enter; with the window rows (b, W), their hidden states (b, W, D) and item rows
    (b, c_y, D). `h` has a zero row N for the padding."""
    layout, (start, stop) = inputs.layout, block
    items, rows = layout.items[r, start:stop], layout.window[r, start:stop]
    y, hs = _rows(t, items), _rows(h, rows)
    logits = torch.bmm(y, hs.transpose(1, 2))  # (b, c_y, W)
    logits.masked_fill_(_left_out(inputs, r, block, items, rows), float("-inf"))
    return logits, rows, hs, y


def _left_out(
    inputs: _Inputs, r: int, block: tuple[int, int], items: Tensor, rows: Tensor
) -> Tensor:
    """(b, c_y, W) True where a pair does not enter: padding, the positive, met before."""
    layout = inputs.layout
    if inputs.excluded is not None:
        size = items.shape[1] * rows.shape[1]  # logits of one item chunk
        excluded = inputs.excluded[r]
        bounds = torch.tensor(
            [block[0] * size, block[1] * size], dtype=excluded.dtype, device=excluded.device
        )
        low, high = torch.searchsorted(excluded, bounds).tolist()
        out = torch.zeros(items.shape[0] * size, dtype=torch.bool, device=items.device)
        out[(excluded[low:high] - block[0] * size).long()] = True
        out = out.view(items.shape[0], items.shape[1], rows.shape[1])
    else:
        out = _rows(inputs.targets, rows).unsqueeze(1) == items.unsqueeze(2)
        for earlier in range(r):
            y_chunk = _rows(layout.y_chunk[earlier], items).unsqueeze(2)  # (b, c_y, 1)
            x_chunk = _rows(layout.x_chunk[earlier], rows).unsqueeze(1)  # (b, 1, W)
            out |= (y_chunk - x_chunk).abs_() <= layout.extra
    out |= (items == 0).unsqueeze(2)
    return out


@dataclass(frozen=True)
class _Inputs:
    layout: Layout
    targets: Tensor  # (N + 1,) each row's positive; row N (padding): -1
    excluded: list[Tensor] | None  # per round `Layout.excluded`; None: compared per block


class _ReducedCrossEntropy(torch.autograd.Function):
    """(N,) per-position logsumexp([s(y_n), candidates]) - s(y_n). Forward keeps one
    log-sum-exp per (round, item chunk, window slot); backward recomputes each block."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, table: Tensor, inputs: _Inputs) -> Tensor:
        n_positions = hidden.shape[0]
        h = torch.cat([hidden.detach(), hidden.new_zeros(1, hidden.shape[1])])  # (N + 1, D)
        t = table.detach()
        layout = inputs.layout
        per_slot = []  # (b, W) each: a window slot's log-sum-exp over its item chunk
        for r in range(layout.rounds):
            for block in _blocks(layout):
                logits = _block_logits(h, t, inputs, r, block)[0]
                per_slot.append(torch.logsumexp(logits, dim=1))
        rows = layout.window.reshape(-1).long()  # the blocks' order
        candidates = _scatter_logsumexp(torch.cat(per_slot).reshape(-1), rows, n_positions + 1)
        targets = inputs.targets[:-1]
        positive = (h[:-1] * t[targets]).sum(-1)  # (N,)
        total = torch.logaddexp(positive, candidates[:n_positions])  # (N,)
        ctx.save_for_backward(hidden, table, total, positive)
        ctx.inputs = inputs
        return total - positive

    @staticmethod
    def backward(ctx: Any, upstream: Tensor) -> tuple[Tensor | None, ...]:
        hidden, table, total, positive = ctx.saved_tensors
        inputs: _Inputs = ctx.inputs
        layout, targets = inputs.layout, inputs.targets[:-1]
        h = torch.cat([hidden.detach(), hidden.new_zeros(1, hidden.shape[1])])  # (N + 1, D)
        t = table.detach()
        # The padding row: a finite normaliser and no upstream gradient.
        norm = torch.cat([total, total.new_zeros(1)])  # (N + 1,)
        scale = torch.cat([upstream, upstream.new_zeros(1)])  # (N + 1,)
        # d/d s(y_n) = p(y_n) - 1, times the upstream gradient.
        weight = ((positive - total).exp() * upstream - upstream).unsqueeze(1)  # (N, 1)
        grad_hidden = torch.cat([weight * t[targets], h.new_zeros(1, h.shape[1])])
        grad_table = torch.zeros_like(t).index_add_(0, targets, weight * h[:-1])
        for r in range(layout.rounds):
            for block in _blocks(layout):
                logits, rows, hs, y = _block_logits(h, t, inputs, r, block)
                # d logsumexp / d logit = its softmax probability, times the upstream.
                norm_rows, scale_rows = _rows(norm, rows), _rows(scale, rows)  # (b, W) each
                logits.sub_(norm_rows.unsqueeze(1)).exp_().mul_(scale_rows.unsqueeze(1))
                into_rows = torch.bmm(logits.transpose(1, 2), y)  # (b, W, D)
                grad_hidden.index_add_(0, rows.reshape(-1), into_rows.flatten(0, 1))
                items = layout.items[r, block[0] : block[1]].reshape(-1)
                grad_table.index_add_(0, items, torch.bmm(logits, hs).flatten(0, 1))
        grad_table[0] = 0.0  # the padding row is never scored
        return grad_hidden[:-1], grad_table, None


def _scatter_logsumexp(values: Tensor, index: Tensor, size: int) -> Tensor:
    """(size,) logsumexp of the values at each index (-inf where none is finite)."""
    peak = values.new_full((size,), float("-inf"))
    peak = peak.scatter_reduce(0, index, values, reduce="amax")
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    sums = values.new_zeros(size).index_add_(0, index, (values - peak[index]).exp())
    return peak + sums.log()
