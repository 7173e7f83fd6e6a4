"""Ranking every user of an evaluation set, in length-sorted batches on the model's device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

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
from lossbench.models.base import SequenceModel, scoring_table


@dataclass(frozen=True)
class EvaluationResult:
    ranks: Tensor  # (U,) int64 rank of each user's target, 1 = best; NOT_FOUND_RANK (CPU)
    topk: Tensor | None  # (U, K) int64 best items first, seen items excluded (CPU), if asked


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
        self.order = torch.argsort(evaluation_set.lengths, stable=True)  # (U,)
        self.inputs = evaluation_set.inputs[self.order]
        self.lengths = evaluation_set.lengths[self.order]
        self.targets = evaluation_set.targets[self.order]
        self.candidates = candidates[self.order] if candidates is not None else None
        counts = torch.diff(evaluation_set.seen_offsets)[self.order]
        self.seen_offsets = torch.zeros(len(counts) + 1, dtype=torch.int64)
        torch.cumsum(counts, 0, out=self.seen_offsets[1:])
        starts = evaluation_set.seen_offsets[:-1][self.order]
        # Gather each user's seen items in the new user order: one flat index per item.
        within = torch.arange(int(counts.sum())) - torch.repeat_interleave(
            self.seen_offsets[:-1], counts
        )
        self.seen_items = evaluation_set.seen_items[
            torch.repeat_interleave(starts, counts) + within
        ]
        self.seen_rows = torch.repeat_interleave(torch.arange(len(counts)), counts)
        self.batch_size = batch_size
        self.exclude_seen = exclude_seen
        self.seen_targets = seen_targets
        self.device = device
        # (U,) targets that count as not found in sampled ranking (full ranking finds its own)
        self.missed: Tensor | None = None
        if candidates is not None and exclude_seen and seen_targets == "miss":
            self.missed = targets_in_history(self.targets, self.seen_rows, self.seen_items)

    @torch.no_grad()
    def evaluate(
        self, module: nn.Module, topk: int = 0, shard: tuple[int, int] = (0, 1)
    ) -> EvaluationResult:
        """Rank every user's target; `shard` = (rank, world_size) evaluates only every
        world_size-th batch from the rank-th and leaves the other users' entries 0, so the
        ranks' results sum to the whole."""
        model = cast(SequenceModel, module)
        was_training = module.training
        module.eval()
        ranks = torch.zeros(len(self.targets), dtype=torch.int64)
        best: Tensor | None = None
        if topk > 0:
            best = torch.zeros(len(self.targets), topk, dtype=torch.int64)
        table = scoring_table(model)
        rank, world_size = shard
        starts = range(0, len(self.targets), self.batch_size)
        for start in starts[rank::world_size]:
            stop = min(start + self.batch_size, len(self.targets))
            width = max(int(self.lengths[stop - 1]), 1)
            inputs = self.inputs[start:stop, -width:].to(self.device)
            targets = self.targets[start:stop].to(self.device)
            hidden = model.predict_hidden(inputs).float()  # (B, D)
            if self.candidates is not None:
                missed = None if self.missed is None else self.missed[start:stop].to(self.device)
                candidates = self.candidates[start:stop].to(self.device)
                batch_ranks = sampled_ranks(hidden, table.float(), targets, candidates, missed)
            else:
                seen_rows, seen_items = self._seen(start, stop)
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

    def _seen(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        if not self.exclude_seen:
            empty = torch.empty(0, dtype=torch.int64, device=self.device)
            return empty, empty
        lo, hi = int(self.seen_offsets[start]), int(self.seen_offsets[stop])
        rows = (self.seen_rows[lo:hi] - start).to(self.device)
        return rows, self.seen_items[lo:hi].to(self.device)
