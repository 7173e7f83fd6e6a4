"""Losses: hand-computed values, parity with F.cross_entropy, chunked softmax, edge cases."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lossbench.errors import LossbenchError
from lossbench.losses import LOSSES, LossInputs, LossParams, full_softmax, resolve_loss
from lossbench.losses.binary import bce, binary_kernel, gbce, gbce_beta
from lossbench.losses.full_softmax import (
    chunked_logsumexp,
    full_softmax_ce,
    fused_block,
    fused_rows,
)
from lossbench.losses.item_chunks import item_block
from lossbench.losses.negatives import sampled_scores

E = math.e
PARAMS = LossParams()

# Five items in 2-d. Row 0 (padding) scores 100 with h = (1, 0): it must never count.
TABLE = torch.tensor(
    [[100.0, 100.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 1.0]],
    dtype=torch.float64,
)


def one_position() -> LossInputs:
    # h = (1, 0): scores of items 1..5 are 1, 0, -1, 0, 1. Target 2 (score 0); negatives
    # 3 and 5 (scores -1 and 1).
    return LossInputs(
        hidden=torch.tensor([[1.0, 0.0]], dtype=torch.float64),
        targets=torch.tensor([2]),
        item_embeddings=TABLE,
        negatives=torch.tensor([[3, 5]]),
    )


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


HAND_VALUES = {
    # -(log sig(0) + (log sig(1) + log sig(-1)) / 2); (1 + e^-1)(1 + e) = 2 + e + 1/e
    "bce": math.log(2) + 0.5 * math.log(2 + E + 1 / E),
    # alpha = 2 / 4, beta = 0.5 * (0.75 * (1 - 2) + 2) = 0.625; negatives summed
    "gbce": 0.625 * math.log(2) + math.log(2 + E + 1 / E),
    "bpr": 0.5 * math.log(2 + E + 1 / E),
    # weights e^-1 / (e + 1/e), e / (e + 1/e); e^-1 sig(1) + e sig(-1) = 1
    "bpr-max": math.log(E + 1 / E),
    # negative 3: sig(-1) + sig(1) = 1; negative 5: sig(1) + sig(1)
    "top1": 0.5 + sig(1),
    "top1-max": (1 / E * 1 + E * 2 * sig(1)) / (E + 1 / E),
    # softmax over (0, -1, 1), class 0
    "sampled-ce": math.log(1 + E + 1 / E),
    # the same with the negatives' sum times alpha = 100
    "scaled-ce": math.log(1 + 100 * (E + 1 / E)),
    # logsumexp over items 1..5 (1, 0, -1, 0, 1) minus the target's 0; never the padding row
    "ce": math.log(2 + 2 * E + 1 / E),
    "improved": math.log(2 + 2 * E + 1 / E),
    "cce": math.log(2 + 2 * E + 1 / E),
    "mlm": math.log(2 + 2 * E + 1 / E),
}


# Losses that draw random projections need a generator: tested in test_losses_at_scale.py.
PROJECTED = {"sce", "rece"}


def test_registry_names_and_defaults() -> None:
    assert set(LOSSES) == set(HAND_VALUES) | PROJECTED
    assert LOSSES["cce"] is LOSSES["improved"]
    softmax = {LOSSES[name].fn for name in ("ce", "improved", "mlm")}
    assert softmax == {full_softmax_ce}
    expected = {
        "bce": ("all", 1),
        "ce": ("last", 0),
        "improved": ("all", 0),
        "bpr": ("last", 10),
        "bpr-max": ("last", 10),
        "top1": ("last", 10),
        "top1-max": ("last", 10),
        "sampled-ce": ("all", 128),
        "gbce": ("all", 256),
        "mlm": ("masked", 0),
        "scaled-ce": ("all", 500),
        "sce": ("all", 0),
        "rece": ("all", 0),
    }
    for name, (positions, negatives) in expected.items():
        assert (LOSSES[name].positions, LOSSES[name].negatives) == (positions, negatives)
    assert PARAMS.gbce_t == 0.75


def test_resolve_loss_lists_valid_names() -> None:
    assert resolve_loss("bpr-max") is LOSSES["bpr-max"]
    with pytest.raises(LossbenchError, match="valid losses: bce, ce, improved"):
        resolve_loss("bce2")


@pytest.mark.parametrize("name", sorted(HAND_VALUES))
def test_hand_computed_values(name: str) -> None:
    value = LOSSES[name].fn(one_position(), PARAMS)
    assert value.item() == pytest.approx(HAND_VALUES[name], rel=1e-12)


@pytest.mark.parametrize("name", sorted(HAND_VALUES))
def test_mean_over_positions(name: str) -> None:
    first = one_position()
    second = LossInputs(
        hidden=torch.tensor([[0.0, 2.0]], dtype=torch.float64),
        targets=torch.tensor([5]),
        item_embeddings=TABLE,
        negatives=torch.tensor([[1, 4]]),
    )
    both = LossInputs(
        hidden=torch.cat([first.hidden, second.hidden]),
        targets=torch.cat([first.targets, second.targets]),
        item_embeddings=TABLE,
        negatives=torch.cat([first.negatives, second.negatives]),  # type: ignore[list-item]
    )
    fn = LOSSES[name].fn
    expected = (fn(first, PARAMS) + fn(second, PARAMS)) / 2
    torch.testing.assert_close(fn(both, PARAMS), expected)


def random_batch(seed: int, n_items: int = 20, dim: int = 6) -> tuple[torch.Tensor, ...]:
    """Left-padded (B, L) targets with hidden states (B, L, D) and a table, float64."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 5, dim, generator=generator, dtype=torch.float64)
    table = torch.randn(n_items + 1, dim, generator=generator, dtype=torch.float64)
    targets = torch.randint(1, n_items + 1, (3, 5), generator=generator)
    targets[0, :2] = 0  # padding on the left
    targets[2, :4] = 0
    return hidden, table, targets


def test_improved_equals_cross_entropy_on_all_non_padding_positions() -> None:
    hidden, table, targets = random_batch(0)
    hidden.requires_grad_(True)
    table.requires_grad_(True)
    real = targets > 0
    inputs = LossInputs(hidden=hidden[real], targets=targets[real], item_embeddings=table)
    ours = LOSSES["improved"].fn(inputs, PARAMS)
    logits = hidden @ table[1:].T  # (B, L, n_items)
    reference = F.cross_entropy(logits.reshape(-1, 20), (targets - 1).reshape(-1), ignore_index=-1)
    torch.testing.assert_close(ours, reference)
    ours_grads = torch.autograd.grad(ours, (hidden, table))
    reference_grads = torch.autograd.grad(reference, (hidden, table))
    for mine, theirs in zip(ours_grads, reference_grads, strict=True):
        torch.testing.assert_close(mine, theirs)


def test_ce_equals_cross_entropy_on_last_position() -> None:
    hidden, table, targets = random_batch(1)
    inputs = LossInputs(hidden=hidden[:, -1], targets=targets[:, -1], item_embeddings=table)
    reference = F.cross_entropy(hidden[:, -1] @ table[1:].T, targets[:, -1] - 1)
    torch.testing.assert_close(LOSSES["ce"].fn(inputs, PARAMS), reference)


def plain_softmax_ce(hidden: Tensor, table: Tensor, targets: Tensor) -> Tensor:
    """The reference: N x n_items logits materialized, F.cross_entropy over items 1..n."""
    return F.cross_entropy(hidden @ table[1:].T, targets - 1)


def take_item_chunks(monkeypatch: pytest.MonkeyPatch, block: int = 3) -> None:
    """Send every catalogue to the item-chunked path, with blocks of `block` items."""
    monkeypatch.setattr(full_softmax, "DEFAULT_MAX_FUSED_ITEMS", 0)
    monkeypatch.setattr(full_softmax, "item_block", lambda n_positions, device: block)


# 20 items, 3 x 5 = 15 positions; item path with blocks of 3 items: chunks of 1 block (any
# chunk below 45 logits), 2 and 4 blocks, and all 20 items in one chunk.
@pytest.mark.parametrize(
    ("item_chunks", "chunk"),
    [(True, 1), (True, 15 * 6), (True, 15 * 12), (True, 10**6), (False, 1), (False, 10**6)],
)
def test_chunked_softmax_matches_plain_values_and_grads(
    item_chunks: bool, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if item_chunks:
        take_item_chunks(monkeypatch)
    hidden, table, targets = random_batch(2)
    flat_hidden = hidden.reshape(-1, 6).clone().requires_grad_(True)
    flat_table = table.clone().requires_grad_(True)
    flat_targets = targets.reshape(-1).clamp(min=1)
    inputs = LossInputs(hidden=flat_hidden, targets=flat_targets, item_embeddings=flat_table)
    plain = plain_softmax_ce(flat_hidden, flat_table, flat_targets)
    chunked = full_softmax_ce(inputs, LossParams(softmax_chunk=chunk))
    torch.testing.assert_close(chunked, plain, rtol=1e-12, atol=1e-12)
    plain_grads = torch.autograd.grad(plain, (flat_hidden, flat_table))
    chunked_grads = torch.autograd.grad(chunked, (flat_hidden, flat_table))
    for mine, theirs in zip(chunked_grads, plain_grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)
    assert torch.all(chunked_grads[1][0] == 0)  # the padding row gets no gradient


@pytest.mark.parametrize("chunk", [64 * 20, 150 * 20, 10**6])  # 4, 2 and 1 position chunks
def test_fused_softmax_over_position_chunks_matches_plain(chunk: int) -> None:
    generator = torch.Generator().manual_seed(9)
    hidden = torch.randn(200, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    table = torch.randn(21, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(1, 21, (200,), generator=generator)
    plain = plain_softmax_ce(hidden, table, targets)
    fused = full_softmax_ce(LossInputs(hidden, targets, table), LossParams(softmax_chunk=chunk))
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    for mine, theirs in zip(
        torch.autograd.grad(fused * 3.0, (hidden, table)),  # an upstream scale reaches both
        torch.autograd.grad(plain * 3.0, (hidden, table)),
        strict=True,
    ):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


def test_fused_softmax_gradcheck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(full_softmax, "fused_block", lambda n_items, *_: 2)  # chunks of 2 positions
    generator = torch.Generator().manual_seed(5)
    table = torch.randn(8, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    hidden = torch.randn(5, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([1, 7, 3, 3, 2])

    def fused(h: Tensor, t: Tensor) -> Tensor:
        return full_softmax_ce(LossInputs(h, targets, t), LossParams(softmax_chunk=14))

    assert torch.autograd.gradcheck(fused, (hidden, table))


def test_softmax_chunk_must_be_positive() -> None:
    hidden, table, targets = random_batch(1)
    inputs = LossInputs(
        hidden=hidden[:, -1], targets=targets[:, -1].clamp(min=1), item_embeddings=table
    )
    with pytest.raises(LossbenchError, match="softmax_chunk"):
        full_softmax_ce(inputs, LossParams(softmax_chunk=0))


def test_chunked_logsumexp_gradcheck() -> None:
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    rows = torch.randn(7, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    # Chunks of 4 items in blocks of 2: items 0-3 and 4-6, blocks 0-1, 2-3, 4-5 and 6.
    assert torch.autograd.gradcheck(lambda h, r: chunked_logsumexp(h, r, 4, 2), (hidden, rows))


@pytest.mark.parametrize(("item_chunks", "chunk"), [(True, 16), (False, 10**6)])
def test_chunked_softmax_under_bf16_autocast_accumulates_in_fp32(
    item_chunks: bool, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if item_chunks:
        take_item_chunks(monkeypatch, block=7)
    hidden, table, targets = random_batch(4, n_items=50, dim=8)
    hidden32 = hidden.reshape(-1, 8).float().requires_grad_(True)
    table32 = table.float().requires_grad_(True)
    inputs = LossInputs(
        hidden=hidden32, targets=targets.reshape(-1).clamp(min=1), item_embeddings=table32
    )
    reference = full_softmax_ce(inputs, PARAMS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = full_softmax_ce(inputs, LossParams(softmax_chunk=chunk))
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, reference, rtol=2e-2, atol=2e-2)
    grads = torch.autograd.grad(chunked, (hidden32, table32))
    reference_grads = torch.autograd.grad(reference, (hidden32, table32))
    for mine, theirs in zip(grads, reference_grads, strict=True):
        assert mine.dtype == torch.float32
        torch.testing.assert_close(mine, theirs, rtol=5e-2, atol=2e-2)


@pytest.mark.parametrize("name", sorted(HAND_VALUES))
@pytest.mark.parametrize("item_chunks", [True, False])
def test_all_padding_gives_connected_zero(
    name: str, item_chunks: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if item_chunks:
        take_item_chunks(monkeypatch)
    hidden = torch.zeros(0, 2, dtype=torch.float64, requires_grad=True)
    table = TABLE.clone().requires_grad_(True)
    inputs = LossInputs(
        hidden=hidden,
        targets=torch.zeros(0, dtype=torch.int64),
        item_embeddings=table,
        negatives=torch.zeros(0, 3, dtype=torch.int64),
    )
    value = LOSSES[name].fn(inputs, LossParams(softmax_chunk=1))
    assert value.item() == 0.0
    assert value.grad_fn is not None
    value.backward()
    assert table.grad is not None and torch.all(table.grad == 0)


def test_gbce_identities() -> None:
    inputs = one_position()
    positive, negative = sampled_scores(inputs, "gbce")
    summed = binary_kernel(positive, negative, beta=1.0, negative_reduction="sum")
    assert gbce(inputs, LossParams(gbce_t=0.0)).item() == summed.item()
    single = LossInputs(
        hidden=inputs.hidden,
        targets=inputs.targets,
        item_embeddings=TABLE,
        negatives=torch.tensor([[3]]),
    )
    assert gbce(single, LossParams(gbce_t=0.0)).item() == bce(single, PARAMS).item()


def test_gbce_beta_by_hand() -> None:
    assert gbce_beta(2, 5, 0.75) == pytest.approx(0.625)  # alpha = 0.5
    assert gbce_beta(2, 5, 1.0) == pytest.approx(0.5)  # t = 1: beta = alpha
    assert gbce_beta(256, 12102, 0.0) == pytest.approx(1.0)
    with pytest.raises(LossbenchError):
        gbce_beta(1, 1, 0.75)


def test_binary_losses_stay_finite_for_extreme_scores() -> None:
    inputs = LossInputs(
        hidden=torch.tensor([[300.0, 0.0]]),
        targets=torch.tensor([3]),  # score -300
        item_embeddings=TABLE.float(),
        negatives=torch.tensor([[1, 5]]),  # scores 300
    )
    for name in ("bce", "gbce", "bpr", "bpr-max", "top1", "top1-max", "sampled-ce"):
        assert torch.isfinite(LOSSES[name].fn(inputs, PARAMS)), name


@pytest.mark.parametrize("name", ["bce", "gbce", "bpr", "bpr-max", "top1", "top1-max"])
def test_sampled_losses_require_negatives(name: str) -> None:
    inputs = LossInputs(hidden=TABLE[1:2], targets=torch.tensor([1]), item_embeddings=TABLE)
    with pytest.raises(LossbenchError, match="negative"):
        LOSSES[name].fn(inputs, PARAMS)


@pytest.mark.parametrize(
    ("hidden_scale", "unshifted"),
    [(1.0, True), (60.0, False)],  # logits bounded well below exp's overflow, or not
)
def test_fused_softmax_with_and_without_max_shift_matches_plain(
    hidden_scale: float, unshifted: bool
) -> None:
    generator = torch.Generator().manual_seed(11)
    hidden = torch.randn(96, 6, generator=generator, dtype=torch.float64) * hidden_scale
    hidden.requires_grad_(True)
    table = torch.randn(31, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(1, 31, (96,), generator=generator)
    assert full_softmax._exp_cannot_overflow(hidden, table[1:]) is unshifted
    plain = plain_softmax_ce(hidden, table, targets)
    fused = full_softmax_ce(LossInputs(hidden, targets, table), LossParams(softmax_chunk=30 * 32))
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    for mine, theirs in zip(
        torch.autograd.grad(fused, (hidden, table)),
        torch.autograd.grad(plain, (hidden, table)),
        strict=True,
    ):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


def test_fused_softmax_without_shift_is_accurate_for_very_negative_logits() -> None:
    """Every logit of half the positions near -70, just inside the no-shift bound: exp stays
    a normal float32, and loss and gradients match the plain (max-shifted) computation."""
    generator = torch.Generator().manual_seed(12)
    direction = torch.nn.functional.normalize(torch.randn(8, generator=generator), dim=0)
    table = direction.repeat(41, 1) + 0.01 * torch.randn(41, 8, generator=generator)
    hidden = -70.0 * direction.repeat(40, 1)
    hidden[::2] *= -0.01  # half the positions are ordinary
    hidden.requires_grad_(True)
    table.requires_grad_(True)
    targets = torch.randint(1, 41, (40,), generator=generator)
    assert full_softmax._exp_cannot_overflow(hidden, table[1:])
    plain = plain_softmax_ce(hidden, table, targets)
    fused = full_softmax_ce(LossInputs(hidden, targets, table), LossParams(softmax_chunk=10**6))
    assert torch.isfinite(fused)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(
        torch.autograd.grad(fused, (hidden, table)),
        torch.autograd.grad(plain, (hidden, table)),
        strict=True,
    ):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def test_fused_chunks_are_whole_blocks() -> None:
    assert fused_block(12_101) == 64  # 86 positions, rounded down to 64
    assert fused_block(3_646) == 256  # 287 -> 256
    assert fused_block(30_000) == 64  # at least 64
    assert fused_block(10) == 104_832  # 104,857 -> a multiple of 64
    bf16 = torch.bfloat16  # 4M logits, 8 MB
    assert fused_block(12_101, dtype=bf16) == 320 and fused_block(3_646, dtype=bf16) == 1088
    assert fused_rows(1 << 20, 12_101) == 64
    assert fused_rows(1 << 22, 12_101) == 320  # 346 -> five blocks
    assert fused_rows(1 << 22, 3_646) == 1024  # 1,150 -> four blocks
    assert fused_rows(5, 10) == fused_rows(1 << 20, 10) == 104_832  # at least one block
    assert item_block(6_400) == 256 and item_block(256) == 4096 and item_block(0) > 0
    cuda = torch.device("cuda")  # a GPU's blocks are a whole batch: 64M logits
    assert fused_block(12_101, cuda) == 5_504 and fused_block(1_000_000, cuda) == 64
    assert item_block(6_400, cuda) == 10_240


def bit_exact_run(
    chunk: int, precision: str, n_positions: int, n_items: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Loss and both gradients of the full softmax on a fixed random batch."""
    generator = torch.Generator().manual_seed(21)
    dtype = torch.float64 if precision == "fp64" else torch.float32
    table = (torch.randn(n_items + 1, 16, generator=generator) * 0.3).to(dtype)
    hidden = torch.randn(n_positions, 16, generator=generator).to(dtype)
    targets = torch.randint(1, n_items + 1, (n_positions,), generator=generator)
    table.requires_grad_(True)
    hidden.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        value = full_softmax_ce(LossInputs(hidden, targets, table), LossParams(softmax_chunk=chunk))
    value.backward()
    assert hidden.grad is not None and table.grad is not None
    return value.detach(), hidden.grad, table.grad


def assert_same_bits_for_chunks(chunks: list[int], precision: str, n_items: int) -> None:
    first, *others = [bit_exact_run(c, precision, 333, n_items) for c in chunks]
    for chunk, run in zip(chunks[1:], others, strict=True):
        for name, mine, theirs in zip(("loss", "hidden", "table"), run, first, strict=True):
            assert torch.equal(mine, theirs), f"{name} differs with chunk {chunk}"


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


@pytest.mark.parametrize("precision", ["fp32", "fp64", "bf16"])
@pytest.mark.parametrize("item_chunks", [False, True])
def test_softmax_results_are_the_same_bits_whatever_the_chunk(
    threads: int, precision: str, item_chunks: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunk sets speed and memory, never a bit. 333 positions in blocks of 64 (the last
    ragged); chunks of 1, 2, 3 and 6 blocks, or a chunk below one block. Items: 700 in
    blocks of 64, chunks of 1, 2, 5 and 11 blocks."""
    n_items = 700
    if item_chunks:
        take_item_chunks(monkeypatch, block=64)
        chunks = [333 * 64, 1, 333 * 128, 333 * 320, 10**8]
    else:
        monkeypatch.setattr(full_softmax, "fused_block", lambda n_items, *_: 64)
        chunks = [n_items * 64, 1, n_items * 128, n_items * 192, 10**8]
    assert_same_bits_for_chunks(chunks, precision, n_items)


def test_softmax_results_are_the_same_bits_whatever_the_chunk_at_a_real_shape(
    threads: int,
) -> None:
    """beauty-s3rec's catalogue, default blocks (64 positions): 1M logits (the default
    chunk), 2M, 4M (320 positions), 16M (all 333)."""
    chunks = [1 << 20, 1 << 21, 1 << 22, 1 << 24]
    assert_same_bits_for_chunks(chunks, "fp32", 12_101)
