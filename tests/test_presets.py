"""Presets: the study's settings per model, and the layers that override them."""

from __future__ import annotations

from pathlib import Path

import torch

from lossbench.models import build_model
from lossbench.training.config import build_config


def test_study_s3rec_gru4rec_is_the_studys_gru() -> None:
    """One GRU layer, state 128 without gate biases, projected to 64-wide item embeddings,
    RecBole's init."""
    config = build_config(overrides={"model": "gru4rec", "loss": "improved"})
    assert config.model_settings == {
        "hidden_size": 128,
        "embedding_size": 64,
        "num_layers": 1,
        "bias": False,
        "init": "xavier",
        "dropout": 0.5,
        "max_len": 50,
        "init_std": 0.02,
    }
    model, _ = build_model("gru4rec", 40, config.model_settings)
    gru = model.gru
    assert (gru.input_size, gru.hidden_size, gru.num_layers, gru.bias) == (64, 128, 1, False)
    assert (model.projection.in_features, model.projection.out_features) == (128, 64)
    assert model.item_embedding.weight.shape == (41, 64)
    assert model(torch.tensor([[0, 3, 4]])).shape == (1, 3, 64)


def test_per_model_settings_leave_other_models_alone() -> None:
    sasrec = build_config(overrides={"model": "sasrec"}).model_settings
    assert (sasrec["hidden_size"], sasrec["num_layers"], sasrec["num_heads"]) == (64, 2, 2)
    assert "bias" not in build_config(overrides={"model": "srgnn"}).model_settings
    # study-aprec has no GRU4Rec of its own: the shared settings apply
    aprec = build_config(overrides={"model": "gru4rec", "preset": "study-aprec"})
    assert (aprec.model_settings["hidden_size"], aprec.model_settings["num_layers"]) == (50, 2)


def test_flags_override_the_per_model_settings() -> None:
    config = build_config(
        overrides={"model": "gru4rec", "model_settings": {"num_layers": 2, "hidden_size": 64}}
    )
    settings = config.model_settings
    assert (settings["num_layers"], settings["hidden_size"], settings["bias"]) == (2, 64, False)


def test_the_earlier_gru_is_four_settings_away(tmp_path: Path) -> None:
    """The TOML in docs/protocol.md gives back the 2 x 64 GRU with biases, weight for weight."""
    toml_file = tmp_path / "earlier.toml"
    toml_file.write_text(
        '[model_settings]\nnum_layers = 2\nhidden_size = 64\nbias = true\ninit = "normal"\n'
    )
    settings = build_config(toml_file=toml_file, overrides={"model": "gru4rec"}).model_settings
    torch.manual_seed(0)
    earlier, _ = build_model("gru4rec", 40, settings)
    torch.manual_seed(0)
    plain, _ = build_model("gru4rec", 40, {"num_layers": 2, "hidden_size": 64})
    assert isinstance(earlier.projection, torch.nn.Identity)
    for (name, mine), (_, theirs) in zip(
        earlier.state_dict().items(), plain.state_dict().items(), strict=True
    ):
        assert torch.equal(mine, theirs), name
