"""The losses made for large catalogues (sce, rece, scaled-ce, corrected logQ), the declared
needs of the loss contract, `--logq standard|corrected`, and the softmax backend."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.cli.app import logq_words
from lossbench.data.prepared import PreparedDataset
from lossbench.data.store import make_synthetic_prepared
from lossbench.errors import LossbenchError
from lossbench.losses import LOSSES, LossInputs, LossParams, LossSpec, reduced_ce
from lossbench.losses.full_softmax import full_softmax_ce
from lossbench.losses.reduced_ce import rece, rece_buckets
from lossbench.losses.sampled_softmax import corrected_logq_ce, sampled_ce, scaled_ce
from lossbench.losses.scalable_ce import catalogue_topk, sce
from lossbench.losses.softmax_backend import softmax_backend, with_softmax_backend
from lossbench.training.config import build_config
from lossbench.training.loop import train_run
from lossbench.training.setup import resolve_loss

Case = tuple[Tensor, Tensor, Tensor]


def case(n: int, dim: int, n_items: int, seed: int = 0) -> Case:
    """float64 hidden (n, dim) and table (n_items + 1, dim) as leaves, targets (n,)."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    table = torch.randn(n_items + 1, dim, generator=generator, dtype=torch.float64)
    targets = torch.randint(1, n_items + 1, (n,), generator=generator)
    return hidden.requires_grad_(), table.requires_grad_(), targets


def value_and_grads(loss: Tensor, hidden: Tensor, table: Tensor) -> list[Tensor]:
    return [loss.detach(), *torch.autograd.grad(loss, (hidden, table))]


def assert_same(mine: list[Tensor], reference: list[Tensor], tolerance: float = 1e-12) -> None:
    for a, b in zip(mine, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)


def full_ce(hidden: Tensor, table: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(hidden @ table[1:].T, targets - 1)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- sce ----------------------------------------------------------------------------------


def plain_sce(
    hidden: Tensor, table: Tensor, targets: Tensor, n_buckets: int, size_x: int, size_y: int
) -> Tensor:
    """SCE written out bucket by bucket and position by position (the published steps)."""
    dim = hidden.shape[1]
    directions = dim**-0.25 * torch.randn(n_buckets, dim, generator=seeded(), dtype=hidden.dtype)
    worst: dict[int, Tensor] = {}
    for direction in directions:
        rows = torch.topk(hidden.detach() @ direction, size_x).indices.tolist()
        items = (torch.topk(table.detach()[1:] @ direction, size_y).indices + 1).tolist()
        for row in rows:
            target = int(targets[row])
            logits = [hidden[row] @ table[target]]
            logits += [hidden[row] @ table[item] for item in items if item != target]
            loss = torch.logsumexp(torch.stack(logits), 0) - logits[0]
            worst[row] = loss if row not in worst else torch.maximum(worst[row], loss)
    return torch.stack(list(worst.values())).mean()


def test_sce_matches_the_plain_computation_value_and_gradients() -> None:
    hidden, table, targets = case(9, 4, 20)
    params = LossParams(sce_buckets=3, sce_bucket_size_x=4, sce_bucket_size_y=6)
    mine = sce(LossInputs(hidden, targets, table, generator=seeded()), params)
    reference = plain_sce(hidden, table, targets, 3, 4, 6)
    assert_same(value_and_grads(mine, hidden, table), value_and_grads(reference, hidden, table))
    # The published rule: n_b = bucket_size_x = int(2 sqrt(N)): 9 positions -> 6.
    default = sce(LossInputs(hidden, targets, table, generator=seeded()), LossParams())
    reference = plain_sce(hidden, table, targets, 6, 6, 20)
    assert float(default.detach()) == pytest.approx(float(reference.detach()), rel=1e-12)


def test_sce_with_buckets_covering_everything_is_full_ce() -> None:
    hidden, table, targets = case(12, 5, 15, seed=1)
    params = LossParams(sce_buckets=4, sce_bucket_size_x=12, sce_bucket_size_y=15)
    mine = sce(LossInputs(hidden, targets, table, generator=seeded()), params)
    reference = full_ce(hidden, table, targets)
    assert_same(value_and_grads(mine, hidden, table), value_and_grads(reference, hidden, table))


def test_sce_draws_from_its_generator_only() -> None:
    hidden, table, targets = case(64, 8, 500, seed=2)
    params = LossParams(sce_bucket_size_y=8)

    def value(seed: int) -> float:
        inputs = LossInputs(hidden, targets, table, generator=seeded(seed))
        return float(sce(inputs, params).detach())

    torch.manual_seed(123)
    first = value(0)
    torch.manual_seed(456)  # the global generator plays no part
    assert value(0) == first and value(1) != first
    with pytest.raises(LossbenchError, match="needs LossInputs.generator"):
        sce(LossInputs(hidden, targets, table), params)


def test_catalogue_topk_over_chunks_is_the_topk(monkeypatch: pytest.MonkeyPatch) -> None:
    directions, items = torch.randn(5, 8, generator=seeded()), torch.randn(1000, 8)
    monkeypatch.setattr("lossbench.losses.scalable_ce.TOPK_LOGITS", 5 * 64)  # 16 chunks
    chunked = catalogue_topk(directions, items, 7)
    expected = torch.topk(directions @ items.T, 7, dim=1).indices
    assert torch.equal(chunked.sort(1).values, expected.sort(1).values)


# --- rece ---------------------------------------------------------------------------------


def plain_rece(
    hidden: Tensor, table: Tensor, targets: Tensor, rounds: int, extra: int, seed: int = 0
) -> Tensor:
    """RECE written out: per round, bucket by argmax, sort by (bucket, projection), chunks,
    windows of 2e + 1 item chunks; per position one softmax over the union of its candidates
    (each once, never its positive) and its positive."""
    n, dim = hidden.shape
    n_items = table.shape[0] - 1
    n_buckets = max(1, min(rece_buckets(n, n_items, extra), n, n_items))
    directions = torch.randn(rounds, n_buckets, dim, generator=seeded(seed), dtype=hidden.dtype)
    candidates: list[set[int]] = [set() for _ in range(n)]
    for direction in directions:
        x_chunks = _plain_chunks(direction @ hidden.detach().T, n_buckets)
        y_chunks = _plain_chunks(direction @ table.detach()[1:].T, n_buckets)
        for k, rows in enumerate(x_chunks):
            window = range(max(0, k - extra), min(n_buckets, k + extra + 1))
            for row in rows:
                candidates[row] |= {item + 1 for j in window for item in y_chunks[j]}
    losses = []
    for row in range(n):
        items = sorted(candidates[row] - {int(targets[row])})
        logits = hidden[row] @ table[[int(targets[row]), *items]].T
        losses.append(torch.logsumexp(logits, 0) - logits[0])
    return torch.stack(losses).mean()


def _plain_chunks(projections: Tensor, n_buckets: int) -> list[list[int]]:
    """Rows sorted by (bucket, largest projection first), cut into n_buckets chunks."""
    value, bucket = projections.max(dim=0)
    order = sorted(range(len(bucket)), key=lambda i: (int(bucket[i]), -float(value[i]), i))
    size = -(-len(order) // n_buckets)
    return [order[k * size : (k + 1) * size] for k in range(n_buckets)]


@pytest.mark.parametrize(("n", "n_items", "rounds", "extra"), [(30, 50, 3, 1), (17, 200, 2, 0)])
def test_rece_matches_the_plain_computation_value_and_gradients(
    n: int, n_items: int, rounds: int, extra: int
) -> None:
    hidden, table, targets = case(n, 6, n_items, seed=3)
    params = LossParams(rece_rounds=rounds, rece_extra_chunks=extra)
    mine = rece(LossInputs(hidden, targets, table, generator=seeded()), params)
    reference = plain_rece(hidden, table, targets, rounds, extra)
    assert_same(value_and_grads(mine, hidden, table), value_and_grads(reference, hidden, table))


def test_rece_with_windows_covering_everything_is_full_ce() -> None:
    hidden, table, targets = case(40, 8, 30, seed=4)
    params = LossParams(rece_rounds=3, rece_extra_chunks=100)  # every chunk sees every chunk
    mine = rece(LossInputs(hidden, targets, table, generator=seeded()), params)
    reference = full_ce(hidden, table, targets)
    assert_same(value_and_grads(mine, hidden, table), value_and_grads(reference, hidden, table))


def test_rece_listed_and_compared_exclusions_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU path lists the excluded pairs once; other devices compare chunks per block:
    the same loss and gradients (and, with 5 rounds, many pairs met in several rounds)."""
    hidden, table, targets = case(90, 4, 400, seed=7)
    targets[:10] = targets[10]  # repeated positives
    params = LossParams(rece_rounds=5, rece_extra_chunks=1)
    listed = rece(LossInputs(hidden, targets, table, generator=seeded(2)), params)
    listed_grads = value_and_grads(listed, hidden, table)
    monkeypatch.setattr(reduced_ce, "LISTED_ON", frozenset())
    compared = rece(LossInputs(hidden, targets, table, generator=seeded(2)), params)
    assert_same(value_and_grads(compared, hidden, table), listed_grads)
    reference = plain_rece(hidden, table, targets, 5, 1, seed=2)
    assert_same(value_and_grads(reference, hidden, table), listed_grads)


def test_rece_with_one_item_has_only_the_positive() -> None:
    hidden, table, targets = case(7, 3, 1, seed=8)
    loss = rece(LossInputs(hidden, targets, table, generator=seeded()), LossParams())
    value, grad_hidden, grad_table = value_and_grads(loss, hidden, table)
    assert value == 0.0 and not grad_hidden.any() and not grad_table.any()


def test_rece_buckets_follow_the_published_rule() -> None:
    assert rece_buckets(6_400, 1_000_000, 1) == int(math.sqrt(4 * 3 * 6_400))  # 277
    assert rece_buckets(6_400, 100, 8) == int(math.sqrt(4 * 17 * 100))


# --- scaled-ce and the logQ corrections ---------------------------------------------------


def sampled_case(n: int = 6, k: int = 5, n_items: int = 12) -> tuple[Case, Tensor]:
    hidden, table, targets = case(n, 4, n_items, seed=5)
    generator = seeded(6)
    draws = torch.randint(1, n_items, (n, k), generator=generator)
    return (hidden, table, targets), draws + (draws >= targets[:, None]).long()


def test_scaled_ce_is_sampled_ce_with_alpha_1_and_the_plain_formula_otherwise() -> None:
    (hidden, table, targets), negatives = sampled_case()
    inputs = LossInputs(hidden, targets, table, negatives)
    one = value_and_grads(scaled_ce(inputs, LossParams(scaled_ce_alpha=1.0)), hidden, table)
    assert_same(one, value_and_grads(sampled_ce(inputs, LossParams()), hidden, table))
    positive = (hidden * table[targets]).sum(1)
    negative = (hidden[:, None, :] * table[negatives]).sum(2)
    plain = -(positive - torch.log(positive.exp() + 7.0 * negative.exp().sum(1))).mean()
    mine = scaled_ce(inputs, LossParams(scaled_ce_alpha=7.0))
    assert_same(value_and_grads(mine, hidden, table), value_and_grads(plain, hidden, table))
    with pytest.raises(LossbenchError, match="alpha > 0"):
        scaled_ce(inputs, LossParams(scaled_ce_alpha=0.0))


def test_corrected_logq_matches_the_papers_formula() -> None:
    (hidden, table, targets), negatives = sampled_case()
    counts = torch.arange(13, dtype=torch.float64) + 1.0  # skewed frequencies
    counts[0] = 0.0
    inputs = LossInputs(hidden, targets, table, negatives, item_frequencies=counts)
    mine = sampled_ce(inputs, LossParams(logq_correction="corrected"))
    # As the authors write it: Q_j = cnt_j / (sum cnt - cnt_pos), loss = -log(e^pos / sum_j
    # e^(neg_j - log Q_j)), weighted by (1 - softmax([pos, neg - log Q - log K])[0]).detach().
    positive = (hidden * table[targets]).sum(1)
    negative = (hidden[:, None, :] * table[negatives]).sum(2)
    q = counts[negatives] / (counts.sum() - counts[targets])[:, None]
    corrected = negative - q.log()
    loss = -torch.log(positive.exp() / corrected.exp().sum(1))
    both = torch.cat([positive[:, None], corrected - math.log(negatives.shape[1])], 1)
    weight = (1.0 - torch.softmax(both, 1)[:, 0]).detach()
    plain = (loss * weight).mean()
    assert_same(value_and_grads(mine, hidden, table), value_and_grads(plain, hidden, table))
    with pytest.raises(LossbenchError, match="needs the sampler's item frequencies"):
        sampled_ce(
            LossInputs(hidden, targets, table, negatives), LossParams(logq_correction="corrected")
        )


def test_corrected_logq_with_uniform_negatives_is_the_standard_one_up_to_the_weight() -> None:
    # Uniform frequencies and every other item once as a negative: the standard correction
    # is then the full softmax CE, -log p; the corrected loss is w (-log p + log w + log 8)
    # with w = 1 - p (Q = 1/8 for each of the 8 other items, K = 8), and its gradients are the
    # standard loss's.
    hidden, table, targets = case(5, 4, 9, seed=7)
    others = torch.stack([torch.tensor([i for i in range(1, 10) if i != t]) for t in targets])
    uniform = torch.ones(10, dtype=torch.float64)
    log_q = torch.full((10,), -math.log(9), dtype=torch.float64)
    standard_inputs = LossInputs(hidden, targets, table, others, log_q=log_q)
    standard = sampled_ce(standard_inputs, LossParams())
    corrected_inputs = LossInputs(hidden, targets, table, others, item_frequencies=uniform)
    corrected = corrected_logq_ce(corrected_inputs)
    p = torch.softmax(hidden @ table[1:].T, 1).gather(1, (targets - 1)[:, None])[:, 0]
    w = 1.0 - p
    expected = (w * (-p.log() + w.log() + math.log(8))).mean()
    assert float(corrected.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    assert float(standard) == pytest.approx(float(full_ce(hidden, table, targets)), rel=1e-12)
    assert_same(
        value_and_grads(corrected, hidden, table)[1:], value_and_grads(standard, hidden, table)[1:]
    )


# --- the contract's declared needs, and --logq -------------------------------------------


def test_every_loss_declares_its_needs_and_the_trainer_adds_the_logq_ones() -> None:
    needs = {name: set(spec.declared) for name, spec in LOSSES.items()}
    assert needs["improved"] == needs["ce"] == needs["mlm"] == {"catalogue"}
    assert needs["sce"] == needs["rece"] == {"catalogue", "generator"}
    assert needs["sampled-ce"] == needs["scaled-ce"] == needs["bce"] == {"negatives"}
    anywhere = {"negatives_unseen": False, "sampler": "in-batch"}
    settings = {
        logq: resolve_loss(build_config(overrides={"loss": "sampled-ce", "logq": logq, **anywhere}))
        for logq in ("none", "standard", "corrected")
    }
    assert settings["none"].needs == {"negatives"}
    assert settings["standard"].needs == {"negatives", "log_q"}
    assert settings["standard"].logq is True  # "standard" is the correction `--logq` was
    assert settings["corrected"].needs == {"negatives", "item_frequencies"}
    assert settings["corrected"].params.logq_correction == "corrected"
    # A spec declares its needs; a default count that contradicts them is refused.
    spec = LossSpec(full_ce, "all", 0, "x", needs=frozenset({"catalogue"}))  # type: ignore[arg-type]
    assert spec.declared == {"catalogue"} and not spec.samples_negatives
    with pytest.raises(LossbenchError, match="needs 'negatives' has a default count > 0"):
        LossSpec(full_ce, "all", 5, "x", needs=frozenset({"catalogue"}))  # type: ignore[arg-type]


def test_corrected_logq_is_refused_where_it_does_not_apply() -> None:
    with pytest.raises(LossbenchError, match="--logq corrected does not apply"):
        resolve_loss(build_config(overrides={"loss": "sce", "logq": "corrected"}))
    with pytest.raises(LossbenchError, match="--logq corrected corrects a sampled softmax"):
        resolve_loss(
            build_config(overrides={"loss": "scaled-ce", "logq": "corrected", "negatives": 5})
        )


def test_the_bare_logq_flag_stays_the_standard_correction() -> None:
    assert logq_words(["train", "--logq"]) == ["train", "--logq=standard"]
    assert logq_words(["--logq", "--seed", "1"]) == ["--logq=standard", "--seed", "1"]
    assert logq_words(["--logq", "corrected", "--no-logq"]) == [
        "--logq",
        "corrected",
        "--logq=none",
    ]


def test_cli_says_in_one_line_when_corrected_logq_does_not_apply(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["train", "--loss", "improved", "--logq", "corrected", "--out", str(tmp_path / "r")],
    )
    # `lossbench` (cli.main) prints a LossbenchError as one line and exits 2.
    assert isinstance(result.exception, LossbenchError)
    assert "--logq corrected does not apply" in str(result.exception)


@pytest.fixture(scope="module")
def tiny() -> PreparedDataset:
    return make_synthetic_prepared(n_users=150, n_items=60, mean_length=12.0, seed=1)


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss": "sampled-ce", "sampler": "in-batch", "logq": "corrected", "negatives": 16},
        {"loss": "sce"},
        {"loss": "rece"},
    ],
)
def test_new_losses_train_end_to_end(
    overrides: dict[str, object], tiny: PreparedDataset, tmp_path: Path
) -> None:
    config = build_config(
        overrides={
            "negatives_unseen": False,
            "max_epochs": 2,
            "batch_size": 64,
            "model_settings": {"hidden_size": 16, "max_len": 20},
            **overrides,
        }
    )
    result = train_run(config, tiny, tmp_path)
    assert all(math.isfinite(row["loss"]) for row in result.history)
    assert result.history[1]["loss"] < result.history[0]["loss"]
    assert 0.0 < result.metrics["test"]["hr@20"] <= 1.0
    assert result.metrics["loss_backend"] is None  # not a full softmax
    recorded = json.loads((tmp_path / "config.json").read_text())
    assert recorded["loss_settings"]["logq"] == overrides.get("logq", False)


# --- the full softmax's backend -----------------------------------------------------------


def test_cpu_full_softmax_runs_the_chunked_backend() -> None:
    cpu = torch.device("cpu")
    assert softmax_backend(LOSSES["improved"], cpu) == "chunked"
    assert with_softmax_backend(LOSSES["mlm"], cpu).fn is full_softmax_ce
    assert softmax_backend(LOSSES["sce"], cpu) is None
    assert with_softmax_backend(LOSSES["bce"], cpu) is LOSSES["bce"]


def test_cce_parity_check_needs_cuda() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import parity

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: bench/gpu.py runs the real check")
    assert parity.cce_parity(torch.device("cpu"))["skipped"].startswith("needs CUDA")


def test_the_knobs_are_settings_with_the_authors_defaults() -> None:
    params = resolve_loss(build_config(overrides={"loss": "scaled-ce"})).params
    assert (params.scaled_ce_alpha, params.sce_bucket_size_y) == (100.0, 256)
    assert (params.rece_rounds, params.rece_extra_chunks) == (8, 1)
    overrides = {"loss": "rece", "rece_rounds": 2, "rece_extra_chunks": 0, "scaled_ce_alpha": 3}
    params = resolve_loss(build_config(overrides=overrides)).params
    assert (params.rece_rounds, params.rece_extra_chunks, params.scaled_ce_alpha) == (2, 0, 3.0)
    with pytest.raises(LossbenchError, match="scaled_ce_alpha"):
        build_config(overrides={"loss": "scaled-ce", "scaled_ce_alpha": 0})


def test_losses_command_lists_the_new_losses_with_their_papers() -> None:
    result = CliRunner().invoke(app, ["losses"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    lines = {line.split()[1]: line for line in result.output.splitlines() if "│" in line[:2]}
    assert "projected" in lines["sce"] and "Mezentsev" in lines["sce"]
    assert "projected" in lines["rece"] and "Gusak" in lines["rece"]
    assert "500" in lines["scaled-ce"] and "alpha" in lines["scaled-ce"]
