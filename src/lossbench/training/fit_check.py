"""Refuse, before anything trains, a run whose tensors cannot fit in memory.

Two checks: sampled negatives at most the catalogue, and an estimate of a training step's
memory (and of an evaluation batch's) against the memory available on the run's device. The
estimate counts the tensors that grow with the settings, in fp32: weights with their
gradients, Adam's moments and the best epoch's copy; the model's activations (a rough
allowance per position and dimension); the loss's sampled rows and scores, or the full
softmax's chunk of logits; an evaluation batch's scores over the catalogue. It is meant to
catch settings off by orders of magnitude, not to predict the peak to the megabyte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch

from lossbench.data.prepared import PreparedDataset
from lossbench.errors import LossbenchError
from lossbench.losses.full_softmax import softmax_chunk_for
from lossbench.models.base import SequenceModel, scoring_table
from lossbench.training.entry import PlanEntry
from lossbench.training.memory import available_memory_bytes

FLOAT_BYTES = 4
# Tensors of (positions x hidden) a model keeps for backward: embeddings, attention and
# feed-forward intermediates of a few blocks. Rough; the loss terms dominate when it matters.
ACTIVATION_COPIES = 32


@dataclass(frozen=True)
class StepMemory:
    """Estimated bytes of one training step and what dominates it."""

    total_bytes: int
    largest: str  # "12,800 positions x 100,000 negatives x 64 dims"


def check_fits(entry: PlanEntry, dataset: PreparedDataset) -> StepMemory:
    """The estimate, or a one-line LossbenchError when the run cannot fit."""
    negatives, n_items = entry.loss.negatives, dataset.n_items
    if negatives > n_items:
        asked = (
            f"--negatives {negatives:,}"
            if entry.config.negatives is not None
            else f"{entry.loss.name}'s default of {negatives:,} negatives"
        )
        raise LossbenchError(
            f"{asked} is more than the {n_items:,} items of {dataset.name}; "
            f"use --negatives {n_items:,} or fewer"
        )
    estimate = estimate_step_memory(entry, dataset)
    available = available_memory_bytes(entry.device)
    if available is not None and estimate.total_bytes > available:
        raise LossbenchError(
            f"{entry.config.model} + {entry.config.loss_name} on {dataset.name}: a training step "
            f"needs about {_gb(estimate.total_bytes)} ({estimate.largest}), more than the "
            f"{_gb(available)} available on {entry.device.type}; lower --batch-size, "
            "--negatives or --max-len"
        )
    return estimate


def estimate_step_memory(entry: PlanEntry, dataset: PreparedDataset) -> StepMemory:
    config, n_items = entry.config, dataset.n_items
    parameters, hidden = _model_size(entry, n_items)
    longest = int(dataset.train_lengths.max()) if dataset.n_users else 1
    width = max(1, min(entry.max_len, longest))  # columns of the widest training batch
    rows = max(1, min(config.batch_size, dataset.n_users))
    positions = rows if entry.loss.positions == "last" else rows * width

    weights = parameters * FLOAT_BYTES * 5  # weights, gradients, Adam's moments, best copy
    activations = rows * width * hidden * FLOAT_BYTES * ACTIVATION_COPIES
    if "negatives" in entry.loss.needs:
        k = entry.loss.negatives
        # gathered rows and their gradients (N, K, D), ids (int64) and scores (N, K)
        loss = positions * k * (2 * hidden * FLOAT_BYTES + 8 + 3 * FLOAT_BYTES)
        loss_text = f"{positions:,} positions x {k:,} negatives x {hidden:,} dims"
    else:
        logits = min(positions * n_items, softmax_chunk_for(entry.device, config.softmax_chunk))
        loss = logits * FLOAT_BYTES * 3  # logits, softmax, gradient
        loss_text = f"{logits:,} softmax logits at once"
    candidates = config.eval_negatives + 1 if config.eval_negatives else n_items
    evaluation = config.eval_batch_size * candidates * FLOAT_BYTES * 3  # scores, masks, ranks

    terms = {
        f"{parameters:,} parameters with gradients and Adam state": weights,
        f"{rows:,} x {width:,} positions x {hidden:,} dims of activations": activations,
        loss_text: loss,
        f"scores of {config.eval_batch_size:,} users x {candidates:,} items": evaluation,
    }
    total = weights + max(activations + loss, evaluation)
    return StepMemory(total, max(terms, key=lambda name: terms[name]))


def _model_size(entry: PlanEntry, n_items: int) -> tuple[int, int]:
    """(parameters, hidden size of the item rows), from the model built without memory."""
    with torch.device("meta"):
        model = entry.model.build(entry.model_settings, n_items)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    return parameters, int(scoring_table(cast(SequenceModel, model)).shape[1])


def _gb(size: int) -> str:
    return f"{size / 2**30:,.1f} GB"
