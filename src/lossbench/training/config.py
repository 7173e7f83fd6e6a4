"""Training configuration, resolved in layers: defaults -> preset -> TOML file -> CLI flags.

`TrainConfig` is what the user asks for; `resolve()` fills in what the chosen loss and model
imply (positions, negatives, model defaults) so that a run records exactly what it used.
"""

from __future__ import annotations

import codecs
import sys
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lossbench.data.splits import SplitName, SplitSpec, check_quantiles
from lossbench.errors import LossbenchError, joined, one_of, validation_failure
from lossbench.evaluation.seen import SeenRule, SeenTargets, seen_rule
from lossbench.losses.base import NegativeSamplerName, Positions, SamplerName
from lossbench.models import model_spec
from lossbench.training.names import Names
from lossbench.training.presets import DATASET_SETTINGS, DEFAULT_PRESET, PER_MODEL, PRESETS

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# auto: resolved by the plan to fp32 or bf16 (`run_precision`)
Precision = Literal["fp32", "bf16", "fp64", "auto"]
DeviceName = Literal["auto", "cpu", "cuda"]
Batching = Literal["bucket", "random"]


class TrainConfig(BaseModel):
    """Every setting of one training run. Unknown names fail at config time."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    dataset: str = "synthetic"
    model: str = "sasrec"  # a registered name, an entry point or an import string
    loss: str | None = None  # as `model`; None: the model's published loss
    preset: str = DEFAULT_PRESET
    model_settings: dict[str, Any] = Field(default_factory=dict)

    # Data split (see `data/splits.py`) and the order control.
    split: SplitName = "loo"
    valid_quantile: float = Field(default=0.8, gt=0.0, lt=1.0)  # temporal: validation time
    test_quantile: float = Field(default=0.9, gt=0.0, lt=1.0)  # temporal: test time
    shuffle_train: bool = False  # train on each user's window in a random (seeded) order

    # Loss settings. None means "the loss's published default" (see `lossbench losses`).
    positions: Positions | None = None
    negatives: int | None = Field(default=None, ge=0)
    sampler: NegativeSamplerName = "uniform"
    # logQ correction of the sampled softmax (sampled-ce): True (or "standard") Yi et al.'s,
    # "corrected" Khrylchenko et al.'s (positive out of the normaliser, weighted).
    logq: bool | Literal["corrected"] = False
    # Draw negatives only outside the user's training history (uniform sampler only).
    negatives_unseen: bool = False
    gbce_t: float = Field(default=0.75, ge=0.0, le=1.0)
    mask_prob: float = Field(default=0.2, gt=0.0, lt=1.0)
    softmax_chunk: int | None = Field(default=None, ge=1)
    # The large-catalogue losses' knobs (docs/losses.md), at their authors' defaults.
    scaled_ce_alpha: float = Field(default=100.0, gt=0.0)
    sce_bucket_size_y: int = Field(default=256, ge=1)
    rece_rounds: int = Field(default=8, ge=1, le=1000)
    rece_extra_chunks: int = Field(default=1, ge=0)

    # A fixed, seeded sample of this many users (the same for every loss and seed).
    sample_users: int | None = Field(default=None, ge=1)

    # Optimisation (Adam, as in the study).
    batch_size: int = Field(default=256, ge=1)
    lr: float = Field(default=1e-3, gt=0.0)
    beta1: float = Field(default=0.9, ge=0.0, lt=1.0)
    beta2: float = Field(default=0.999, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    max_epochs: int = Field(default=200, ge=1)
    patience: int = Field(default=10, ge=1)
    time_limit: float | None = Field(default=None, gt=0.0)  # seconds of training
    batching: Batching = "random"

    # Evaluation.
    validation_metric: str = "ndcg@10"
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10, 20])
    exclude_seen: bool = True
    seen_targets: SeenTargets = "miss"  # a target already in the history: not found, or ranked
    eval_negatives: int = Field(default=0, ge=0)  # 0: full ranking over the catalogue
    eval_sampler: SamplerName = "uniform"
    eval_batch_size: int = Field(default=256, ge=1)
    save_topk: int = Field(default=0, ge=0)

    # Execution.
    seed: int = Field(default=0, ge=0, lt=2**32)  # seeds torch, numpy and Python alike
    device: DeviceName = "auto"
    threads: int | None = Field(default=None, ge=1)  # CPU threads; None: the free cores
    precision: Precision = "fp32"
    compile: bool = False
    init: Path | None = None  # pre-trained checkpoint (s3rec)
    # Epochs between resumable checkpoints; None: every epoch on GPU, every few minutes on
    # CPU; 0: never.
    checkpoint_every: int | None = Field(default=None, ge=0)

    @field_validator("logq", mode="before")
    @classmethod
    def _logq_words(cls, value: object) -> object:
        """The words of `--logq`: "standard" is True (the correction before "corrected"
        existed, so earlier runs' `logq = true` still match), "none" is False."""
        words: dict[str, object] = {"standard": True, "corrected": "corrected", "none": False}
        if isinstance(value, str):
            if value not in words:
                raise ValueError(f"got {value!r}; use standard, corrected or none")
            return words[value]
        return value

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, name: str) -> str:
        return one_of(name, PRESETS, "unknown preset {value!r}; choose one of {names}")

    @field_validator("validation_metric")
    @classmethod
    def _known_metric(cls, name: str) -> str:
        head, _, k = name.partition("@")
        if name == "mrr" or (head in {"hr", "ndcg", "recall"} and k.isdigit() and int(k) > 0):
            return name
        raise ValueError(f"unknown metric {name!r}; use ndcg@K, hr@K, recall@K or mrr")

    @field_validator("ks")
    @classmethod
    def _positive_ks(cls, ks: list[int]) -> list[int]:
        if not ks or any(k < 1 for k in ks):
            raise ValueError("cut-offs must be positive integers, e.g. 1,5,10,20")
        return sorted(set(ks))

    @model_validator(mode="after")
    def _unseen_needs_uniform(self) -> TrainConfig:
        if self.negatives_unseen and self.sampler != "uniform":
            raise ValueError(
                "negatives outside the user's history are drawn uniformly: drop "
                f"--negatives-unseen to use --sampler {self.sampler}"
            )
        return self

    @model_validator(mode="after")
    def _valid_before_test(self) -> TrainConfig:
        check_quantiles(self.split, self.valid_quantile, self.test_quantile)
        return self

    @property
    def seen_rule(self) -> SeenRule:
        return seen_rule(self.exclude_seen, self.seen_targets)

    @property
    def loss_name(self) -> str:
        """The loss the run trains with (looked up: planning asks `Names.default_loss`)."""
        return self.loss if self.loss is not None else model_spec(self.model).default_loss

    @property
    def split_spec(self) -> SplitSpec:
        return SplitSpec(
            kind=self.split, valid_quantile=self.valid_quantile, test_quantile=self.test_quantile
        )


def merge_layers(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """The one merge of setting layers, lowest first: preset -> dataset defaults -> settings
    file (a TOML, a grid's `[settings]`, a loss's `[settings.per_loss.LOSS]`) -> flags.

    A later layer wins field by field; `model_settings` merge key by key; None means "not
    given" and never hides a lower layer's value."""
    merged: dict[str, Any] = {}
    model_settings: dict[str, Any] = {}
    for layer in layers:
        model_settings.update(layer.get("model_settings") or {})
        merged.update({k: v for k, v in layer.items() if k != "model_settings" and v is not None})
    if model_settings:
        merged["model_settings"] = model_settings
    return merged


def build_config(
    *,
    toml_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    names: Names | None = None,
) -> TrainConfig:
    """defaults -> preset -> dataset defaults -> TOML -> CLI overrides, validated once at the end.

    `overrides` holds only the flags the user gave (None values are dropped); its
    `model_settings` are merged key by key into those of the lower layers. `names`: the
    request's resolved names (a fresh set when not given).
    """
    names = names if names is not None else Names()
    file_layer = read_toml(toml_file) if toml_file is not None else {}
    cli_layer = merge_layers(overrides or {})
    preset_name = cli_layer.get("preset", file_layer.get("preset", DEFAULT_PRESET))
    if preset_name not in PRESETS:
        raise LossbenchError(f"unknown preset {preset_name!r}; choose one of {', '.join(PRESETS)}")
    model_name = cli_layer.get("model", file_layer.get("model", "sasrec"))
    preset_layer = _preset_for_model(preset_name, model_name, names)
    dataset_name = cli_layer.get("dataset", file_layer.get("dataset", TrainConfig().dataset))
    dataset_layer = DATASET_SETTINGS.get(dataset_name, {})

    merged = merge_layers(preset_layer, dataset_layer, file_layer, cli_layer)
    merged.setdefault("model_settings", {})
    if merged.get("sampler", "uniform") != "uniform" and not any(
        "negatives_unseen" in layer for layer in (file_layer, cli_layer)
    ):
        # The preset's unseen negatives are the uniform sampler's; an explicit sampler wins.
        merged["negatives_unseen"] = False
    return validate_config(merged, str(toml_file) if toml_file else "options", names)


def validate_config(
    values: Mapping[str, Any], source: str = "options", names: Names | None = None
) -> TrainConfig:
    """`values` as a TrainConfig whose model and loss resolve; every problem is named at once
    ('invalid loss in options: ...; invalid lr in options: ...')."""
    names = names if names is not None else Names()
    problems = [
        LossbenchError(f"invalid {field} in {source}: {problem}")
        for field, problem in _name_problems(values, names)
    ]
    try:
        config = TrainConfig.model_validate(values)
    except ValidationError as error:
        problems.append(validation_failure(error, partial(_config_problem, source=source)))
    if problems:
        raise joined(problems)
    return config


def _name_problems(values: Mapping[str, Any], names: Names) -> list[tuple[str, str]]:
    """(field, why) for a model or loss name that does not resolve."""
    problems: list[tuple[str, str]] = []
    for field, lookup in (("model", names.model), ("loss", names.loss)):
        name = values.get(field)
        if isinstance(name, str):
            try:
                lookup(name)
            except LossbenchError as error:
                problems.append((field, str(error)))
    return problems


def _config_problem(where: str, message: str, detail: ErrorDetails, source: str) -> str:
    if detail["type"] == "extra_forbidden":
        message = f"unknown setting; valid settings are: {', '.join(TrainConfig.model_fields)}"
    return f"invalid {where or 'config'} in {source}: {message}"


def read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LossbenchError(f"config file {path} does not exist; check the path")
    try:
        return tomllib.loads(toml_text(path.read_bytes(), path))
    except tomllib.TOMLDecodeError as error:
        raise LossbenchError(f"config file {path} is not valid TOML: {error}") from None


# Byte-order marks of the encodings editors write besides UTF-8 (Windows PowerShell's `>`
# writes UTF-16 LE with a mark). Longest first: UTF-32 LE starts with UTF-16 LE's mark.
BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def toml_text(data: bytes, path: Path) -> str:
    """The text of a TOML file: UTF-8, or any encoding its byte-order mark names (the mark is
    dropped). UTF-16 without a mark is refused: it cannot be told apart from other bytes."""
    encoding = next((name for mark, name in BYTE_ORDER_MARKS if data.startswith(mark)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        raise LossbenchError(
            f"config file {path} is not {encoding.removesuffix('-sig').upper()} text (byte "
            f"{error.start}); save it as UTF-8"
        ) from None
    if "\x00" in text:  # ASCII in UTF-16 without a byte-order mark: every other byte is 0
        raise LossbenchError(
            f"config file {path} looks like UTF-16 without a byte-order mark; save it as UTF-8"
        )
    return text


def _preset_for_model(preset_name: str, model_name: str, names: Names) -> dict[str, Any]:
    """The preset with its per-model settings for `model_name` applied, keeping only the model
    settings that `model_name` has."""
    preset = dict(PRESETS[preset_name])
    settings = {
        **preset.get("model_settings", {}),
        **preset.pop(PER_MODEL, {}).get(model_name, {}),
    }
    try:
        spec = names.model_spec(model_name)
    except LossbenchError:
        spec = None  # validation names the unknown model
    if spec is not None:
        fields = spec.config_class.model_fields
        settings = {k: v for k, v in settings.items() if k in fields}
    preset["model_settings"] = settings
    return preset
