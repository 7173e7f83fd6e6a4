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


# Share of the memory still available that one block of scores may take: the rest is the
# model, the data and whatever else runs on the machine.
SCORE_BLOCK_SHARE = 0.125


def score_block_rows(n_items: int, batch_size: int, available: int | None) -> int:
    """Users scored at once: `batch_size`, fewer when their (rows, n_items) fp32 scores (twice:
    the ranks' and the top-k's) would take more than SCORE_BLOCK_SHARE of `available` bytes.
    Every user's rank is computed on its own row, so the block changes no result."""
    if available is None:
        return batch_size
    per_row = 2 * 4 * max(n_items, 1)  # bytes
    return max(1, min(batch_size, int(available * SCORE_BLOCK_SHARE) // per_row))


class Evaluator:
    """Holds one evaluation set in length order, ready for repeated evaluations.

    Users are visited shortest history first so each batch is trimmed to its longest row; the
    seen items of a batch are then one contiguous slice of a reordered CSR. With seen items
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
        # Ranks deal out the same blocks, so under sharding every rank keeps the batch size
        # (each one's free memory differs); alone, a block follows the free memory.
        block = self.batch_size
        if world_size == 1:
            free = available_memory_bytes(self.device)
            block = score_block_rows(table.shape[0] - 1, self.batch_size, free)
        starts = range(0, len(self.targets), block)
        for start in starts[rank::world_size]:
            stop = min(start + block, len(self.targets))
            width = max(int(self.lengths[stop - 1]), 1)
            users = self.order[start:stop]
            inputs = self.evaluation_set.inputs[users, -width:].to(self.device)
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
        items = self.evaluation_set.seen_items[torch.repeat_interleave(starts, counts) + within]
        rows = torch.repeat_interleave(torch.arange(len(users)), counts)
        return rows.to(self.device), items.to(self.device)
