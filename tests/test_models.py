"""Sequence models and their registry: shapes, padding invariance, causality, the mask token,
finite padding rows, shared item table, and the errors a user sees."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from lossbench.errors import LossbenchError
from lossbench.models import MODELS, build_model, model_config
from lossbench.models.base import scoring_table

N_ITEMS = 30
SMALL = {"hidden_size": 8, "max_len": 12}
NAMES = ["sasrec", "bert4rec", "gru4rec"]


def make(name: str, **overrides: object) -> Any:
    """A tiny float64 model in eval mode (float64: invariances are checked to ~1e-12)."""
    torch.manual_seed(0)
    model, _ = build_model(name, N_ITEMS, {**SMALL, **overrides})
    return model.double().eval()


def histories() -> Tensor:
    """(3, 5) left-padded histories: full, partial, and one item."""
    return torch.tensor([[3, 7, 1, 30, 9], [0, 0, 4, 4, 12], [0, 0, 0, 0, 5]])


def left_pad(item_ids: Tensor, width: int) -> Tensor:
    padding = torch.zeros(item_ids.shape[0], width - item_ids.shape[1], dtype=item_ids.dtype)
    return torch.cat([padding, item_ids], dim=1)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_attributes(name: str) -> None:
    model = make(name)
    item_ids = histories()
    assert model(item_ids).shape == (3, 5, 8)
    assert model.predict_hidden(item_ids).shape == (3, 8)
    assert model.n_items == N_ITEMS
    assert model.max_len == 12
    assert model.bidirectional is MODELS[name].bidirectional
    extra = 1 if name == "bert4rec" else 0
    assert model.item_embedding.weight.shape == (N_ITEMS + 1 + extra, 8)
    assert scoring_table(model).shape == (N_ITEMS + 1, 8)


@pytest.mark.parametrize("name", NAMES)
def test_left_padding_changes_nothing(name: str) -> None:
    """A bucketed batch (width 5) and a full-width batch (width 12) agree at real positions."""
    model = make(name)
    item_ids = histories()
    is_item = item_ids != 0
    with torch.no_grad():
        narrow = model(item_ids)  # (3, 5, D)
        wide = model(left_pad(item_ids, 12))[:, -5:]  # (3, 5, D) the same columns
        torch.testing.assert_close(narrow[is_item], wide[is_item], rtol=0, atol=1e-12)
        torch.testing.assert_close(
            model.predict_hidden(item_ids),
            model.predict_hidden(left_pad(item_ids, 12)),
            rtol=0,
            atol=1e-12,
        )


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_predict_hidden_is_the_last_column(name: str) -> None:
    """SASRec's fast path (only the last query in the final block) changes nothing."""
    model = make(name)
    with torch.no_grad():
        expected = model(histories())[:, -1]
        torch.testing.assert_close(model.predict_hidden(histories()), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_causal_models_ignore_later_items(name: str) -> None:
    model = make(name)
    item_ids = histories()
    changed = item_ids.clone()
    changed[:, 3:] = torch.tensor([11, 22])  # only positions 3 and 4 differ
    with torch.no_grad():
        before, after = model(item_ids), model(changed)
    torch.testing.assert_close(before[:1, :3], after[:1, :3], rtol=0, atol=1e-12)
    assert not torch.allclose(before[:, 3:], after[:, 3:])


def test_bert4rec_sees_later_items_and_scores_the_mask_token() -> None:
    model = make("bert4rec")
    item_ids = histories()
    changed = item_ids.clone()
    changed[0, 4] = 11
    with torch.no_grad():
        assert not torch.allclose(model(item_ids)[0, 0], model(changed)[0, 0])
        # narrow batch: the mask token is appended, no history item dropped
        expected = model(torch.cat([item_ids, torch.full((3, 1), N_ITEMS + 1)], dim=1))[:, -1]
        torch.testing.assert_close(model.predict_hidden(item_ids), expected)
        # full-width batch: the oldest column makes room for the mask token
        full = left_pad(item_ids, 12)
        shifted = torch.cat([full[:, 1:], torch.full((3, 1), N_ITEMS + 1)], dim=1)
        torch.testing.assert_close(model.predict_hidden(full), model(shifted)[:, -1])
    assert model.mask_token == N_ITEMS + 1


@pytest.mark.parametrize("name", NAMES)
def test_padding_rows_stay_finite_in_training_and_eval(name: str) -> None:
    torch.manual_seed(0)
    model, _ = build_model(name, N_ITEMS, SMALL)
    item_ids = torch.tensor([[0, 0, 0, 0], [0, 0, 2, 3]])  # an all-padding row
    for train in (True, False):
        model.train(train)
        hidden = model(item_ids)
        assert torch.isfinite(hidden).all()
        hidden.square().sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.zero_grad()


@pytest.mark.parametrize("name", NAMES)
def test_item_table_is_shared_with_scoring(name: str) -> None:
    model = make(name)
    assert scoring_table(model).data_ptr() == model.item_embedding.weight.data_ptr()
    assert sum(p is model.item_embedding.weight for p in model.parameters()) == 1
    torch.testing.assert_close(model.item_embedding.weight[0], torch.zeros(8, dtype=torch.float64))


def test_transformer_init_and_inner_size() -> None:
    model = make("sasrec", inner_size=5, init_std=0.5)
    block = model.encoder.blocks[0]
    assert block.feed_forward.expand.weight.shape == (5, 8)
    assert torch.all(block.attention.norm.weight == 1)
    assert 0.3 < model.item_embedding.weight[1:].std().item() < 0.7
    assert make("sasrec").encoder.blocks[0].feed_forward.expand.out_features == 32  # 4 * D


def test_gru4rec_projects_to_the_embedding_width() -> None:
    model = make("gru4rec", hidden_size=6, embedding_size=8)
    assert model(histories()).shape == (3, 5, 8)


def test_gru4rec_without_biases_has_none_and_ignores_left_padding() -> None:
    """The study's GRU (no gate biases, a wider state projected back to the embeddings)."""
    model = make("gru4rec", hidden_size=12, embedding_size=8, bias=False)
    assert model.gru.bias is False
    assert not [name for name, _ in model.gru.named_parameters() if "bias" in name]
    assert (model.projection.in_features, model.projection.out_features) == (12, 8)
    item_ids = histories()
    is_item = item_ids != 0
    with torch.no_grad():
        narrow, wide = model(item_ids), model(left_pad(item_ids, 12))[:, -5:]
        # a one-item row: one GRU step from a zero state, whatever padding precedes it
        first = model.projection(model.gru(model.item_embedding(item_ids[2:, -1:]))[0])
    torch.testing.assert_close(narrow[is_item], wide[is_item], rtol=0, atol=1e-12)
    torch.testing.assert_close(narrow[2:, -1:], first, rtol=0, atol=1e-12)
    assert model_config("gru4rec").model_dump()["bias"] is True


def test_gru4rec_xavier_init_is_recboles() -> None:
    """xavier: embeddings ~ N(0, 2 / (rows + D)), the projection keeps nn.Linear's uniform
    +-1 / sqrt(H) init and bias; normal: both ~ N(0, init_std) and a zero bias."""
    torch.manual_seed(0)
    settings = {"hidden_size": 256, "embedding_size": 64, "max_len": 12}
    xavier, _ = build_model("gru4rec", 4000, {**settings, "init": "xavier"})
    normal, _ = build_model("gru4rec", 4000, {**settings, "init_std": 0.02})
    expected_std = (2.0 / (4001 + 64)) ** 0.5  # 0.0222
    assert abs(xavier.item_embedding.weight[1:].std().item() - expected_std) < 0.001
    assert torch.all(xavier.item_embedding.weight[0] == 0)
    bound = 1.0 / 256**0.5
    weight, bias = xavier.projection.weight, xavier.projection.bias
    assert weight.abs().max().item() <= bound and weight.std().item() > 0.9 * bound / 3**0.5
    assert bias.abs().max().item() <= bound and torch.any(bias != 0)
    assert abs(normal.projection.weight.std().item() - 0.02) < 0.001
    assert torch.all(normal.projection.bias == 0)
    assert model_config("gru4rec").model_dump()["init"] == "normal"


def test_defaults_are_the_studys_table_2() -> None:
    config = model_config("sasrec")
    assert config.model_dump() == {
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 2,
        "inner_size": None,
        "dropout": 0.5,
        "attention_dropout": 0.5,
        "max_len": 50,
        "init_std": 0.02,
    }
    assert {name: MODELS[name].default_loss for name in NAMES} == {
        "sasrec": "bce",
        "bert4rec": "mlm",
        "gru4rec": "ce",
    }
    assert model_config("sasrec", {"num_layers": 3}).model_dump()["num_layers"] == 3


def test_unknown_model_lists_the_valid_names() -> None:
    with pytest.raises(LossbenchError, match="unknown model 'transformer'.*sasrec, bert4rec"):
        build_model("transformer", N_ITEMS, {})


def test_unknown_setting_names_the_model_and_its_settings() -> None:
    with pytest.raises(LossbenchError) as caught:
        build_model("gru4rec", N_ITEMS, {"num_heads": 2})
    message = str(caught.value)
    assert "model gru4rec has no setting 'num_heads'" in message
    assert "hidden_size" in message and "\n" not in message


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"dropout": 1.5}, "dropout"),
        ({"hidden_size": "wide"}, "hidden_size"),
        ({"hidden_size": 10, "num_heads": 3}, "must divide hidden_size"),
    ],
)
def test_invalid_values_are_one_line_errors(overrides: dict[str, object], words: str) -> None:
    with pytest.raises(LossbenchError, match="invalid setting for model sasrec") as caught:
        build_model("sasrec", N_ITEMS, overrides)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_wider_batch_than_max_len_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds the model's max_len 12"):
        make("sasrec")(torch.ones(1, 13, dtype=torch.long))


@pytest.mark.parametrize("p", [0.5, 0.25, 0.375, 0.2])
def test_cpu_dropout_mask_keeps_each_element_with_probability_one_minus_p(p: float) -> None:
    from lossbench.models.dropout import keep_scale

    torch.manual_seed(1)
    shape = torch.Size((4001, 64))  # not a multiple of the elements one random word gives
    keep = keep_scale(shape, p, torch.float32)
    assert keep.shape == shape
    torch.testing.assert_close(keep[keep != 0], torch.full_like(keep[keep != 0], 1 / (1 - p)))
    kept = (keep != 0).float()
    assert abs(kept.mean().item() - (1 - p)) < 0.005
    # Every bit field of the random words (32 / k of them per word, sign bit included) and
    # every column are fair: no position in the layout is kept more often than another.
    flat = kept.reshape(-1)[: 4000 * 64]
    for period in (32, 64):
        by_slot = flat.reshape(-1, period).mean(0)
        assert (by_slot - (1 - p)).abs().max().item() < 0.03
    # Neighbouring elements (often fields of one word) are independent.
    pairs = flat.reshape(-1, 2)
    both = (pairs[:, 0] * pairs[:, 1]).mean().item()
    assert abs(both - (1 - p) ** 2) < 0.01


def test_dropout_bit_fields_are_exact_for_dyadic_p() -> None:
    from lossbench.models.dropout import _bit_field

    assert _bit_field(0.5) == (1, 1)
    assert _bit_field(0.25) == (2, 1)
    assert _bit_field(0.375) == (4, 6)
    assert _bit_field(1 / 256) == (8, 1)
    assert _bit_field(0.2) is None and _bit_field(0.1) is None


def test_cpu_dropout_keeps_one_minus_p_and_rescales() -> None:
    from lossbench.models.dropout import Dropout, attention

    torch.manual_seed(0)
    layer = Dropout(0.3)
    x = torch.ones(200, 500)
    out = layer(x)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.01
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.7))
    layer.eval()
    assert layer(x) is x
    # Attention without dropout is SDPA's; with dropout, rows still mix only allowed keys.
    q, k, v = (torch.randn(2, 1, 4, 3) for _ in range(3))
    mask = torch.ones(4, 4, dtype=torch.bool).tril()[None, None]
    plain = attention(q, k, v, mask, 0.0)
    reference = (
        torch.softmax((q @ k.transpose(-2, -1) / 3**0.5).masked_fill(~mask, float("-inf")), -1) @ v
    )
    torch.testing.assert_close(plain, reference)
    dropped = attention(q, k, v, mask, 0.999999)  # nearly everything dropped
    assert torch.isfinite(dropped).all()


def test_scoring_table_is_the_weight_itself_unless_there_are_special_rows() -> None:
    sasrec, bert4rec = make("sasrec"), make("bert4rec")
    # No slice when there is nothing to cut: a slice's backward costs a table-sized fill.
    assert scoring_table(sasrec) is sasrec.item_embedding.weight
    table = scoring_table(bert4rec)  # the mask row is cut off, storage shared
    assert table.shape[0] == N_ITEMS + 1 < bert4rec.item_embedding.weight.shape[0]
    assert table.data_ptr() == bert4rec.item_embedding.weight.data_ptr()
