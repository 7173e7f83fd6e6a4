"""The model contract: what every sequence model implements, and what its spec declares.

Item ids: 0 is padding, 1..n_items are real items, ids above n_items are model-specific special
tokens (BERT4Rec's mask, `mask_token_id`). Sequences are left-padded: the most recent item is
in the last column. A batch may be narrower than `max_len` (length bucketing); models must give
a real position the same output whatever the amount of left padding, so position ids count back
from the right end.

The training loop never inspects a model to find out what it can do: every ability beyond
`SequenceModel` is a field of its `ModelSpec`, and the loop reads only those fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from lossbench.errors import LossbenchError


class SequenceModel(Protocol):
    """(B, L) item ids -> (B, L, D) hidden states; scores are dot products with item rows."""

    n_items: int
    item_embedding: nn.Embedding  # (n_items + 1 + n_special, D), shared with the input layer

    def __call__(self, item_ids: Tensor) -> Tensor: ...  # (B, L) -> (B, L, D)

    def predict_hidden(self, item_ids: Tensor) -> Tensor:
        """(B, L) histories -> (B, D) the state that scores the next item."""
        ...

    def parameters(self, recurse: bool = True) -> object: ...


class LastOnlyEncoder(Protocol):
    """Declared by `ModelSpec.encodes_last_only`."""

    def __call__(self, item_ids: Tensor, last_only: bool = False) -> Tensor:
        """(B, L) -> (B, L, D), or (B, 1, D) with `last_only`: the last column's state only."""
        ...


class PackedPartsEncoder(Protocol):
    """Declared by `ModelSpec.packed_parts`."""

    def forward_parts(self, inputs: list[Tensor]) -> list[Tensor]:
        """The (B_p, W_p) parts of one training batch -> their (B_p, W_p, D) states, each equal
        to the part's own call (run together for speed)."""
        ...


class Pretrainable(Protocol):
    """Declared by `ModelSpec.pretrainable`."""

    def load_pretrained(self, path: Path) -> None:
        """Fill the weights from a pre-training checkpoint (`--init PATH`); a LossbenchError
        with one line when the file does not fit."""
        ...


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

    def max_len(self, config: BaseModel) -> int:
        """The longest history `config` lets the model read."""
        return int(config.model_dump()[self.max_len_setting])


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
