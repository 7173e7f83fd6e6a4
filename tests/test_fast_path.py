"""The fast path changes speed, not results.

Fast: a random batch cut into length-sorted parts, each trimmed to its longest row, hidden
states gathered at real positions only, the fused chunked softmax, the last-column-only
encoder for `ce`.
Plain: every user padded to max_len, the model run on all positions, (B x L x n_items)
logits materialized and `F.cross_entropy` over the non-padding positions, as the study's
code does. On the same batch (dropout off, float64) loss and every gradient must agree.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lossbench.data.sequences import build_sequence_tensors
from lossbench.data.store import make_synthetic_prepared
from lossbench.models import MODELS, bucketed_linear, transformer
from lossbench.training.batches import TrainBatch, TrainBatcher
from lossbench.training.config import build_config
from lossbench.training.setup import make_model, resolve_loss
from lossbench.training.step import TrainingStep

MAX_LEN = 20


def padded(parts: list[TrainBatch], max_len: int) -> tuple[Tensor, Tensor]:
    """The batch as the plain code sees it: inputs (B, max_len) and targets (B, max_len)
    left-padded to max_len, target 0 where nothing trains."""
    all_inputs, all_targets = [], []
    for part in parts:
        rows, width = part.inputs.shape
        shift = max_len - width
        all_inputs.append(F.pad(part.inputs, (shift, 0)))
        targets = torch.zeros(rows, max_len, dtype=torch.int64)
        row, column = part.positions // width, part.positions % width
        targets[row, column + shift] = part.targets
        all_targets.append(targets)
    return torch.cat(all_inputs), torch.cat(all_targets)


@pytest.mark.parametrize(("loss_name", "chunk"), [("improved", 50), ("improved", None), ("ce", 7)])
def test_fast_batch_equals_plain_padded_computation(
    loss_name: str, chunk: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = make_synthetic_prepared(n_users=120, n_items=40, mean_length=9.0, seed=4)
    config = build_config(
        overrides={
            "dataset": "synthetic",
            "model": "sasrec",
            "loss": loss_name,
            "softmax_chunk": chunk,
            "model_settings": {"hidden_size": 8, "max_len": MAX_LEN, "num_heads": 2},
        }
    )
    torch.manual_seed(0)
    model, settings = make_model(config, dataset.n_items)
    model = model.double().eval()  # dropout off: both paths see the same function
    loss = resolve_loss(config)
    sequences = build_sequence_tensors(dataset, max_len=settings["max_len"])
    batcher = TrainBatcher(
        sequences, batch_size=100, positions=loss.positions, batching="random", seed=0
    )
    parts = next(iter(batcher.epoch()))
    assert len(parts) == 2 and parts[0].inputs.shape[1] < MAX_LEN  # parts, trimmed

    step = TrainingStep(model, MODELS["sasrec"], loss, None, torch.Generator().manual_seed(0))
    fast = step(parts)
    fast_grads = torch.autograd.grad(fast, list(model.parameters()), allow_unused=True)

    inputs, targets = padded(parts, MAX_LEN)
    monkeypatch.setattr(model.encoder, "pack_padding", False)  # every position computed
    hidden = model(inputs)  # (B, max_len, D), every position computed
    logits = hidden @ model.item_embedding.weight[1:].T  # (B, max_len, n_items)
    trains = targets > 0
    plain = F.cross_entropy(logits[trains], targets[trains] - 1)
    plain_grads = torch.autograd.grad(plain, list(model.parameters()), allow_unused=True)

    torch.testing.assert_close(fast, plain, rtol=1e-10, atol=1e-12)
    for mine, theirs in zip(fast_grads, plain_grads, strict=True):
        if theirs is None:
            assert mine is None or torch.all(mine == 0)
            continue
        assert mine is not None
        torch.testing.assert_close(mine, theirs, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("part_rows", [64, 2])
@pytest.mark.parametrize("model_name", ["sasrec", "bert4rec"])
def test_packed_encoder_equals_padded_encoder(
    model_name: str, part_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Running the blocks on real-item rows only, in width-sorted parts (one part, or parts
    of 2 rows trimmed to different widths), gives the padded layout's states at every real
    position (causal and bidirectional), and zeros at padding."""
    monkeypatch.setattr(transformer, "PACKED_PART_ROWS", part_rows)
    config = build_config(
        overrides={
            "dataset": "synthetic",
            "model": model_name,
            "loss": "mlm" if model_name == "bert4rec" else "improved",
            "model_settings": {"hidden_size": 8, "max_len": 12, "num_heads": 2},
        }
    )
    torch.manual_seed(1)
    model, _ = make_model(config, 30)
    model = model.double().eval()
    lengths = torch.tensor([12, 1, 5, 0, 9])  # full, single item, all padding
    columns = torch.arange(12)
    inputs = torch.randint(1, 31, (5, 12)).where(columns >= 12 - lengths[:, None], 0)
    inputs[0, 3] = 0  # a hole: padding between real items stays padding
    packed = model(inputs)
    monkeypatch.setattr(model.encoder, "pack_padding", False)
    padded = model(inputs)
    real = inputs != 0
    torch.testing.assert_close(packed[real], padded[real], rtol=1e-12, atol=1e-12)
    assert torch.all(packed[~real] == 0)


def small_encoder(model_name: str, seed: int) -> torch.nn.Module:
    """A width-8 SASRec or BERT4Rec (max length 12) over 30 items, float64, in eval mode."""
    config = build_config(
        overrides={
            "dataset": "synthetic",
            "model": model_name,
            "loss": "mlm" if model_name == "bert4rec" else "improved",
            "model_settings": {"hidden_size": 8, "max_len": 12, "num_heads": 2},
        }
    )
    torch.manual_seed(seed)
    model, _ = make_model(config, 30)
    return model.double().eval()


def ragged_parts(lengths_of_parts: list[list[int]]) -> list[Tensor]:
    """One (B_p, W_p) part of left-padded random ids per list of lengths, W_p its longest."""
    parts = []
    for lengths in lengths_of_parts:
        width = max(lengths)
        columns = torch.arange(width)
        ids = torch.randint(1, 31, (len(lengths), width))
        parts.append(ids.where(columns >= width - torch.tensor(lengths)[:, None], 0))
    return parts


@pytest.mark.parametrize("model_name", ["sasrec", "bert4rec"])
def test_forward_parts_equals_one_padded_call_per_part(
    model_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All parts of a batch through the blocks at once (real items only) give each part's
    states of its own padded call, at every real position."""
    model = small_encoder(model_name, seed=2)
    parts = ragged_parts([[3, 1, 2], [7, 5, 6, 4], [12, 9]])
    together = model.forward_parts(parts)
    monkeypatch.setattr(model.encoder, "pack_padding", False)
    for ids, mine in zip(parts, together, strict=True):
        theirs = model(ids)
        real = ids != 0
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine[real], theirs[real], rtol=1e-12, atol=1e-12)
        assert torch.all(mine[~real] == 0)


def test_bucketed_linear_equals_linear_under_bf16_autocast() -> None:
    """Rows padded to a multiple of `ROW_BUCKET` under CPU bf16 autocast: the same outputs and
    gradients as `nn.Linear`, and the same state dict."""
    torch.manual_seed(4)
    plain = torch.nn.Linear(8, 5)
    bucketed = bucketed_linear.BucketedLinear(8, 5)
    bucketed.load_state_dict(plain.state_dict())
    assert list(bucketed.state_dict()) == list(plain.state_dict())
    inputs = torch.randn(7, 11, 8)  # 77 rows: padded to 256
    results = []
    for layer in (plain, bucketed):
        x = inputs.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
        out.float().square().sum().backward()
        assert layer.weight.grad is not None and x.grad is not None
        results.append((out, x.grad, layer.weight.grad))
    for mine, theirs in zip(results[1], results[0], strict=True):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("model_name", ["sasrec", "bert4rec"])
def test_bucketed_shapes_change_no_state(model_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bf16 path's padding (rows of every projection, the widths of the parts) changes
    no state: forced on in float64, the parts' states equal the unpadded path's."""
    model = small_encoder(model_name, seed=5)
    parts = ragged_parts([[3, 1, 2], [7, 5, 6, 4], [11, 9]])
    plain = model.forward_parts(parts)
    plain_calls = [model(ids) for ids in parts]  # one packed call: widths of sorted rows
    for module in (transformer, bucketed_linear):
        monkeypatch.setattr(module, "pads_rows", lambda inputs: True)
    padded = model.forward_parts(parts)
    padded_calls = [model(ids) for ids in parts]
    for ids, mine, theirs in zip(
        parts * 2, padded + padded_calls, plain + plain_calls, strict=True
    ):
        assert mine.shape == theirs.shape == (*ids.shape, 8)
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
