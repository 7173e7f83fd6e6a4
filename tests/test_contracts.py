"""Declared contracts: a model's pre-training and abilities (`ModelSpec`), a loss's needs
(`LossSpec`), and the direction of the shared self-attention model. The loop and the CLI read
the declarations; a plugin that declares something gets it, one that lies fails in one line."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn
from typer.testing import CliRunner

from lossbench.data.prepared import PreparedDataset
from lossbench.data.store import make_synthetic_prepared
from lossbench.errors import LossbenchError
from lossbench.losses import CATALOGUE, LOSSES, SAMPLED, LossInputs, LossParams, LossSpec
from lossbench.losses.contract import check_loss
from lossbench.models import MODELS, ModelSpec, Pretraining, build_model, from_config
from lossbench.models.base import packed_parts_encoder, pretrainable_model, sequence_model
from lossbench.models.bert4rec import BERT4Rec
from lossbench.models.sasrec import SASRec
from lossbench.models.self_attention import SelfAttentionModel
from lossbench.models.transformer import TransformerEncoder, attention_mask, padding_computed
from lossbench.training.config import build_config
from lossbench.training.entry import plan_entry
from lossbench.training.loop import train_run
from lossbench.training.pretrainers import PretrainSettings, pretrain_routine


@pytest.fixture(scope="module")
def dataset() -> PreparedDataset:
    return make_synthetic_prepared(n_users=60, n_items=30, mean_length=8.0, seed=3)


# --- a model declares its pre-training ------------------------------------------------------


class ToyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden_size: int = 8
    max_len: int = 10


class Toy(nn.Module):
    """Mean of the items seen so far; `load_pretrained` reads a saved state dict."""

    def __init__(self, n_items: int, *, hidden_size: int, max_len: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.item_embedding = nn.Embedding(n_items + 1, hidden_size, padding_idx=0)

    def forward(self, item_ids: Tensor) -> Tensor:
        real = (item_ids != 0).unsqueeze(-1).float()  # (B, L, 1)
        return (self.item_embedding(item_ids) * real).cumsum(1) / real.cumsum(1).clamp(min=1.0)

    def predict_hidden(self, item_ids: Tensor) -> Tensor:
        return self(item_ids)[:, -1]

    def load_pretrained(self, path: Path) -> None:
        self.load_state_dict(torch.load(path, weights_only=True))


# The pre-training routine a plugin names by "module:function": it records how it was called
# and writes a checkpoint of constant item rows that `Toy.load_pretrained` reads.
ROUTINE = """
import json
from pathlib import Path

import torch


def pretrain(dataset, config, out_dir, epochs, checkpoint_every, seed, device="auto",
             batch_size=1, lr=1.0, *, console=None, resume=None):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    call = {"dataset": dataset.name, "settings": config.model_dump(), "epochs": epochs,
            "checkpoint_every": checkpoint_every, "seed": seed, "batch_size": batch_size,
            "lr": lr}
    (out_dir / "call.json").write_text(json.dumps(call))
    rows = torch.full((dataset.n_items + 1, config.hidden_size), 0.25)
    rows[0] = 0.0
    torch.save({"item_embedding.weight": rows}, out_dir / "pretrained.pt")
    return out_dir / "pretrained.pt"
"""


def toy_spec(entry_point: str) -> ModelSpec:
    return ModelSpec(
        config_class=ToyConfig,
        build=from_config(Toy),
        default_loss="ce",
        description="a toy that pre-trains",
        pretrainable=True,
        pretraining=Pretraining(
            objective="constant item rows", entry_point=entry_point, epochs=7, batch_size=3, lr=0.5
        ),
    )


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelSpec:
    """The toy model registered as `toy`, its routine importable as `toy_routine:pretrain`."""
    (tmp_path / "toy_routine.py").write_text(textwrap.dedent(ROUTINE))
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = toy_spec("toy_routine:pretrain")
    monkeypatch.setitem(MODELS, "toy", spec)
    return spec


def test_a_plugin_model_declaring_pretraining_is_pretrained_and_fine_tuned(
    toy: ModelSpec, dataset: PreparedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lossbench.data.store as store  # the command imports it when it runs
    from lossbench.cli import app

    monkeypatch.setattr(store, "ensure_prepared", lambda data_dir, name: dataset)
    out = tmp_path / "pre"
    arguments = ["pretrain", "--dataset", "synthetic", "--model", "toy", "--out", str(out)]
    result = CliRunner().invoke(app, [*arguments, "--lr", "0.1", "--hidden-size", "4"])
    assert result.exit_code == 0, result.output
    call = json.loads((out / "call.json").read_text())
    # The declared defaults, the flag given over them, the validated model settings.
    assert (call["epochs"], call["batch_size"], call["checkpoint_every"]) == (7, 3, 10)
    assert call["lr"] == 0.1 and call["settings"] == {"hidden_size": 4, "max_len": 10}
    assert "--model toy --init" in " ".join(result.output.split())

    overrides = {"model": "toy", "model_settings": {"hidden_size": 4}}
    config = build_config(overrides={**overrides, "init": str(out / "pretrained.pt")})
    model = plan_entry(config, tmp_path / "run").build_model(dataset.n_items)
    assert torch.all(sequence_model(model).item_embedding.weight[1:] == 0.25)


def test_pretraining_is_read_from_the_spec_not_the_name(
    toy: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lossbench.cli import app

    wrong = CliRunner().invoke(app, ["pretrain", "--dataset", "synthetic", "--model", "gru4rec"])
    assert isinstance(wrong.exception, LossbenchError)
    assert "model gru4rec has no pre-training; pre-trainable: s3rec, toy" in str(wrong.exception)
    # The built-in S3Rec declares its published settings; they fill what a run leaves out.
    s3rec = MODELS["s3rec"].pretraining
    assert s3rec is not None and s3rec.entry_point.endswith("pretrain:pretrain_s3rec")
    settings = PretrainSettings.for_model(s3rec, epochs=3)
    assert (settings.epochs, settings.batch_size, settings.lr) == (3, 100, 1e-3)
    with pytest.raises(LossbenchError, match="toy's pre-training toy_routine:missing: module"):
        pretrain_routine("toy", dataclasses.replace(s3rec, entry_point="toy_routine:missing"))
    with pytest.raises(LossbenchError, match="no_such_module:run does not import"):
        pretrain_routine("toy", dataclasses.replace(s3rec, entry_point="no_such_module:run"))


def test_a_pretraining_spec_is_checked_when_it_is_made() -> None:
    with pytest.raises(LossbenchError, match="must declare pretrainable=True"):
        dataclasses.replace(toy_spec("toy_routine:pretrain"), pretrainable=False)
    with pytest.raises(LossbenchError, match="is not 'package.module:function'"):
        toy_spec("toy_routine.pretrain")


# --- abilities: checked once, typed --------------------------------------------------------


def test_a_declared_ability_the_module_lacks_fails_in_one_line() -> None:
    gru, _ = build_model("gru4rec", 20, {"hidden_size": 8})
    claims = dataclasses.replace(MODELS["gru4rec"], packed_parts=True, pretrainable=True)
    with pytest.raises(LossbenchError, match="model gru4rec declares packed_parts but its module"):
        packed_parts_encoder(gru, claims, "gru4rec")
    with pytest.raises(LossbenchError, match="GRU4Rec has no load_pretrained"):
        pretrainable_model(gru, claims, "gru4rec")
    with pytest.raises(LossbenchError, match="model gru4rec does not declare packed_parts"):
        packed_parts_encoder(gru, MODELS["gru4rec"], "gru4rec")
    with pytest.raises(LossbenchError, match="does not follow lossbench.models.SequenceModel"):
        sequence_model(nn.Linear(2, 2), "linear")
    sasrec, _ = build_model("sasrec", 20, {"hidden_size": 8})
    assert packed_parts_encoder(sasrec, MODELS["sasrec"]) is sasrec


# --- a loss declares its needs --------------------------------------------------------------


def test_a_loss_declaring_it_needs_item_counts_receives_them(
    dataset: PreparedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer supplies exactly the declared inputs, whatever the count of negatives."""
    received: dict[str, list[Any]] = {"counts": [], "log_q": [], "negatives": []}

    def weighted_ce(inputs: LossInputs, params: LossParams) -> Tensor:
        received["counts"].append(inputs.item_counts)
        received["log_q"].append(inputs.log_q)
        received["negatives"].append(inputs.negatives)
        logits = inputs.hidden @ inputs.item_embeddings[1:].T  # (N, n_items)
        return torch.nn.functional.cross_entropy(logits, inputs.targets - 1)

    needs = frozenset({"catalogue", "item_counts"})
    spec = LossSpec(weighted_ce, "all", 0, "CE that reads item counts", needs=needs)  # type: ignore[arg-type]
    monkeypatch.setitem(LOSSES, "counted", spec)
    config = build_config(overrides={"model": "gru4rec", "loss": "counted", "max_epochs": 1})
    train_run(config, dataset, tmp_path / "counted")
    counts = received["counts"][0]
    assert counts is not None and counts.dtype == torch.int64
    assert counts.shape == (dataset.n_items + 1,) and int(counts[0]) == 0
    assert int(counts.sum()) == int((dataset.train_lengths).sum())
    assert all(value is None for value in received["log_q"] + received["negatives"])

    # A sampled loss that needs the sampler's log Q gets it without --logq; no counts.
    for values in received.values():
        values.clear()
    declared = frozenset({"negatives", "log_q"})
    sampled = LossSpec(weighted_ce, "all", 4, "reads log Q", needs=declared)  # type: ignore[arg-type]
    monkeypatch.setitem(LOSSES, "with-log-q", sampled)
    config = build_config(overrides={"model": "gru4rec", "loss": "with-log-q", "max_epochs": 1})
    train_run(config, dataset, tmp_path / "log-q")
    log_q, negatives = received["log_q"][0], received["negatives"][0]
    assert negatives is not None and negatives.shape[1] == 4
    assert log_q is not None and log_q.shape == (dataset.n_items + 1,)
    assert received["counts"][0] is None


def test_a_step_without_a_declared_input_is_refused_when_it_is_made() -> None:
    from lossbench.training.setup import resolve_loss
    from lossbench.training.step import TrainingStep

    model, _ = build_model("sasrec", 20, {"hidden_size": 8})
    loss = resolve_loss(build_config(overrides={"loss": "bce"}))
    with pytest.raises(LossbenchError, match="loss bce needs negatives but the step was given"):
        TrainingStep(model, MODELS["sasrec"], loss, None, torch.Generator())


def test_check_loss_feeds_the_declared_inputs() -> None:
    seen: list[Tensor | None] = []

    def counted(inputs: LossInputs, params: LossParams) -> Tensor:
        seen.append(inputs.item_counts)
        return LOSSES["improved"].fn(inputs, params)

    needs = frozenset({"catalogue", "item_counts"})
    spec = LossSpec(counted, "all", 0, "reads counts", needs=needs)  # type: ignore[arg-type]
    assert all(result.passed for result in check_loss(spec))
    assert seen and all(counts is not None and int(counts[0]) == 0 for counts in seen)


def test_a_loss_spec_is_checked_when_it_is_made() -> None:
    fn = LOSSES["bce"].fn
    with pytest.raises(LossbenchError, match="unknown need 'popularity'; the needs are"):
        LossSpec(fn, "all", 1, "x", needs=frozenset({"negatives", "popularity"}))  # type: ignore[arg-type]
    with pytest.raises(LossbenchError, match="a loss that needs 'negatives' has a default"):
        LossSpec(fn, "all", 0, "x", needs=SAMPLED)
    with pytest.raises(LossbenchError, match="describe the negative sampler"):
        LossSpec(fn, "all", 0, "x", needs=CATALOGUE, accepts=frozenset({"log_q"}))
    with pytest.raises(LossbenchError, match="needs neither 'catalogue' nor 'negatives'"):
        LossSpec(fn, "all", 0, "x", needs=frozenset({"generator"}))


def test_the_scalable_losses_declare_their_contract() -> None:
    assert LOSSES["sampled-ce"].accepts == {"log_q", "item_frequencies"}
    assert LOSSES["sampled-ce"].run_needs(128, "corrected") == {"negatives", "item_frequencies"}
    assert LOSSES["scaled-ce"].run_needs(500, True) == {"negatives"}  # accepts no logQ
    assert LOSSES["sce"].run_needs(0) == LOSSES["rece"].run_needs(0) == {"catalogue", "generator"}


# --- one self-attention model, a declared direction ----------------------------------------


def test_the_declared_direction_changes_the_attention_mask() -> None:
    is_item = torch.tensor([[False, True, True, True]])
    causal, both = attention_mask(is_item, causal=True)[0, 0], attention_mask(is_item, False)[0, 0]
    assert not causal[1, 2] and both[1, 2]  # an earlier query sees a later item only both ways
    assert torch.equal(causal, both.tril())
    assert SASRec.direction == "causal" and not SASRec.bidirectional
    assert BERT4Rec.direction == "bidirectional" and BERT4Rec.bidirectional
    for name, model_class in (("sasrec", SASRec), ("bert4rec", BERT4Rec)):
        model, _ = build_model(name, 20, {"hidden_size": 8, "max_len": 6, "dropout": 0.0})
        assert type(model) is model_class and isinstance(model, SelfAttentionModel)
        assert model.encoder.causal is (model_class.direction == "causal")
        items = torch.tensor([[0, 3, 4, 5, 6, 7]])
        changed = items.clone()
        changed[0, -1] = 9
        with torch.no_grad():
            moved = (model.eval()(changed)[:, :-1] - model(items)[:, :-1]).abs().max()
        assert (float(moved) > 0) is model_class.bidirectional


def test_both_directions_keep_the_checkpoint_parameter_names() -> None:
    names = {
        "item_embedding.weight",
        "positional_input.position_embedding.weight",
        "positional_input.norm.weight",
        "positional_input.norm.bias",
    }
    for part in ("attention.qkv", "attention.out", "attention.norm", "feed_forward.expand"):
        names |= {f"encoder.blocks.0.{part}.weight", f"encoder.blocks.0.{part}.bias"}
    names |= {"encoder.blocks.0.feed_forward.contract.weight"}
    names |= {"encoder.blocks.0.feed_forward.contract.bias"}
    names |= {
        "encoder.blocks.0.feed_forward.norm.weight",
        "encoder.blocks.0.feed_forward.norm.bias",
    }
    settings = {"hidden_size": 8, "num_layers": 1, "max_len": 6}
    for name in ("sasrec", "bert4rec", "s3rec"):
        model, _ = build_model(name, 20, settings)
        assert set(model.state_dict()) == names, name


def test_padding_is_computed_by_a_setting_of_the_encoder_not_a_global() -> None:
    assert "pack_padding" not in vars(TransformerEncoder)  # no class-level switch
    torch.manual_seed(0)
    model, _ = build_model("sasrec", 20, {"hidden_size": 8, "max_len": 6})
    other, _ = build_model("sasrec", 20, {"hidden_size": 8, "max_len": 6})
    model = model.double().eval()
    items = torch.tensor([[0, 0, 3, 4, 5, 6], [0, 0, 0, 0, 1, 2]])
    packed = model(items)
    with padding_computed(model):
        assert not model.encoder.packs(torch.device("cpu"))
        assert other.encoder.packs(torch.device("cpu"))  # another model is not touched
        padded = model(items)
    assert model.encoder.packs(torch.device("cpu"))
    real = items != 0
    torch.testing.assert_close(packed[real], padded[real], rtol=1e-12, atol=1e-12)
    unpacked = SASRec(
        20, hidden_size=8, num_layers=2, num_heads=2, inner_size=None, dropout=0.5,
        attention_dropout=0.5, max_len=6, init_std=0.02, pack_padding=False,
    )  # fmt: skip
    assert not unpacked.encoder.packs(torch.device("cpu"))


# --- settings read somewhere, or gone -------------------------------------------------------


def test_a_protocol_written_with_max_length_still_loads_and_it_defines_nothing() -> None:
    """`max_length` was never read by preparation: a registry that holds it loads, and two
    preparations that differed only in it are the same preparation."""
    from pydantic import ValidationError

    from lossbench.data.preprocess import protocol_identity
    from lossbench.data.registry import Protocol

    protocol = Protocol.model_validate({"user_core": 5, "max_length": 200})
    assert protocol == Protocol(user_core=5) and "max_length" not in Protocol.model_fields
    assert "max_length" not in protocol_identity(protocol)
    with pytest.raises(ValidationError, match="max_lenght"):  # other keys are still checked
        Protocol.model_validate({"max_lenght": 200})


def test_no_unchecked_casts_or_name_tests_decide_an_ability() -> None:
    """Abilities are taken through the checked views of `lossbench.models.base`, and whether
    a model pre-trains is read from its spec, anywhere in the package."""
    root = Path(__file__).resolve().parents[1] / "src" / "lossbench"
    abilities = ("SequenceModel", "LastOnlyEncoder", "PackedPartsEncoder", "Pretrainable")
    for path in root.rglob("*.py"):
        source = path.read_text()
        for ability in abilities:
            assert f"cast({ability}" not in source, (path, ability)
        assert "PRETRAINABLE" not in source and "isinstance(step.model_settings" not in source
