"""The fast path against the plain computation, on any device: one batch, loss and every
gradient (`bench/gpu.py` runs it on the GPU; the tests on CPU).

Fast: lossbench's training step (length-sorted parts trimmed to their longest row, hidden
states at real positions only, the fused chunked softmax). Plain: every user padded to
max_len, the model on all positions, (positions x catalogue) logits materialized and
`F.cross_entropy`, as the study's code does. Same model (dropout off), same batch.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F

from harness import item_chunked_softmax, plain_loss
from lossbench.data.sequences import build_sequence_tensors
from lossbench.data.store import make_synthetic_prepared
from lossbench.losses.base import LossInputs, LossParams
from lossbench.losses.full_softmax import full_softmax_ce, fused_block
from lossbench.models import MODELS
from lossbench.models.transformer import padding_computed
from lossbench.training.batches import TrainBatch, TrainBatcher
from lossbench.training.config import build_config
from lossbench.training.setup import make_model, resolve_loss
from lossbench.training.step import TrainingStep

MAX_LEN = 20
# float32 on both sides; they differ in summation order only (chunks, exp2, packing).
LOSS_TOLERANCE = 1e-5  # relative
GRADIENT_TOLERANCE = 1e-4  # relative, in norm, per parameter tensor


def padded(parts: list[TrainBatch], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch as the plain code sees it: inputs (B, max_len) and targets (B, max_len)
    left-padded to max_len, target 0 where nothing trains."""
    all_inputs, all_targets = [], []
    for part in parts:
        rows, width = part.inputs.shape
        shift = max_len - width
        all_inputs.append(F.pad(part.inputs, (shift, 0)))
        targets = torch.zeros(rows, max_len, dtype=torch.int64, device=part.inputs.device)
        targets[part.positions // width, part.positions % width + shift] = part.targets
        all_targets.append(targets)
    return torch.cat(all_inputs), torch.cat(all_targets)


def fast_path_parity(
    device: torch.device, loss_name: str, item_chunks: bool = False, n_items: int = 300
) -> dict[str, Any]:
    """Loss and every parameter's gradient, fast against plain, in float32 on `device`."""
    dataset = make_synthetic_prepared(n_users=160, n_items=n_items, mean_length=12.0, seed=4)
    config = build_config(
        overrides={
            "dataset": "synthetic",
            "model": "sasrec",
            "loss": loss_name,
            "model_settings": {"hidden_size": 32, "max_len": MAX_LEN, "num_heads": 2},
        }
    )
    torch.manual_seed(0)
    model, _ = make_model(config, dataset.n_items)
    model = model.to(device).eval()  # dropout off: both paths see the same function
    loss = resolve_loss(config)
    sequences = build_sequence_tensors(dataset, max_len=MAX_LEN)
    batcher = TrainBatcher(
        sequences, batch_size=128, positions=loss.positions, batching="random", seed=0
    )
    parts = [part.to(device) for part in next(iter(batcher.epoch()))]
    parameters = [p for p in model.parameters() if p.requires_grad]
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TF32: float32 means float32
    try:
        with item_chunked_softmax() if item_chunks else contextlib.nullcontext():
            generator = torch.Generator(device=device).manual_seed(0)
            fast = TrainingStep(model, MODELS["sasrec"], loss, None, generator)(parts)
            fast_grads = torch.autograd.grad(fast, parameters, allow_unused=True)
        inputs, targets = padded(parts, MAX_LEN)
        with padding_computed(model):
            plain = plain_loss(model, inputs, targets, loss_name)
        plain_grads = torch.autograd.grad(plain, parameters, allow_unused=True)
    finally:
        torch.set_float32_matmul_precision(precision)
    worst, worst_name = 0.0, ""
    for name, mine, theirs in zip(names, fast_grads, plain_grads, strict=True):
        error = _relative(mine, theirs)
        if error > worst:
            worst, worst_name = error, name
    fast_value, plain_value = float(fast.detach()), float(plain.detach())
    loss_error = abs(fast_value - plain_value) / max(abs(plain_value), 1e-30)
    return {
        "loss": loss_name,
        "softmax_path": "item chunks" if item_chunks else "fused",
        "fast": fast_value,
        "plain": plain_value,
        "loss_relative_difference": loss_error,
        "max_gradient_relative_difference": worst,
        "worst_parameter": worst_name,
        "passed": loss_error <= LOSS_TOLERANCE and worst <= GRADIENT_TOLERANCE,
    }


def chunk_bits(device: torch.device, n_items: int = 20_000) -> bool:
    """Does the full softmax give the same bits for chunks of one block and of two, on
    three and a bit blocks of positions (the last one ragged)?"""
    block = fused_block(n_items, device)
    n_positions = 3 * block + 17
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(n_items + 1, 64, generator=generator).mul_(0.02).to(device)
    hidden = torch.randn(n_positions, 64, generator=generator).mul_(0.5).to(device)
    targets = torch.randint(1, n_items + 1, (n_positions,), generator=generator).to(device)
    results = []
    for chunk in (block * n_items, 2 * block * n_items):
        leaves = hidden.clone().requires_grad_(), table.clone().requires_grad_()
        value = full_softmax_ce(
            LossInputs(leaves[0], targets, leaves[1]), LossParams(softmax_chunk=chunk)
        )
        results.append((value.detach(), *torch.autograd.grad(value, leaves)))
    return all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def _relative(mine: torch.Tensor | None, theirs: torch.Tensor | None) -> float:
    """||mine - theirs|| / ||theirs||; a missing gradient counts as zeros."""
    if theirs is None:
        return 0.0 if mine is None else float(mine.norm() > 0)
    mine = torch.zeros_like(theirs) if mine is None else mine
    return float((mine - theirs).norm() / theirs.norm().clamp_min(1e-30))


def cce_parity(
    device: torch.device, n_items: int = 100_000, n_positions: int = 2_048
) -> dict[str, Any]:
    """Cut Cross-Entropy (the CUDA backend of `improved`, `ce`, `mlm`) against the chunked
    path in float64 on one random batch: loss and both gradients. Needs CUDA and the
    `cut-cross-entropy` package (`pip install 'lossbench[cce]'`); elsewhere it says so."""
    from lossbench.losses.softmax_backend import cce_installed, cce_softmax_ce

    if device.type != "cuda" or not cce_installed():
        return {"skipped": "needs CUDA and the cut-cross-entropy package", "passed": True}
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(n_items + 1, 64, generator=generator).mul_(0.02)
    hidden = torch.randn(n_positions, 64, generator=generator).mul_(0.5)
    targets = torch.randint(1, n_items + 1, (n_positions,), generator=generator)
    results = []
    for fn, dtype in ((full_softmax_ce, torch.float64), (cce_softmax_ce, torch.float32)):
        on = device if fn is cce_softmax_ce else torch.device("cpu")
        leaves = (
            hidden.to(on, dtype).requires_grad_(),
            table.to(on, dtype).requires_grad_(),
        )
        value = fn(LossInputs(leaves[0], targets.to(on), leaves[1]), LossParams())
        grads = torch.autograd.grad(value, leaves)
        results.append([t.detach().double().cpu() for t in (value, *grads)])
    reference, cce = results
    errors = {
        name: _relative(mine, theirs)
        for name, mine, theirs in zip(("loss", "hidden", "items"), cce, reference, strict=True)
    }
    passed = errors["loss"] <= LOSS_TOLERANCE and max(errors.values()) <= GRADIENT_TOLERANCE
    return {"relative_errors": errors, "passed": passed}
