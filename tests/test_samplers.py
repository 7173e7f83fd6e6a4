"""In-batch and mixed negatives, their proposal probabilities, and the logQ correction of the
sampled softmax: hand computations on tiny tensors, refusals, and end-to-end training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lossbench.data.prepared import PreparedDataset
from lossbench.data.sequences import build_sequence_tensors
from lossbench.data.store import make_synthetic_prepared
from lossbench.errors import LossbenchError
from lossbench.losses import LOSSES
from lossbench.losses.base import LossInputs, LossParams
from lossbench.losses.negatives import in_batch_negatives
from lossbench.losses.sampled_softmax import sampled_ce
from lossbench.losses.samplers import SAMPLER_NAMES, build_sampler, proposal
from lossbench.training.batches import TrainBatcher
from lossbench.training.config import build_config
from lossbench.training.loop import train_run
from lossbench.training.setup import resolve_loss


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_in_batch_negatives_are_other_targets_in_proportion() -> None:
    targets = torch.tensor([1, 1, 2, 3, 3, 3])
    negatives = in_batch_negatives(targets, 20000, 9, generator())
    assert negatives.shape == (6, 20000)
    assert not (negatives == targets[:, None]).any()  # never the row's own target
    # Row 0 (target 1) draws from the other positions' targets [2, 3, 3, 3]: P(3) = 3/4.
    share_of_3 = (negatives[0] == 3).double().mean().item()
    assert set(negatives[0].unique().tolist()) == {2, 3}
    assert abs(share_of_3 - 0.75) < 0.015
    # Row 2 (target 2) draws from [1, 1, 3, 3, 3]: P(1) = 2/5.
    assert abs((negatives[2] == 1).double().mean().item() - 0.4) < 0.015
    again = in_batch_negatives(targets, 20000, 9, generator())
    assert torch.equal(negatives, again)  # the explicit generator decides every draw


def test_a_batch_of_one_target_steps_to_the_next_id() -> None:
    negatives = in_batch_negatives(torch.tensor([4, 4, 4]), 3, 4, generator())
    assert negatives.tolist() == [[1, 1, 1]] * 3  # 4 % 4 + 1: never the target
    assert in_batch_negatives(torch.empty(0, dtype=torch.int64), 2, 4, generator()).shape == (0, 2)


def test_proposals_by_hand() -> None:
    item_counts = torch.tensor([9, 1, 3, 0, 4])  # entry 0 (padding) is ignored
    target_counts = torch.tensor([9, 0, 2, 1, 1])
    assert proposal("uniform", 4, item_counts, target_counts).tolist() == [
        0,
        0.25,
        0.25,
        0.25,
        0.25,
    ]
    assert proposal("popularity", 4, item_counts, target_counts).tolist() == [
        0,
        1 / 8,
        3 / 8,
        0,
        4 / 8,
    ]
    assert proposal("in-batch", 4, item_counts, target_counts).tolist() == [0, 0, 0.5, 0.25, 0.25]
    # mixed, 4 negatives: 2 in the batch, 2 uniform -> the average of the two proposals.
    mixed = proposal("mixed", 4, item_counts, target_counts)
    assert mixed.tolist() == pytest.approx([0, 0.125, 0.375, 0.25, 0.25])
    # 5 negatives: 3 in the batch, 2 uniform.
    assert proposal("mixed", 5, item_counts, target_counts)[1].item() == pytest.approx(0.4 * 0.25)


def test_mixed_takes_half_from_the_batch_and_the_rest_uniformly() -> None:
    counts = torch.ones(11, dtype=torch.int64)
    sampler = build_sampler("mixed", 5, counts, counts, torch.device("cpu"))
    targets = torch.tensor([1, 2, 2, 3])
    negatives = sampler.sample(targets, None, generator())
    assert negatives.shape == (4, 5) and sampler.in_batch == 3
    assert set(negatives[:, :3].unique().tolist()) <= {1, 2, 3}
    assert not (negatives == targets[:, None]).any()
    assert sampler.log_q is None and sampler.record()["sampler"] == "mixed"


def test_logq_sampled_softmax_by_hand() -> None:
    hidden = torch.tensor([[1.0, 0.0]])
    table = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # items 1..3
    targets, negatives = torch.tensor([1]), torch.tensor([[2, 3]])
    q = torch.tensor([1.0, 0.5, 0.3, 0.2])
    inputs = LossInputs(hidden, targets, table, negatives, torch.log(q))
    corrected = [2 - math.log(0.5), 1 - math.log(0.3), 0 - math.log(0.2)]
    expected = -corrected[0] + math.log(sum(math.exp(c) for c in corrected))
    assert sampled_ce(inputs, LossParams()).item() == pytest.approx(expected, rel=1e-6)
    plain = -2 + math.log(math.exp(2) + math.exp(1) + math.exp(0))
    without = LossInputs(hidden, targets, table, negatives)
    assert sampled_ce(without, LossParams()).item() == pytest.approx(plain, rel=1e-6)


def test_uniform_logq_is_a_constant_shift_that_changes_nothing() -> None:
    torch.manual_seed(0)
    hidden, table = torch.randn(40, 8), torch.randn(31, 8)
    targets = torch.randint(1, 31, (40,))
    counts = torch.ones(31, dtype=torch.int64)
    sampler = build_sampler("uniform", 12, counts, counts, torch.device("cpu"), logq=True)
    negatives = sampler.sample(targets, None, generator(3))
    assert sampler.log_q is not None
    assert torch.allclose(sampler.log_q[1:], torch.full((30,), math.log(1 / 30)))
    corrected = sampled_ce(
        LossInputs(hidden, targets, table, negatives, sampler.log_q), LossParams()
    )
    plain = sampled_ce(LossInputs(hidden, targets, table, negatives), LossParams())
    assert corrected.item() == pytest.approx(plain.item(), rel=1e-6)
    # Under a non-uniform Q the correction does change the loss.
    popular = build_sampler(
        "in-batch", 12, counts, torch.arange(31), torch.device("cpu"), logq=True
    )
    shifted = sampled_ce(LossInputs(hidden, targets, table, negatives, popular.log_q), LossParams())
    assert abs(shifted.item() - plain.item()) > 1e-3


def test_target_counts_follow_the_training_positions() -> None:
    dataset = PreparedDataset(
        name="tiny",
        n_items=8,
        train_offsets=torch.tensor([0, 4, 5, 8]).numpy(),
        train_items=torch.tensor([1, 2, 3, 4, 5, 2, 6, 7]).numpy(),
        valid_items=torch.tensor([5, 6, 8]).numpy(),
        test_items=torch.tensor([6, 7, 1]).numpy(),
    )
    tensors = build_sequence_tensors(dataset, max_len=3)  # windows of 4: [1 2 3 4], [2 6 7]
    every = TrainBatcher(tensors, 2, "all", "random", seed=0).target_counts(8)
    assert every.tolist() == [0, 0, 1, 1, 1, 0, 1, 1, 0]  # 2, 3, 4 and 6, 7
    last = TrainBatcher(tensors, 2, "last", "random", seed=0).target_counts(8)
    assert last.tolist() == [0, 0, 0, 0, 1, 0, 0, 1, 0]


def test_sampler_settings_the_loss_cannot_use_are_refused() -> None:
    assert set(SAMPLER_NAMES) == {"uniform", "popularity", "in-batch", "mixed"}
    anywhere = {"negatives_unseen": False}
    cases = [
        ({"loss": "improved", "sampler": "in-batch"}, "scores the full catalogue"),
        ({"loss": "ce", "logq": True}, "--logq does not apply"),
        ({"loss": "bce", "logq": True}, "--logq corrects a sampled softmax"),
        ({"loss": "bce", "sampler": "mixed"}, "--negatives 2 or more"),
    ]
    for overrides, message in cases:
        with pytest.raises(LossbenchError, match=message):
            resolve_loss(build_config(overrides={**overrides, **anywhere}))
    with pytest.raises(LossbenchError, match="drop --negatives-unseen to use --sampler in-batch"):
        build_config(
            overrides={"loss": "sampled-ce", "sampler": "in-batch", "negatives_unseen": True}
        )
    settings = resolve_loss(
        build_config(overrides={"loss": "bce", "sampler": "in-batch", **anywhere})
    )
    assert settings.record()["sampler"] == "in-batch" and not settings.record()["logq"]
    assert [name for name, spec in LOSSES.items() if spec.logq] == ["sampled-ce"]


@pytest.fixture(scope="module")
def tiny() -> PreparedDataset:
    return make_synthetic_prepared(n_users=150, n_items=60, mean_length=12.0, seed=1)


@pytest.mark.parametrize(
    "settings",
    [
        {"sampler": "in-batch"},
        {"sampler": "mixed"},
        {"sampler": "in-batch", "logq": True},
        {"sampler": "popularity", "logq": True},
    ],
)
def test_samplers_train_sampled_ce_end_to_end(
    settings: dict[str, object], tiny: PreparedDataset, tmp_path: Path
) -> None:
    overrides = {
        "loss": "sampled-ce",
        "negatives": 16,
        "negatives_unseen": False,
        "max_epochs": 2,
        "batch_size": 64,
        "model_settings": {"hidden_size": 16, "max_len": 20},
        **settings,
    }
    result = train_run(build_config(overrides=overrides), tiny, tmp_path)
    assert all(math.isfinite(row["loss"]) for row in result.history)
    assert result.history[1]["loss"] < result.history[0]["loss"]
    assert 0.0 < result.metrics["test"]["hr@20"] <= 1.0
    recorded = json.loads((tmp_path / "config.json").read_text())["loss_settings"]
    assert recorded["sampler"] == settings["sampler"]
    assert recorded["logq"] == settings.get("logq", False)
