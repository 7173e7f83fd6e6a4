"""Ranking every user of an evaluation set, in length-sorted batches on the model's device."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lossbench.data.sequences import EvaluationSet
from lossbench.evaluation.ranking import (
    full_ranking_ranks,
    full_ranking_topk,
    sampled_ranks,
    targets_in_history,
)
from lossbench.evaluation.seen import SeenTargets
from lossbench.models.base import scoring_table, sequence_model
from lossbench.training.memory import available_memory_bytes


@dataclass(frozen=True)
class EvaluationResult:
    ranks: Tensor  # (U,) int64 rank of each user's target, 1 = best; NOT_FOUND_RANK (CPU)
    topk: Tensor | None  # (U, K) int64 best items first, seen items excluded (CPU), if asked


# Share of the memory still available that one block of scores may take, and again the
# block's seen-item pairs: the rest is the model, the data and whatever else runs.
SCORE_BLOCK_SHARE = 0.125
# Bytes a seen (row, item) pair of a block takes while its mask is built: its index
# temporaries (int64) and the row and item tensors passed to the ranking.
SEEN_PAIR_BYTES = 64


def score_block_rows(n_items: int, batch_size: int, available: int | None) -> int:
    """Users scored at once: `batch_size`, fewer when their (rows, n_items) fp32 scores (twice:
    the ranks' and the top-k's) would take more than SCORE_BLOCK_SHARE of `available` bytes.
    Every user's rank is computed on its own row, so the block changes no result."""
    if available is None:
        return batch_size
    per_row = 2 * 4 * max(n_items, 1)  # bytes
    return max(1, min(batch_size, int(available * SCORE_BLOCK_SHARE) // per_row))


def seen_pair_budget(available: int | None) -> int | None:
    """Seen-item pairs a block may hold (None: no bound), `SCORE_BLOCK_SHARE` of `available`.
    A user's whole history is excluded, not only its last max_len items, so on logs with
    very long histories the pairs, not the scores, would be a block's largest part."""
    if available is None:
        return None
    return max(1, int(available * SCORE_BLOCK_SHARE) // SEEN_PAIR_BYTES)


def block_bounds(seen_counts: Tensor, rows: int, pairs: int | None) -> list[tuple[int, int]]:
    """(start, stop) of consecutive blocks of at most `rows` rows and at most `pairs` seen
    pairs (a row with more is a block of its own); seen_counts (U,) pairs of each row."""
    n = len(seen_counts)
    if pairs is None:
        return [(start, min(start + rows, n)) for start in range(0, n, rows)]
    cumulative = torch.cumsum(seen_counts, 0)  # (U,)
    bounds, start = [], 0
    while start < n:  # one iteration per block
        before = int(cumulative[start - 1]) if start else 0
        fitting = int(torch.searchsorted(cumulative, before + pairs, right=True))
        stop = min(start + rows, max(fitting, start + 1), n)
        bounds.append((start, stop))
        start = stop
    return bounds


class Evaluator:
    """Holds one evaluation set in length order, ready for repeated evaluations.

    Users are visited shortest history first so each batch is trimmed to its longest row, in
    blocks bounded by the memory available (scores and seen pairs). With seen items
    excluded, a target in the user's history follows `seen_targets` in full and sampled
    ranking alike (`miss`: not found; `rank`: ranked among the unseen items).
    """

    def __init__(
        self,
        evaluation_set: EvaluationSet,
        batch_size: int,
        exclude_seen: bool,
        device: torch.device,
        candidates: Tensor | None = None,  # (U, N) sampled negatives, None = full ranking
        seen_targets: SeenTargets = "miss",
    ) -> None:
        # No reordered copy of the histories or seen items: a batch gathers its rows of the
        # evaluation set (at ML-20M scale the copies were ~0.5 GB per evaluation set).
        self.evaluation_set = evaluation_set
        self.order = torch.argsort(evaluation_set.lengths, stable=True)  # (U,)
        self.lengths = evaluation_set.lengths[self.order]
        self.targets = evaluation_set.targets[self.order]
        self.seen_counts = torch.diff(evaluation_set.seen_offsets)[self.order]  # (U,)
        self.candidates = candidates[self.order] if candidates is not None else None
        self.batch_size = batch_size
        self.exclude_seen = exclude_seen
        self.seen_targets = seen_targets
        self.device = device
        # Sampled ranking counts a target in the history as not found (full ranking finds its
        # own): only with seen items excluded under `miss`.
        self.miss_seen = candidates is not None and exclude_seen and seen_targets == "miss"

    @torch.no_grad()
    def evaluate(
        self, module: nn.Module, topk: int = 0, shard: tuple[int, int] = (0, 1)
    ) -> EvaluationResult:
        """Rank every user's target; `shard` = (rank, world_size) evaluates only every
        world_size-th batch from the rank-th and leaves the other users' entries 0, so the
        ranks' results sum to the whole."""
        model = sequence_model(module)
        was_training = module.training
        module.eval()
        ranks = torch.zeros(len(self.targets), dtype=torch.int64)
        best: Tensor | None = None
        if topk > 0:
            best = torch.zeros(len(self.targets), topk, dtype=torch.int64)
        table = scoring_table(model)
        rank, world_size = shard
        for start, stop in self.blocks(table.shape[0] - 1, world_size)[rank::world_size]:
            width = max(int(self.lengths[stop - 1]), 1)
            users = self.order[start:stop]
            inputs = self.evaluation_set.histories(users, width).to(self.device)  # (B, W)
            targets = self.targets[start:stop].to(self.device)
            hidden = model.predict_hidden(inputs).float()  # (B, D)
            seen_rows, seen_items = self._seen(users)
            if self.candidates is not None:
                missed = None
                if self.miss_seen:
                    missed = targets_in_history(targets, seen_rows, seen_items)
                candidates = self.candidates[start:stop].to(self.device)
                batch_ranks = sampled_ranks(hidden, table.float(), targets, candidates, missed)
            else:
                batch_ranks = full_ranking_ranks(
                    hidden, table.float(), targets, seen_rows, seen_items, self.seen_targets
                )
                if best is not None:
                    best[start:stop] = full_ranking_topk(
                        hidden,
                        table.float(),
                        targets,
                        seen_rows,
                        seen_items,
                        topk,
                        self.seen_targets,
                    ).cpu()
            ranks[start:stop] = batch_ranks.cpu()
        module.train(was_training)
        # Back to the user order of the evaluation set.
        in_user_order = torch.empty_like(ranks)
        in_user_order[self.order] = ranks
        best_in_order = None
        if best is not None:
            best_in_order = torch.empty_like(best)
            best_in_order[self.order] = best
        return EvaluationResult(in_user_order, best_in_order)

    def blocks(self, n_items: int, world_size: int = 1) -> list[tuple[int, int]]:
        """(start, stop) of the blocks of users ranked at once, in length order. Ranks deal
        out the same blocks, so under sharding every rank keeps the batch size (each one's
        free memory differs); alone, a block follows the free memory."""
        if world_size > 1:
            return block_bounds(self.seen_counts, self.batch_size, None)
        free = available_memory_bytes(self.device)
        rows = score_block_rows(n_items, self.batch_size, free)
        pairs = seen_pair_budget(free) if self.exclude_seen else None
        return block_bounds(self.seen_counts, rows, pairs)

    def _seen(self, users: Tensor) -> tuple[Tensor, Tensor]:
        """(S,) batch rows and (S,) items of the seen pairs of `users` (rows of the set)."""
        if not self.exclude_seen:
            empty = torch.empty(0, dtype=torch.int64, device=self.device)
            return empty, empty
        offsets = self.evaluation_set.seen_offsets
        starts = offsets[users]  # (B,)
        counts = offsets[users + 1] - starts  # (B,)
        first = torch.cumsum(counts, 0) - counts  # (B,) where each row's pairs start
        within = torch.arange(int(counts.sum())) - torch.repeat_interleave(first, counts)
        seen = self.evaluation_set.seen_items[torch.repeat_interleave(starts, counts) + within]
        items = seen.long()  # (S,) int64, as index_put_ and the comparisons take them
        rows = torch.repeat_interleave(torch.arange(len(users)), counts)
        return rows.to(self.device), items.to(self.device)
