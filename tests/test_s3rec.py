"""S3Rec: the four objectives on hand-computed values, batch building, pre-training then
fine-tuning on tiny synthetic data with attributes."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from lossbench.data.prepared import PreparedDataset
from lossbench.data.store import make_synthetic_prepared
from lossbench.errors import LossbenchError
from lossbench.models.s3rec import (
    OBJECTIVES,
    PretrainBatch,
    PretrainObjectives,
    S3Rec,
    S3RecConfig,
    S3RecPretrainer,
    attribute_prediction_loss,
    pairwise_sigmoid_loss,
)
from lossbench.models.sasrec import SASRec
from lossbench.training.pretrain import (
    make_batch,
    pretrain_s3rec,
    pretrain_samples,
    sample_absent_items,
)

TINY = {"hidden_size": 8, "num_layers": 1, "num_heads": 2, "max_len": 8}


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_attribute_prediction_loss_by_hand() -> None:
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (B=1, L=2, D=2)
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # attributes 1, 2
    targets = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    # only position 0: logits (1, 0), targets (1, 0) -> softplus(-1) + softplus(0)
    loss = attribute_prediction_loss(hidden, table, targets, torch.tensor([[True, False]]))
    assert loss.item() == pytest.approx(softplus(-1.0) + math.log(2.0))
    both = attribute_prediction_loss(hidden, table, targets, torch.tensor([[True, True]]))
    # position 1: logits (0, 2), targets (1, 1) -> softplus(0) + softplus(-2)
    assert both.item() == pytest.approx(softplus(-1.0) + 2 * math.log(2.0) + softplus(-2.0))


def test_pairwise_sigmoid_loss_by_hand() -> None:
    context = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positive = torch.tensor([[2.0, 0.0], [5.0, 5.0]])
    negative = torch.tensor([[0.0, 3.0], [0.0, -1.0]])
    where = torch.tensor([True, False])
    # row 0: sigmoid(2) - sigmoid(0), loss -log sigmoid(that); row 1 excluded
    distance = 1 / (1 + math.exp(-2.0)) - 0.5
    loss = pairwise_sigmoid_loss(context, positive, negative, where)
    assert loss.item() == pytest.approx(softplus(-distance))
    assert pairwise_sigmoid_loss(context, positive, negative, ~where | where).item() > loss.item()


def test_objective_weights_are_the_papers() -> None:
    losses = {name: torch.tensor(1.0) for name in ("aap", "mip", "map", "sp")}
    assert PretrainObjectives().total(losses).item() == pytest.approx(0.2 + 1 + 1 + 0.5)
    assert PretrainObjectives().mask_prob == 0.2


def test_sample_absent_items_never_hits_the_sequence() -> None:
    generator = torch.Generator().manual_seed(0)
    items = torch.tensor([[0, 1, 2, 3]] * 200 + [[2, 2, 0, 5]] * 200)
    drawn = sample_absent_items(items, 5, generator)
    assert set(drawn[:200].flatten().tolist()) == {4, 5}
    assert set(drawn[200:].flatten().tolist()) == {1, 3, 4}
    share = (drawn[:200] == 4).float().mean().item()
    assert 0.4 < share < 0.6  # uniform over the absent items
    full = sample_absent_items(torch.tensor([[1, 2, 3]]), 3, generator)
    assert 1 <= full.min() and full.max() <= 3  # nothing absent: any item


def hand_made_dataset() -> PreparedDataset:
    """Users' training items [1, 2, 3, 4] and [5, 6]; valid / test items 9, 10 (never used)."""
    counts = [0, 1, 2, 1, 0, 1, 1, 0, 0, 1, 1]  # attributes per item id 0..10
    return PreparedDataset(
        name="hand",
        n_items=10,
        train_offsets=np.array([0, 4, 6]),
        train_items=np.array([1, 2, 3, 4, 5, 6]),
        valid_items=np.array([9, 9]),
        test_items=np.array([10, 10]),
        attribute_offsets=np.concatenate([[0], np.cumsum(counts)]),
        attribute_ids=np.array([1, 1, 2, 3, 2, 3, 1, 2]),
        n_attributes=3,
    )


def test_samples_are_every_training_prefix() -> None:
    samples = pretrain_samples(hand_made_dataset(), 3, torch.device("cpu"))
    assert samples.windows.tolist() == [[2, 3, 4], [0, 5, 6]]  # last max_len training items
    assert samples.user.tolist() == [0, 0, 0, 1, 1]
    assert samples.length.tolist() == [1, 2, 3, 1, 2]
    assert samples.item_attributes[2].tolist() == [1.0, 1.0, 0.0]  # item 2: attributes 1, 2
    assert samples.item_attributes[0].sum() == 0
    generator = torch.Generator().manual_seed(0)
    batch = make_batch(samples, torch.arange(5), 0.5, generator)
    assert batch.items.tolist() == [[0, 0, 2], [0, 2, 3], [2, 3, 4], [0, 0, 5], [0, 5, 6]]
    real = batch.items != 0
    mask_id = 11
    assert (batch.masked_items[:, -1] == mask_id).all()  # the last item is always masked
    kept = real & (batch.masked_items != mask_id)
    assert torch.equal(batch.masked_items[kept], batch.items[kept])
    masked = batch.masked_items == mask_id
    clash = (batch.negative_items[:, :, None] == batch.items[:, None, :]).any(-1)
    assert not (clash & masked).any()  # MIP negatives are outside the sequence
    assert torch.equal(batch.attributes, samples.item_attributes[batch.items])
    assert batch.has_segment.tolist() == [False, True, True, False, True]
    for row in range(5):
        in_segment = batch.segment_context[row] == mask_id
        if not batch.has_segment[row]:
            continue
        assert 1 <= in_segment.sum() <= batch.items[row].ne(0).sum() // 2
        assert torch.equal(batch.positive_segment[row][in_segment], batch.items[row][in_segment])
        outside = real[row] & ~in_segment
        assert (batch.positive_segment[row][outside] == mask_id).all()
        assert (batch.negative_segment[row][outside] == mask_id).all()
    for field in ("items", "negative_segment", "positive_segment", "segment_context"):
        values = set(getattr(batch, field).flatten().tolist())
        assert not values & {9, 10}, field  # validation / test items never appear


def test_without_attributes_the_error_names_datasets_that_have_them() -> None:
    dataset = hand_made_dataset()
    plain = PreparedDataset(
        "plain", 10, dataset.train_offsets, dataset.train_items, dataset.valid_items,
        dataset.test_items,
    )  # fmt: skip
    with pytest.raises(LossbenchError, match="no item attributes.*lastfm"):
        pretrain_samples(plain, 3, torch.device("cpu"))


def test_finetune_model_is_sasrec_and_causal_while_pretraining_is_bidirectional() -> None:
    config = S3RecConfig.model_validate({**TINY, "dropout": 0.0, "attention_dropout": 0.0})
    torch.manual_seed(0)
    s3rec = S3Rec(20, **config.model_dump()).eval()
    torch.manual_seed(0)
    sasrec = SASRec(20, **config.model_dump()).eval()
    items = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 7]])
    torch.testing.assert_close(s3rec(items), sasrec(items), atol=0, rtol=0)
    assert S3Rec.bidirectional is False
    changed = items.clone()
    changed[:, -1] = 9
    torch.testing.assert_close(s3rec(changed)[:, :-1], s3rec(items)[:, :-1])
    pretrainer = S3RecPretrainer(s3rec, n_attributes=3, init_std=0.02).eval()
    assert (pretrainer.encode(changed)[:, :-1] - pretrainer.encode(items)[:, :-1]).abs().max() > 0


def tiny_synthetic() -> PreparedDataset:
    return make_synthetic_prepared(n_users=40, n_items=30, mean_length=8, n_attributes=6, seed=0)


def test_pretrain_then_finetune_end_to_end(tmp_path: Path) -> None:
    from lossbench.training.config import build_config
    from lossbench.training.loop import train_run

    dataset = tiny_synthetic()
    config = S3RecConfig.model_validate(TINY)
    log = io.StringIO()  # not a terminal: one line per epoch, no bar
    final = pretrain_s3rec(
        dataset, config, tmp_path, epochs=2, checkpoint_every=1, seed=0,
        console=Console(file=log, width=80),
    )  # fmt: skip
    assert final == tmp_path / "pretrained.pt"
    lines = [line.split()[:2] for line in log.getvalue().splitlines()]
    assert lines == [["epoch", "1/2"], ["epoch", "2/2"]], log.getvalue()
    names = {path.name for path in tmp_path.iterdir()}
    assert {"pretrain-epoch1.pt", "pretrain-epoch2.pt", "pretrained.pt"} <= names
    checkpoint = torch.load(final, weights_only=True)
    fresh = S3Rec(dataset.n_items, **config.model_dump())
    fresh.load_pretrained(final)
    for name, value in fresh.state_dict().items():
        torch.testing.assert_close(value, checkpoint["backbone"][name])
    epoch1 = torch.load(tmp_path / "pretrain-epoch1.pt", weights_only=True)["backbone"]
    moved = epoch1["item_embedding.weight"] - checkpoint["backbone"]["item_embedding.weight"]
    assert moved.abs().max() > 0  # the second epoch trained

    run = build_config(
        overrides={
            "dataset": "synthetic", "model": "s3rec", "loss": "bce", "init": final,
            "max_epochs": 1, "batch_size": 16, "device": "cpu", "model_settings": TINY,
        }
    )  # fmt: skip
    result = train_run(run, dataset, tmp_path / "run")
    assert 0.0 <= result.metrics["test"]["ndcg@10"] <= 1.0


def test_load_pretrained_errors(tmp_path: Path) -> None:
    dataset = tiny_synthetic()
    config = S3RecConfig.model_validate(TINY)
    final = pretrain_s3rec(dataset, config, tmp_path, epochs=1, checkpoint_every=5, seed=1)
    assert not (tmp_path / "pretrain-epoch1.pt").exists()
    with pytest.raises(LossbenchError, match="no pre-trained checkpoint"):
        S3Rec(dataset.n_items, **config.model_dump()).load_pretrained(tmp_path / "missing.pt")
    with pytest.raises(LossbenchError, match=f"{dataset.n_items} items but this dataset has 7"):
        S3Rec(7, **config.model_dump()).load_pretrained(final)
    wider = S3RecConfig.model_validate({**TINY, "hidden_size": 16})
    with pytest.raises(LossbenchError, match="does not fit this model's settings"):
        S3Rec(dataset.n_items, **wider.model_dump()).load_pretrained(final)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(LossbenchError, match="not a readable checkpoint"):
        S3Rec(dataset.n_items, **config.model_dump()).load_pretrained(junk)
    torch.save({"weights": torch.zeros(1)}, junk)
    with pytest.raises(LossbenchError, match="not an S3Rec pre-training checkpoint"):
        S3Rec(dataset.n_items, **config.model_dump()).load_pretrained(junk)


def test_pretrain_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lossbench.data.store as store  # the command imports it when it runs
    from lossbench.cli import app

    monkeypatch.setattr(store, "ensure_prepared", lambda data_dir, name: tiny_synthetic())
    out = tmp_path / "pre"
    arguments = ["pretrain", "--dataset", "synthetic", "--epochs", "1", "--out", str(out)]
    arguments += ["--hidden-size", "8", "--num-layers", "1", "--max-len", "8", "--device", "cpu"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "--init" in result.output and (out / "pretrained.pt").is_file()
    as_json = CliRunner().invoke(app, [*arguments, "--json"])  # again: the same checkpoint
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.stdout)
    assert document["checkpoint"] == str(out / "pretrained.pt") and document["model"] == "s3rec"
    assert document["fine_tune_command"].endswith(f"--init {out / 'pretrained.pt'}")
    assert "wrote" in as_json.stderr
    wrong = CliRunner().invoke(app, ["pretrain", "--dataset", "synthetic", "--model", "sasrec"])
    assert isinstance(wrong.exception, LossbenchError)
    assert "pre-trainable: s3rec" in str(wrong.exception)


def test_pretrainer_applies_each_objective_at_its_positions() -> None:
    samples = pretrain_samples(hand_made_dataset(), 4, torch.device("cpu"))
    batch = make_batch(samples, torch.arange(6), 0.5, torch.Generator().manual_seed(3))
    config = S3RecConfig.model_validate({**TINY, "max_len": 4, "dropout": 0.0})
    model = S3RecPretrainer(S3Rec(10, **config.model_dump()), 3, init_std=0.5).eval()
    with torch.no_grad():
        losses = model(batch)
        hidden = model.encode(batch.masked_items)
        table = model.attribute_embedding.weight[1:]
        masked = batch.masked_items == 11
        unmasked = (batch.masked_items != 0) & ~masked
        embed = model.backbone.item_embedding
        expected = {
            "aap": attribute_prediction_loss(
                model.heads["aap"](hidden), table, batch.attributes, unmasked
            ),
            "map": attribute_prediction_loss(
                model.heads["map"](hidden), table, batch.attributes, masked
            ),
            "mip": pairwise_sigmoid_loss(
                model.heads["mip"](hidden),
                embed(batch.items),
                embed(batch.negative_items),
                masked,
            ),
            "sp": pairwise_sigmoid_loss(
                model.heads["sp"](model.encode(batch.segment_context)[:, -1]),
                model.encode(batch.positive_segment)[:, -1],
                model.encode(batch.negative_segment)[:, -1],
                batch.has_segment,
            ),
        }
    assert masked.any() and unmasked.any()
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value, msg=name)


def test_pretrain_resumes_from_a_checkpoint(tmp_path: Path) -> None:
    dataset = tiny_synthetic()
    config = S3RecConfig.model_validate(TINY)
    pretrain_s3rec(dataset, config, tmp_path, epochs=2, checkpoint_every=1, seed=0)
    start = tmp_path / "pretrain-epoch1.pt"
    # lr ~ 0: the resumed epochs leave the weights where the checkpoint had them
    final = pretrain_s3rec(
        dataset, config, tmp_path, epochs=3, checkpoint_every=1, seed=0, lr=1e-12, resume=start
    )
    checkpoint = torch.load(final, weights_only=True)
    assert checkpoint["epoch"] == 3
    history = json.loads((tmp_path / "pretrain-history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert all(row["seconds"] > 0 for row in history)
    before = torch.load(start, weights_only=True)
    for part in ("backbone", "pretrainer"):  # heads too, not only the backbone
        for name, value in before[part].items():
            torch.testing.assert_close(checkpoint[part][name], value, rtol=0, atol=1e-8)
    with pytest.raises(LossbenchError, match="already at epoch 3; ask for more --epochs"):
        pretrain_s3rec(
            dataset, config, tmp_path, epochs=3, checkpoint_every=1, seed=0, resume=final
        )


def reference_batch(
    samples_windows: list[list[int]],
    lengths: list[int],
    all_items: list[int],
    n_items: int,
    users: list[int],
    ks: list[int],
    mask_prob: float,
    generator: torch.Generator,
    width: int,
) -> dict[str, list[list[int]]]:
    """S3Rec's batch built sample by sample in plain Python (as the original code does, one
    prefix at a time), from the same uniform draws `make_batch` takes, in the same order."""
    batch = len(users)
    mask_draws = torch.rand(batch, width, generator=generator).tolist()
    absent_draws = torch.rand(batch, width, generator=generator).tolist()
    length_draws, start_draws, other_draws = (
        torch.rand(batch, generator=generator).tolist() for _ in range(3)
    )
    mask_id, rows = n_items + 1, {name: [] for name in REFERENCE_FIELDS}
    for b, (user, k) in enumerate(zip(users, ks, strict=True)):
        window = samples_windows[user][width - lengths[user] :]  # the user's real items
        prefix = window[:k]
        pad = [0] * (width - k)
        absent = [i for i in range(1, n_items + 1) if i not in prefix]
        masked, negatives = list(prefix), list(prefix)
        for j in range(k):
            if mask_draws[b][width - k + j] < mask_prob or j == k - 1:
                masked[j] = mask_id
                negatives[j] = absent[int(absent_draws[b][width - k + j] * len(absent))]
        seg_len = 1 + int(length_draws[b] * max(k // 2, 1))  # 1..k // 2
        start = int(start_draws[b] * max(k - seg_len + 1, 1))  # 0..k - seg_len
        other = int(other_draws[b] * (len(all_items) - seg_len + 1))
        inside = [start <= j < start + seg_len for j in range(k)]
        rows["items"].append(pad + prefix)
        rows["masked_items"].append(pad + masked)
        rows["negative_items"].append(pad + negatives)
        rows["segment_context"].append(
            pad + [mask_id if inside[j] else prefix[j] for j in range(k)]
        )
        rows["positive_segment"].append(
            pad + [prefix[j] if inside[j] else mask_id for j in range(k)]
        )
        rows["negative_segment"].append(
            pad + [all_items[other + j - start] if inside[j] else mask_id for j in range(k)]
        )
    return rows


REFERENCE_FIELDS = (
    "items",
    "masked_items",
    "negative_items",
    "segment_context",
    "positive_segment",
    "negative_segment",
)


def test_vectorized_batch_equals_a_per_sample_reference() -> None:
    """Masks, MIP negatives and segments built on tensors are, draw for draw, those of a plain
    per-sample construction (every prefix of every user, several batches)."""
    dataset = tiny_synthetic()
    width = 6
    samples = pretrain_samples(dataset, width, torch.device("cpu"))
    windows, lengths = samples.windows.tolist(), samples.lengths.tolist()
    all_items = samples.all_items.tolist()
    order = torch.randperm(len(samples.user), generator=torch.Generator().manual_seed(1))
    checked = 0
    for seed, sample_ids in enumerate(order.split(37)):
        made = make_batch(samples, sample_ids, 0.3, torch.Generator().manual_seed(seed))
        expected = reference_batch(
            windows,
            lengths,
            all_items,
            dataset.n_items,
            samples.user[sample_ids].tolist(),
            samples.length[sample_ids].tolist(),
            0.3,
            torch.Generator().manual_seed(seed),
            width,
        )
        has_segment = (samples.length[sample_ids] >= 2).tolist()
        for name in REFERENCE_FIELDS:
            rows = getattr(made, name).tolist()
            if name.startswith(("segment", "positive", "negative_segment")):
                # one-item prefixes take no part in SP (has_segment): their rows are free
                rows = [row for row, keep in zip(rows, has_segment, strict=True) if keep]
                expected[name] = [
                    row for row, keep in zip(expected[name], has_segment, strict=True) if keep
                ]
            assert rows == expected[name], name
        assert made.has_segment.tolist() == has_segment
        checked += len(sample_ids)
    assert checked == len(samples.user) > 100  # every prefix of every user


def per_sample_losses(model: S3RecPretrainer, batch: PretrainBatch) -> dict[str, float]:
    """The four objective sums computed one sample at a time, each sequence encoded alone
    without padding and each position scored in plain Python (as the original code's loop
    over a batch would, one prefix at a time)."""
    totals = dict.fromkeys(OBJECTIVES, 0.0)
    attributes = model.attribute_embedding.weight[1:]  # (A, D)
    embed = model.backbone.item_embedding.weight

    def attribute_bce(state: torch.Tensor, targets: list[float]) -> float:
        total = 0.0
        for row, target in zip(attributes, targets, strict=True):
            probability = 1.0 / (1.0 + math.exp(-float(state @ row)))
            total -= math.log(probability if target else 1.0 - probability)
        return total

    def pairwise(context: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> float:
        sigmoid = torch.sigmoid
        return softplus(-float(sigmoid(context @ positive) - sigmoid(context @ negative)))

    for b in range(len(batch.items)):
        k = int((batch.items[b] != 0).sum())

        def alone(sequence: torch.Tensor, k: int = k) -> torch.Tensor:
            return model.encode(sequence[None, -k:])[0]  # (k, D), no padding at all

        hidden = alone(batch.masked_items[b])
        for j in range(k):
            column = batch.items.shape[1] - k + j
            targets = batch.attributes[b, column].tolist()
            if int(batch.masked_items[b, column]) == model.mask_id:
                totals["map"] += attribute_bce(model.heads["map"](hidden[j]), targets)
                positive, negative = (
                    embed[batch.items[b, column]],
                    embed[batch.negative_items[b, column]],
                )
                totals["mip"] += pairwise(model.heads["mip"](hidden[j]), positive, negative)
            else:
                totals["aap"] += attribute_bce(model.heads["aap"](hidden[j]), targets)
        if k >= 2:
            context = model.heads["sp"](alone(batch.segment_context[b])[-1])
            positive = alone(batch.positive_segment[b])[-1]
            totals["sp"] += pairwise(context, positive, alone(batch.negative_segment[b])[-1])
    return totals


def test_objectives_equal_a_per_sample_reference() -> None:
    """The batched objectives (sequences packed to their real items, segment prediction's
    final block on the last column only) equal a per-sample computation, over batches wider
    than one packed part and a two-block encoder."""
    dataset = tiny_synthetic()
    config = S3RecConfig.model_validate({**TINY, "num_layers": 2, "dropout": 0.0})
    config = config.model_copy(update={"attention_dropout": 0.0})
    samples = pretrain_samples(dataset, config.max_len, torch.device("cpu"))
    model = S3RecPretrainer(S3Rec(dataset.n_items, **config.model_dump()), 6, init_std=0.3)
    model.eval()
    order = torch.randperm(len(samples.user), generator=torch.Generator().manual_seed(0))
    for seed, sample_ids in enumerate(order[:180].split(90)):  # 3 x 90 SP rows: two parts
        batch = make_batch(samples, sample_ids, 0.3, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            losses = model(batch)
            expected = per_sample_losses(model, batch)
        assert batch.has_segment.any() and (batch.masked_items == model.mask_id).any()
        for name in OBJECTIVES:
            assert float(losses[name]) == pytest.approx(expected[name], rel=1e-5), name


def test_last_states_equal_the_last_column_of_the_full_encoding() -> None:
    """`TransformerEncoder.last_states` (packed, final block on the last column) gives the
    full encoder's last column, causal or not, and through its padded fallback."""
    from lossbench.models.transformer import TransformerEncoder

    torch.manual_seed(0)
    encoder = TransformerEncoder(2, 16, 2, 32, 0.0, 0.0, causal=True).eval()
    lengths = torch.randint(1, 10, (150,))  # three packed parts
    is_item = torch.arange(9)[None, :] >= (9 - lengths)[:, None]  # (150, 9) left-padded
    hidden = torch.randn(150, 9, 16) * is_item[..., None]
    with torch.no_grad():
        for causal in (True, False):
            expected = encoder(hidden, is_item, causal=causal)[:, -1]  # (150, 16)
            torch.testing.assert_close(encoder.last_states(hidden, is_item, causal), expected)
            everything = torch.ones_like(is_item)  # no padding: the padded path
            torch.testing.assert_close(
                encoder.last_states(hidden, everything, causal),
                encoder(hidden, everything, causal=causal)[:, -1],
            )
