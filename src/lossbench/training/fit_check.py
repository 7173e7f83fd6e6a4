"""Refuse, before anything trains, a run whose tensors cannot fit in memory.

Two checks: sampled negatives at most the catalogue, and an estimate of a training step's
memory (and of an evaluation batch's) against the memory available on the run's device. The
estimate counts the tensors that grow with the settings, in fp32: weights with their
gradients, Adam's moments and the best epoch's copy; the model's activations (a rough
allowance per position and dimension); the loss's sampled rows and scores, the full
softmax's chunk of logits, or what a loss that searches the catalogue (`sce`, `rece`) declares
it holds; an evaluation batch's scores over the catalogue. It is meant to
catch settings off by orders of magnitude, not to predict the peak to the megabyte.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from lossbench.data.prepared import PreparedDataset
from lossbench.errors import LossbenchError
from lossbench.losses.base import LossFn, LossParams
from lossbench.losses.full_softmax import softmax_chunk_for
from lossbench.losses.negatives import GATHER_ELEMENTS
from lossbench.losses.reduced_ce import rece, rece_memory_bytes
from lossbench.losses.scalable_ce import sce, sce_memory_bytes
from lossbench.models.base import scoring_table, sequence_model
from lossbench.training.data_fit import check_data_fit
from lossbench.training.entry import PlanEntry
from lossbench.training.memory import available_memory_bytes, format_size, resident_bytes

FLOAT_BYTES = 4
# Tensors of (positions x hidden) a model keeps for backward: embeddings, attention and
# feed-forward intermediates of a few blocks. Rough; the loss terms dominate when it matters.
ACTIVATION_COPIES = 32
# Losses that search the catalogue instead of scoring all of it, and their own memory
# (N positions, n_items, hidden size, the run's knobs -> bytes at the loss's peak).
SEARCHED_CATALOGUE: dict[LossFn, Callable[[int, int, int, LossParams], int]] = {
    sce: sce_memory_bytes,
    rece: rece_memory_bytes,
}


@dataclass(frozen=True)
class StepMemory:
    """Estimated bytes of one training step and what dominates it."""

    total_bytes: int
    largest: str  # "12,800 positions x 100,000 negatives x 64 dims"
    # What lowers the largest term, with the values now: "--negatives (400), --batch-size
    # (256), --max-len (50) or --hidden-size (64)"
    setting: str = "--batch-size"
    resident_bytes: int = 0  # counted in total_bytes: what the process holds before the run


def check_fits(entry: PlanEntry, dataset: PreparedDataset) -> StepMemory:
    """The estimate, or a one-line LossbenchError when the run cannot fit."""
    check_data_fit(entry.config, dataset)
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
    if entry.config.save_topk > n_items:  # else the test, after all the training, fails
        raise LossbenchError(
            f"--save-topk {entry.config.save_topk:,} is more than the {n_items:,} items of "
            f"{dataset.name}; use --save-topk {n_items:,} or fewer"
        )
    estimate = estimate_step_memory(entry, dataset)
    available = available_memory_bytes(entry.device)
    if available is not None and estimate.total_bytes > available:
        raise LossbenchError(
            f"{entry.config.model} + {entry.config.loss_name} on {dataset.name}: a training step "
            f"needs about {_gb(estimate.total_bytes)}, more than the {_gb(available)} available "
            f"on {entry.device.type}; most of it is {estimate.largest}: lower {estimate.setting}"
        )
    return estimate


def estimate_step_memory(entry: PlanEntry, dataset: PreparedDataset) -> StepMemory:
    config, n_items = entry.config, dataset.n_items
    parameters, hidden = _model_size(entry, n_items)
    longest = int(dataset.train_lengths.max()) if dataset.n_users else 1
    width = max(1, min(entry.max_len, longest))  # columns of the widest training batch
    rows = max(1, min(config.batch_size, dataset.n_users))
    positions = rows if entry.loss.positions == "last" else rows * width

    # The settings each term grows with, as the flags that lower it ("--max-len (50)").
    size = f"--hidden-size ({hidden:,})"
    batch, length = f"--batch-size ({config.batch_size:,})", f"--max-len ({entry.max_len:,})"
    along = [batch] if entry.loss.positions == "last" else [batch, length]

    weights = parameters * FLOAT_BYTES * 5  # weights, gradients, Adam's moments, best copy
    activations = rows * width * hidden * FLOAT_BYTES * ACTIVATION_COPIES
    if "negatives" in entry.loss.needs:
        k = entry.loss.negatives
        # gathered rows and their gradients (N, K, D), at most GATHER_ELEMENTS of them at a
        # time (`negative_scores`); ids (int64) and scores (N, K)
        gathered = min(positions * k * hidden, max(GATHER_ELEMENTS, k * hidden))
        loss = gathered * 2 * FLOAT_BYTES + positions * k * (8 + 3 * FLOAT_BYTES)
        loss_text = f"{positions:,} positions x {k:,} negatives x {hidden:,} dims"
        loss_flags = [f"--negatives ({k:,})", *along, size]
    elif entry.loss.spec.fn in SEARCHED_CATALOGUE:
        memory = SEARCHED_CATALOGUE[entry.loss.spec.fn]
        loss = memory(positions, n_items, hidden, entry.loss.params)
        loss_text = f"{entry.loss.name}'s search of {n_items:,} items for {positions:,} positions"
        loss_flags = [*along, size]
    else:
        chunk = softmax_chunk_for(entry.device, config.softmax_chunk)
        logits = min(positions * n_items, chunk)
        loss = logits * FLOAT_BYTES * 3  # logits, softmax, gradient
        loss_text = f"{logits:,} softmax logits at once"
        loss_flags = [f"--softmax-chunk ({chunk:,})"] if logits == chunk else along
    candidates = config.eval_negatives + 1 if config.eval_negatives else n_items
    evaluation = config.eval_batch_size * candidates * FLOAT_BYTES * 3  # scores, masks, ranks

    terms = {  # name: (bytes, the settings that grow it, the one that dominates first)
        f"{parameters:,} parameters with gradients and Adam state": (weights, [size]),
        f"{rows:,} x {width:,} positions x {hidden:,} dims of activations": (
            activations,
            [batch, length, size],
        ),
        loss_text: (loss, loss_flags),
        f"scores of {config.eval_batch_size:,} users x {candidates:,} items": (
            evaluation,
            [f"eval_batch_size ({config.eval_batch_size:,}) in a --config file"],
        ),
    }
    total = weights + max(activations + loss, evaluation)
    largest = max(terms, key=lambda name: terms[name][0])
    return StepMemory(total, largest, _either(terms[largest][1]))


def _either(flags: list[str]) -> str:
    return flags[0] if len(flags) == 1 else f"{', '.join(flags[:-1])} or {flags[-1]}"


def peak_estimate(entry: PlanEntry, dataset: PreparedDataset) -> StepMemory:
    """The run's estimated peak: a step's tensors, on CPU over what the process holds."""
    step = estimate_step_memory(entry, dataset)
    resident = resident_bytes(entry.device)
    return replace(step, total_bytes=step.total_bytes + resident, resident_bytes=resident)


def over_budget(entry: PlanEntry, estimate: StepMemory, budget_bytes: int) -> LossbenchError:
    """The refusal of a run whose `peak_estimate` exceeds `--memory-budget`."""
    step = estimate.total_bytes - estimate.resident_bytes
    held = f"{format_size(estimate.resident_bytes)} the process holds before training, "
    parts = (held if estimate.resident_bytes else "") + f"{format_size(step)} a training step"
    remedy = (
        "raise the budget: the process alone holds more"
        if estimate.resident_bytes >= budget_bytes
        else f"lower {estimate.setting}"
    )
    return LossbenchError(
        f"{entry.label}: its peak would be about {format_size(estimate.total_bytes)} ({parts}, "
        f"mostly {estimate.largest}), over the --memory-budget of {format_size(budget_bytes)}; "
        f"{remedy}"
    )


def _model_size(entry: PlanEntry, n_items: int) -> tuple[int, int]:
    """(parameters, hidden size of the item rows), from the model built without memory."""
    with torch.device("meta"):
        model = entry.model.build(entry.model_settings, n_items)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    return parameters, int(scoring_table(sequence_model(model, entry.config.model)).shape[1])


def _gb(size: int) -> str:
    return f"{size / 2**30:,.1f} GB"
