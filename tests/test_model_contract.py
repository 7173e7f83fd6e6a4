"""The model contract: every ability a model has is a declared field of its `ModelSpec`, the
built-in models declare theirs truthfully, and the loop reads the declarations only (a model
outside the package trains with nothing but its spec)."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from lossbench.data.prepared import PreparedDataset
from lossbench.data.store import make_synthetic_prepared
from lossbench.errors import LossbenchError
from lossbench.models import MODELS, ModelSpec, build_model, from_config, mask_token_id
from lossbench.training.config import build_config
from lossbench.training.loop import train_run

DOCS = Path(__file__).resolve().parents[1] / "docs" / "models.md"


@pytest.fixture(scope="module")
def dataset() -> PreparedDataset:
    return make_synthetic_prepared(n_users=100, n_items=40, mean_length=10.0, seed=5)


def documented_model() -> dict[str, Any]:
    """Run the example of docs/models.md ("Writing a model"); its names."""
    code = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    assert code is not None
    names: dict[str, Any] = {}
    exec(compile(code.group(1), str(DOCS), "exec"), names)  # noqa: S102 - our own docs
    return names


def quick(model: str, **overrides: Any) -> dict[str, Any]:
    return {"model": model, "max_epochs": 2, "batch_size": 32, **overrides}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_built_in_models_declare_what_they_can_do(name: str) -> None:
    spec = MODELS[name]
    model, config = build_model(name, 30, {"hidden_size": 8, spec.max_len_setting: 12})
    forward = inspect.signature(model.forward).parameters
    assert ("last_only" in forward) == spec.encodes_last_only
    assert hasattr(model, "forward_parts") == spec.packed_parts
    assert hasattr(model, "load_pretrained") == spec.pretrainable
    assert (getattr(model, "mask_token", None) == mask_token_id(30)) == spec.uses_mask_token
    assert spec.max_len(config) == 12


def test_the_documented_model_trains_with_nothing_but_its_spec(
    dataset: PreparedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No `max_len` setting (it names its own), no `last_only`, no `forward_parts`."""
    spec = documented_model()["MEAN_POOL"]
    monkeypatch.setitem(MODELS, "meanpool", spec)
    for loss in ("improved", "ce", "bce"):  # every position, the last only, negatives
        config = build_config(overrides=quick("meanpool", loss=loss, negatives=3))
        result = train_run(config, dataset, tmp_path / loss)
        assert result.metrics["model"] == "meanpool"
        assert 0.0 < result.metrics["test"]["hr@20"] <= 1.0
        assert result.config["model_settings"]["history"] == 50


class Recording(torch.nn.Module):
    """Has `last_only` and `forward_parts` whatever its spec says, and records their use."""

    calls: list[str] = []

    def __init__(self, n_items: int, *, hidden_size: int, history: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.item_embedding = torch.nn.Embedding(n_items + 1, hidden_size, padding_idx=0)

    def forward(self, item_ids: Tensor, last_only: bool = False) -> Tensor:
        Recording.calls.append("last_only" if last_only else "forward")
        hidden = self.item_embedding(item_ids).cumsum(1)  # (B, L, D)
        return hidden[:, -1:] if last_only else hidden

    def forward_parts(self, inputs: list[Tensor]) -> list[Tensor]:
        Recording.calls.append("forward_parts")
        return [self.item_embedding(ids).cumsum(1) for ids in inputs]

    def predict_hidden(self, item_ids: Tensor) -> Tensor:
        return self.item_embedding(item_ids).cumsum(1)[:, -1]


class RecordingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden_size: int = 8
    history: int = 12


@pytest.mark.parametrize("declared", [False, True])
def test_the_loop_uses_an_ability_only_when_it_is_declared(
    declared: bool, dataset: PreparedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = ModelSpec(
        config_class=RecordingConfig,
        build=from_config(Recording),
        default_loss="ce",
        description="records its calls",
        encodes_last_only=declared,
        packed_parts=declared,
        max_len_setting="history",
    )
    monkeypatch.setitem(MODELS, "recording", spec)
    for loss in ("ce", "improved"):  # the last position alone; every position
        Recording.calls = []
        train_run(build_config(overrides=quick("recording", loss=loss)), dataset, tmp_path / loss)
        used = {"ce": "last_only", "improved": "forward_parts"}[loss]
        assert (used in Recording.calls) == declared, (loss, set(Recording.calls))


def test_init_and_its_warning_follow_pretrainable(
    dataset: PreparedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    with pytest.raises(LossbenchError, match="takes no --init checkpoint; models that do: s3rec"):
        train_run(build_config(overrides=quick("sasrec", init="x.pt")), dataset, tmp_path)
    spec = dataclasses.replace(MODELS["gru4rec"], pretrainable=True)
    monkeypatch.setitem(MODELS, "gru4rec", spec)
    console = Console(record=True, width=200)
    train_run(build_config(overrides=quick("gru4rec", max_epochs=1)), dataset, tmp_path, console)
    assert "gru4rec without --init starts from random weights" in console.export_text()


def test_a_spec_is_checked_when_it_is_made() -> None:
    base: dict[str, Any] = {
        "config_class": RecordingConfig,
        "build": from_config(Recording),
        "default_loss": "ce",
        "description": "test",
    }
    with pytest.raises(LossbenchError, match="max_len_setting 'max_len' is not one of"):
        ModelSpec(**base)  # RecordingConfig calls it `history`
    with pytest.raises(LossbenchError, match="uses_mask_token"):
        ModelSpec(**base, max_len_setting="history", bidirectional=True)


def test_every_spec_field_is_documented_in_one_place() -> None:
    text = DOCS.read_text()
    section = text[text.index("## Writing a model") :]
    docstring = ModelSpec.__doc__ or ""
    for spec_field in dataclasses.fields(ModelSpec):
        assert f"| `{spec_field.name}` |" in section, spec_field.name
        assert f"`{spec_field.name}`" in docstring, spec_field.name


def test_the_contract_is_exported() -> None:
    import lossbench.models as models

    for name in ("ModelSpec", "SequenceModel", "from_config", "mask_token_id", "MODELS"):
        assert name in models.__all__
    assert dataclasses.is_dataclass(ModelSpec)


def test_the_loop_does_not_probe_models() -> None:
    """No name checks, attribute probing or signature inspection in the training code."""
    root = Path(__file__).resolve().parents[1] / "src" / "lossbench" / "training"
    for name in ("loop.py", "step.py", "setup.py", "entry.py"):
        source = (root / name).read_text()
        assert "getattr(" not in source and "inspect." not in source, name
        assert '== "s3rec"' not in source and '["max_len"]' not in source, name
