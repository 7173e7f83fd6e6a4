"""The model registry: name -> `ModelSpec` (how to configure and build a sequence model, and
what it can do).

Every model follows `lossbench.models.base.SequenceModel`; its abilities beyond that are the
declared fields of its `ModelSpec` (see its docstring and docs/models.md, "Writing a model").
To add one, write its module (a pydantic config with `extra="forbid"` plus an `nn.Module`
whose constructor takes `n_items` and the config's fields as keywords) and add one entry to
`MODELS`. A `ModelSpec` defined outside lossbench is found by `find_model` (entry points,
`package.module:name`, `./file.py:name`) through `lossbench.plugins`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import BaseModel, ValidationError
from torch import nn

from lossbench import plugins
from lossbench.errors import LossbenchError, validation_failure
from lossbench.models.base import (
    ModelSpec,
    PretrainFn,
    Pretraining,
    SequenceModel,
    from_config,
    mask_token_id,
)
from lossbench.models.bert4rec import BERT4Rec, BERT4RecConfig
from lossbench.models.gru4rec import GRU4Rec, GRU4RecConfig
from lossbench.models.s3rec import S3Rec, S3RecConfig
from lossbench.models.sasrec import SASRec, SASRecConfig
from lossbench.models.srgnn import SRGNN, SRGNNConfig

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

MODELS: dict[str, ModelSpec] = {
    "sasrec": ModelSpec(
        config_class=SASRecConfig,
        build=from_config(SASRec),
        default_loss="bce",
        description="causal self-attention with learned positions (Kang & McAuley 2018)",
        encodes_last_only=True,
        packed_parts=True,
    ),
    "bert4rec": ModelSpec(
        config_class=BERT4RecConfig,
        build=from_config(BERT4Rec),
        default_loss="mlm",
        description="bidirectional self-attention with a mask token (Sun et al. 2019)",
        bidirectional=True,
        uses_mask_token=True,
        encodes_last_only=True,
        packed_parts=True,
    ),
    "gru4rec": ModelSpec(
        config_class=GRU4RecConfig,
        build=from_config(GRU4Rec),
        default_loss="ce",
        description="item embedding -> GRU, a state per position (Hidasi et al. 2016)",
    ),
    "srgnn": ModelSpec(
        config_class=SRGNNConfig,
        build=from_config(SRGNN),
        default_loss="ce",
        description="sequence item graph, gated GNN, attention readout, causal (Wu et al. 2019)",
        encodes_last_only=True,
    ),
    "s3rec": ModelSpec(
        config_class=S3RecConfig,
        build=from_config(S3Rec),
        default_loss="bce",
        description="SASRec fine-tuned from self-supervised pre-training (Zhou et al. 2020)",
        encodes_last_only=True,
        packed_parts=True,
        pretrainable=True,
        # The S3Rec code's pre-training: 150 epochs (the study's), batch 100, Adam at 1e-3.
        pretraining=Pretraining(
            objective="four self-supervised objectives on items and their attributes "
            "(AAP, MIP, MAP, SP)",
            entry_point="lossbench.training.pretrain:pretrain_s3rec",
            epochs=150,
            batch_size=100,
            lr=1e-3,
        ),
    ),
}


def _setting_problem(where: str, message: str, detail: ErrorDetails) -> str:
    """'field: reason (got value)', or 'settings: reason' for the config as a whole."""
    got = f" (got {detail['input']!r})" if where else ""
    return f"{where or 'settings'}: {message}{got}"


def _as_model_spec(loaded: object, reference: str) -> ModelSpec:
    if isinstance(loaded, ModelSpec):
        return loaded
    raise LossbenchError(
        f"model {reference!r} is a {type(loaded).__name__}, not a lossbench.models.ModelSpec"
    )


def _could_be_model(value: object) -> bool:
    return isinstance(value, ModelSpec)


MODEL_PLUGINS = plugins.PluginKind("model", "models", MODELS, _as_model_spec, _could_be_model)


def find_model(name: str) -> plugins.Found[ModelSpec]:
    """The spec `name` refers to (built-in, entry point or import string) and its source."""
    return plugins.find(MODEL_PLUGINS, name)


def model_spec(name: str) -> ModelSpec:
    """The spec, or a LossbenchError listing the valid names."""
    return find_model(name).value


def model_config(name: str, overrides: Mapping[str, object] | None = None) -> BaseModel:
    """The model's defaults with `overrides` applied, validated by its config class."""
    return spec_settings(model_spec(name), name, overrides)


def spec_settings(
    spec: ModelSpec, name: str, overrides: Mapping[str, object] | None = None
) -> BaseModel:
    """`model_config` for a spec already resolved (`name` only for messages)."""
    settings = dict(overrides or {})
    known = spec.config_class.model_fields
    for key in settings:
        if key not in known:
            raise LossbenchError(
                f"model {name} has no setting {key!r}; its settings are: {', '.join(known)}"
            )
    try:
        return spec.config_class.model_validate(settings)
    except ValidationError as error:
        problems = validation_failure(error, _setting_problem)
        raise LossbenchError(f"invalid setting for model {name}: {problems}") from None


def build_model(
    name: str,
    n_items: int,
    overrides: Mapping[str, object] | None = None,
) -> tuple[nn.Module, BaseModel]:
    """Validate the settings and build the model; returns (model, resolved config)."""
    if n_items < 1:
        raise LossbenchError(f"model {name} needs at least one item, got n_items={n_items}")
    config = model_config(name, overrides)
    return model_spec(name).build(config, n_items), config


__all__ = [
    "MODELS",
    "MODEL_PLUGINS",
    "BERT4Rec",
    "BERT4RecConfig",
    "GRU4Rec",
    "GRU4RecConfig",
    "ModelSpec",
    "PretrainFn",
    "Pretraining",
    "SASRec",
    "SASRecConfig",
    "SequenceModel",
    "build_model",
    "find_model",
    "from_config",
    "mask_token_id",
    "model_config",
    "model_spec",
    "spec_settings",
]
