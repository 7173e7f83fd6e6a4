"""The model contract: what every sequence model implements, and what its spec declares.

Item ids: 0 is padding, 1..n_items are real items, ids above n_items are model-specific special
tokens (BERT4Rec's mask, `mask_token_id`). Sequences are left-padded: the most recent item is
in the last column. A batch may be narrower than `max_len` (length bucketing); models must give
a real position the same output whatever the amount of left padding, so position ids count back
from the right end.

The training loop never inspects a model to find out what it can do: every ability beyond
`SequenceModel` is a field of its `ModelSpec`, and the loop reads only those fields. The
typed view of an ability (`last_only_encoder`, `packed_parts_encoder`, `pretrainable_model`)
is taken once, where the run is set up, and checked against the declaration: a model that
declares an ability its module lacks fails there with one line naming it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from lossbench.errors import LossbenchError

if TYPE_CHECKING:
    from rich.console import Console

    from lossbench.data.prepared import PreparedDataset


@runtime_checkable
class SequenceModel(Protocol):
    """(B, L) item ids -> (B, L, D) hidden states; scores are dot products with item rows."""

    n_items: int
    item_embedding: nn.Embedding  # (n_items + 1 + n_special, D), shared with the input layer

    def __call__(self, item_ids: Tensor) -> Tensor: ...  # (B, L) -> (B, L, D)

    def predict_hidden(self, item_ids: Tensor) -> Tensor:
        """(B, L) histories -> (B, D) the state that scores the next item."""
        ...

    def parameters(self, recurse: bool = True) -> object: ...


@runtime_checkable
class LastOnlyEncoder(Protocol):
    """Declared by `ModelSpec.encodes_last_only`."""

    def __call__(self, item_ids: Tensor, last_only: bool = False) -> Tensor:
        """(B, L) -> (B, L, D), or (B, 1, D) with `last_only`: the last column's state only."""
        ...


@runtime_checkable
class PackedPartsEncoder(Protocol):
    """Declared by `ModelSpec.packed_parts`."""

    def forward_parts(self, inputs: list[Tensor]) -> list[Tensor]:
        """The (B_p, W_p) parts of one training batch -> their (B_p, W_p, D) states, each equal
        to the part's own call (run together for speed)."""
        ...


@runtime_checkable
class Pretrainable(Protocol):
    """Declared by `ModelSpec.pretrainable`."""

    def load_pretrained(self, path: Path) -> None:
        """Fill the weights from a pre-training checkpoint (`--init PATH`); a LossbenchError
        with one line when the file does not fit."""
        ...


@runtime_checkable
class PretrainFn(Protocol):
    """A pre-training routine (`Pretraining.entry_point`): pre-trains the model of `config` on
    `dataset`'s training items, writes its checkpoints into `out_dir` and returns the path of
    the final one, which the model's `load_pretrained` reads. `resume`: a checkpoint of an
    earlier run of the same routine to continue from, up to `epochs` in all."""

    def __call__(
        self,
        dataset: PreparedDataset,
        config: BaseModel,
        out_dir: Path,
        epochs: int,
        checkpoint_every: int,
        seed: int,
        device: str = ...,
        batch_size: int = ...,
        lr: float = ...,
        *,
        console: Console | None = ...,
        resume: Path | None = ...,
    ) -> Path: ...


_ENTRY_POINT = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


@dataclass(frozen=True)
class Pretraining:
    """How lossbench pre-trains a model (`lossbench pretrain`, a reproduction's pre-training
    steps) before it is fine-tuned from the result with `--init`.

    `entry_point` is a `PretrainFn` as "package.module:function", imported when a
    pre-training runs (a routine drives a training loop, which sits above the models). The
    other fields are the routine's published settings, the defaults of `lossbench pretrain`.
    """

    objective: str  # one line: what pre-training learns
    entry_point: str
    epochs: int
    batch_size: int
    lr: float
    checkpoint_every: int = 10  # epochs between the checkpoints a stopped run resumes from

    def __post_init__(self) -> None:
        if not _ENTRY_POINT.fullmatch(self.entry_point):
            raise LossbenchError(
                f"pre-training {self.objective!r}: entry_point {self.entry_point!r} is not "
                "'package.module:function'"
            )
        if min(self.epochs, self.batch_size, self.checkpoint_every) < 1 or self.lr <= 0:
            raise LossbenchError(
                f"pre-training {self.objective!r}: epochs, batch_size and checkpoint_every "
                "must be >= 1 and lr > 0"
            )


@dataclass(frozen=True)
class ModelSpec:
    """A model as lossbench knows it: how to configure and build it, and what it can do.

    This is the public contract of a model; a model from outside the package is a `ModelSpec`
    too. The loop reads these fields and nothing else about a model:

    - `config_class`: a pydantic model (`extra="forbid"`) of every setting with its default;
      `--hidden-size` etc. and a TOML `[model_settings]` table are validated by it.
    - `build`: `(config, n_items) -> nn.Module` following `SequenceModel`; `from_config(cls)`
      passes every config field as a keyword.
    - `default_loss`: the loss the model was published with (a loss registry name).
    - `description`: one line for `lossbench models`.
    - `bidirectional`: sees later items, so it can only train on masked positions (`mlm`).
    - `uses_mask_token`: masked positions are fed as item id `mask_token_id(n_items)`, which
      the model's item table holds as its first special row. Required when bidirectional.
    - `encodes_last_only`: the model is called as `model(ids, last_only=True)` -> (B, 1, D)
      when only the last position trains (`LastOnlyEncoder`); else `model(ids)[:, -1]`.
    - `packed_parts`: the model has `forward_parts(parts)` (`PackedPartsEncoder`), used for a
      batch's length-sorted parts when training on every (or masked) position.
    - `pretrainable`: the model has `load_pretrained(path)` (`Pretrainable`) and accepts
      `--init PATH`; without `--init` it starts from random weights.
    - `pretraining`: how lossbench pre-trains it (`Pretraining`: its objective, routine and
      default settings), or None when `lossbench pretrain` has no routine for it. Requires
      `pretrainable`: the routine's checkpoint is what `--init` loads.
    - `max_len_setting`: the name of the setting holding the longest history the model reads;
      training windows and evaluation histories are cut to it.
    """

    config_class: type[BaseModel]
    build: Callable[[Any, int], nn.Module]
    default_loss: str
    description: str
    bidirectional: bool = False
    uses_mask_token: bool = False
    encodes_last_only: bool = False
    packed_parts: bool = False
    pretrainable: bool = False
    pretraining: Pretraining | None = None
    max_len_setting: str = "max_len"

    def __post_init__(self) -> None:
        fields = self.config_class.model_fields
        if self.max_len_setting not in fields:
            raise LossbenchError(
                f"model spec {self.description!r}: max_len_setting {self.max_len_setting!r} is "
                f"not one of its settings ({', '.join(fields) or 'none'})"
            )
        if self.bidirectional and not self.uses_mask_token:
            raise LossbenchError(
                f"model spec {self.description!r}: a bidirectional model trains on masked "
                "positions, so it must declare uses_mask_token=True"
            )
        if self.pretraining is not None and not self.pretrainable:
            raise LossbenchError(
                f"model spec {self.description!r}: its pre-training writes a checkpoint for "
                "--init, so it must declare pretrainable=True (and load_pretrained)"
            )

    def max_len(self, config: BaseModel) -> int:
        """The longest history `config` lets the model read."""
        return int(config.model_dump()[self.max_len_setting])


def sequence_model(model: object, name: str | None = None) -> SequenceModel:
    """`model` as a `SequenceModel`, or a LossbenchError naming what it lacks."""
    if not isinstance(model, SequenceModel):
        raise LossbenchError(
            f"model {_model_name(model, name)} does not follow lossbench.models.SequenceModel: "
            "it needs n_items, item_embedding and predict_hidden"
        )
    return model


def last_only_encoder(model: object, spec: ModelSpec, name: str | None = None) -> LastOnlyEncoder:
    """`model` called as `model(ids, last_only=True)`, as its spec's `encodes_last_only`
    declares; a LossbenchError naming it otherwise."""
    _require(spec.encodes_last_only, "encodes_last_only", model, name)
    if not isinstance(model, LastOnlyEncoder):
        raise _lacks(model, name, "encodes_last_only", "__call__")
    return model


def packed_parts_encoder(
    model: object, spec: ModelSpec, name: str | None = None
) -> PackedPartsEncoder:
    """`model` with `forward_parts`, as its spec's `packed_parts` declares."""
    _require(spec.packed_parts, "packed_parts", model, name)
    if not isinstance(model, PackedPartsEncoder):
        raise _lacks(model, name, "packed_parts", "forward_parts")
    return model


def pretrainable_model(model: object, spec: ModelSpec, name: str | None = None) -> Pretrainable:
    """`model` with `load_pretrained`, as its spec's `pretrainable` declares."""
    _require(spec.pretrainable, "pretrainable", model, name)
    if not isinstance(model, Pretrainable):
        raise _lacks(model, name, "pretrainable", "load_pretrained")
    return model


def _require(declared: bool, flag: str, model: object, name: str | None) -> None:
    if not declared:
        raise LossbenchError(f"model {_model_name(model, name)} does not declare {flag}")


def _lacks(model: object, name: str | None, flag: str, member: str) -> LossbenchError:
    return LossbenchError(
        f"model {_model_name(model, name)} declares {flag} but its module "
        f"{type(model).__name__} has no {member}"
    )


def _model_name(model: object, name: str | None) -> str:
    return name if name is not None else type(model).__name__


def mask_token_id(n_items: int) -> int:
    """The item id of the mask token of a model that `uses_mask_token` (its first special row)."""
    return n_items + 1


def from_config(model_class: Callable[..., nn.Module]) -> Callable[[BaseModel, int], nn.Module]:
    """A `build` that passes every config field as a keyword, so none is silently dropped."""
    return _FieldsBuilder(model_class)


@dataclass(frozen=True)
class _FieldsBuilder:
    """`model_class(n_items, **config)`; a class, not a closure, so plans can be pickled."""

    model_class: Callable[..., nn.Module]

    def __call__(self, config: BaseModel, n_items: int) -> nn.Module:
        return self.model_class(n_items, **config.model_dump())


def scoring_table(model: SequenceModel) -> Tensor:
    """(n_items + 1, D) rows that score items 0..n_items (row 0 is padding, never scored).

    The weight itself when it has no special rows: a slice would add a table-sized zero fill
    and copy to every backward pass."""
    weight = model.item_embedding.weight
    return weight if weight.shape[0] == model.n_items + 1 else weight[: model.n_items + 1]


def right_aligned_positions(width: int, max_len: int, device: torch.device) -> Tensor:
    """(width,) position ids for a left-padded batch of `width` columns: the last column is
    always position max_len - 1, so a narrower (bucketed) batch gives identical outputs."""
    return torch.arange(max_len - width, max_len, device=device)
