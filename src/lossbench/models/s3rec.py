"""S3Rec (Zhou et al., CIKM 2020): SASRec pre-trained with four self-supervised objectives.

The fine-tuning model is SASRec itself (same layout, parameter names and init), so without a
checkpoint it trains exactly as SASRec; `load_pretrained` fills its item embeddings, positions
and encoder from `lossbench pretrain`. Pre-training (`S3RecPretrainer`) adds a mask token, an
attribute table and one linear head per objective, and encodes bidirectionally (the original
code masks only padding during pre-training). The objectives follow the original code:

- AAP (associated attribute prediction): at unmasked items, BCE of every attribute from the
  item's state; MAP (masked attribute prediction): the same at masked items (their true
  attributes); both are `attribute_prediction_loss`.
- MIP (masked item prediction) and SP (segment prediction): `pairwise_sigmoid_loss`, the
  original's `BCE(sigmoid(sigmoid(c . p) - sigmoid(c . n)), 1)` (its double sigmoid kept).

Each loss is a sum (not a mean) over its positions, as in the original, so the published
weights (AAP 0.2, MIP 1, MAP 1, SP 0.5) keep their relative effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from lossbench.checkpoints import load_checkpoint
from lossbench.errors import LossbenchError
from lossbench.models.sasrec import SASRec, SASRecConfig
from lossbench.models.transformer import init_normal_

CHECKPOINT_KIND = "lossbench-s3rec-pretrained"
OBJECTIVES = ("aap", "mip", "map", "sp")


class S3RecConfig(SASRecConfig):
    """The fine-tuning model's settings: SASRec's (the study's Table 2 defaults)."""


class PretrainObjectives(BaseModel):
    """Weights of the four objectives and the mask probability (the S3Rec paper's values)."""

    model_config = ConfigDict(extra="forbid")

    aap_weight: float = Field(default=0.2, ge=0.0, description="associated attribute prediction")
    mip_weight: float = Field(default=1.0, ge=0.0, description="masked item prediction")
    map_weight: float = Field(default=1.0, ge=0.0, description="masked attribute prediction")
    sp_weight: float = Field(default=0.5, ge=0.0, description="segment prediction")
    mask_prob: float = Field(
        default=0.2, gt=0.0, lt=1.0, description="share of items masked for MIP"
    )

    def total(self, losses: dict[str, Tensor]) -> Tensor:
        """The weighted sum of the four objective losses."""
        return (
            self.aap_weight * losses["aap"]
            + self.mip_weight * losses["mip"]
            + self.map_weight * losses["map"]
            + self.sp_weight * losses["sp"]
        )


def attribute_prediction_loss(
    hidden: Tensor, attribute_table: Tensor, attribute_targets: Tensor, where: Tensor
) -> Tensor:
    """AAP / MAP: sum over selected positions and all attributes of BCE(sigmoid(h . a), y).

    hidden (..., D) head outputs; attribute_table (A, D) rows of attributes 1..A;
    attribute_targets (..., A) 0/1; where (...) bool, the positions that count."""
    select_rows = where.device.type == "cpu"
    if select_rows:
        # Only the rows that count (finding them would sync a GPU): most of a (B, L)
        # pre-training batch is padding or the other objective's positions.
        hidden, attribute_targets = hidden[where], attribute_targets[where]  # (n, D), (n, A)
    logits = hidden @ attribute_table.T  # (..., A)
    per_position = F.binary_cross_entropy_with_logits(
        logits, attribute_targets, reduction="none"
    ).sum(-1)  # (...,)
    if select_rows:
        return per_position.sum()
    return (per_position * where.to(per_position.dtype)).sum()


def pairwise_sigmoid_loss(
    context: Tensor, positive: Tensor, negative: Tensor, where: Tensor
) -> Tensor:
    """MIP / SP: sum over selected rows of -log sigmoid(sigmoid(c . p) - sigmoid(c . n)).

    context, positive, negative (..., D); where (...) bool. The inner sigmoids are the
    original code's; -log sigmoid(x) is computed as softplus(-x)."""
    distance = torch.sigmoid((context * positive).sum(-1)) - torch.sigmoid(
        (context * negative).sum(-1)
    )  # (...,)
    return (F.softplus(-distance) * where.to(distance.dtype)).sum()


@dataclass(frozen=True)
class PretrainBatch:
    """One pre-training batch (built by `lossbench.training.pretrain`); all (B, L) left-padded,
    the mask id is n_items + 1."""

    items: Tensor  # (B, L) the sequence (MIP positives)
    masked_items: Tensor  # (B, L) the sequence with masked positions set to the mask id
    negative_items: Tensor  # (B, L) MIP negatives, never in the sequence (used where masked)
    attributes: Tensor  # (B, L, A) float 0/1: attributes of each item (column a-1 = attribute a)
    segment_context: Tensor  # (B, L) the sequence with one segment set to the mask id
    positive_segment: Tensor  # (B, L) that segment, the rest of the sequence masked
    negative_segment: Tensor  # (B, L) a segment of other sequences at the same places
    has_segment: Tensor  # (B,) bool: sequences of at least two items take part in SP


class S3Rec(SASRec):
    """SASRec that can start from an S3Rec pre-training checkpoint."""

    def load_pretrained(self, path: Path) -> None:
        """Load the item embeddings, positions and encoder written by `lossbench pretrain`."""
        if not path.is_file():
            raise LossbenchError(
                f"no pre-trained checkpoint at {path}; "
                "run `lossbench pretrain --dataset D --model s3rec` first"
            )
        checkpoint = load_checkpoint(path)
        if not isinstance(checkpoint, dict) or checkpoint.get("kind") != CHECKPOINT_KIND:
            raise LossbenchError(
                f"{path} is not an S3Rec pre-training checkpoint; use pretrained.pt or "
                "pretrain-epochN.pt from `lossbench pretrain --model s3rec`"
            )
        if checkpoint["n_items"] != self.n_items:
            raise LossbenchError(
                f"{path} was pre-trained on {checkpoint['n_items']} items but this dataset has "
                f"{self.n_items}; pre-train on the same dataset"
            )
        try:
            self.load_state_dict(checkpoint["backbone"])
        except RuntimeError as error:
            first = str(error).strip().splitlines()[-1].strip()
            raise LossbenchError(
                f"{path} does not fit this model's settings (pre-trained with "
                f"{checkpoint.get('config')}): {first}"
            ) from None


class S3RecPretrainer(nn.Module):
    """The pre-training model around an S3Rec backbone: mask token, attributes, four heads."""

    def __init__(self, backbone: S3Rec, n_attributes: int, init_std: float) -> None:
        super().__init__()
        size = backbone.item_embedding.embedding_dim
        self.backbone = backbone
        self.n_attributes = n_attributes
        self.mask_embedding = nn.Parameter(torch.zeros(size))  # the item id n_items + 1
        # row 0 padding (never a target), rows 1..n_attributes
        self.attribute_embedding = nn.Embedding(n_attributes + 1, size, padding_idx=0)
        self.heads = nn.ModuleDict({name: nn.Linear(size, size) for name in OBJECTIVES})
        init_normal_(self.attribute_embedding, init_std)
        init_normal_(self.heads, init_std)
        nn.init.normal_(self.mask_embedding, mean=0.0, std=init_std)

    @property
    def mask_id(self) -> int:
        return self.backbone.n_items + 1

    def encode(self, item_ids: Tensor, last_only: bool = False) -> Tensor:
        """(B, L) ids, mask id allowed -> (B, L, D), attending both ways (padding excluded);
        `last_only` -> (B, 1, D), the last column only."""
        return self.backbone.encoder(self._input(item_ids), item_ids != 0, last_only, causal=False)

    def encode_last(self, item_ids: Tensor) -> Tensor:
        """(B, L) ids whose last column is a real item (or the mask) -> (B, D), the last
        column's states, attending both ways: the final block computes that column only."""
        return self.backbone.encoder.last_states(self._input(item_ids), item_ids != 0, False)

    def _input(self, item_ids: Tensor) -> Tensor:
        """(B, L) ids, mask id allowed -> (B, L, D) item vectors with positions."""
        table = torch.cat([self.backbone.item_embedding.weight, self.mask_embedding[None]])
        vectors = F.embedding(item_ids, table, padding_idx=0)  # (B, L, D)
        return self.backbone.positional_input(vectors)

    def forward(self, batch: PretrainBatch) -> dict[str, Tensor]:
        """The four objective losses (sums over the batch), keyed aap, mip, map, sp."""
        hidden = self.encode(batch.masked_items)  # (B, L, D)
        attributes = self.attribute_embedding.weight[1:]  # (A, D)
        is_masked = batch.masked_items == self.mask_id  # (B, L)
        is_unmasked = (batch.masked_items != 0) & ~is_masked
        items = self.backbone.item_embedding
        losses = {
            "aap": attribute_prediction_loss(
                self.heads["aap"](hidden), attributes, batch.attributes, is_unmasked
            ),
            "mip": pairwise_sigmoid_loss(
                self.heads["mip"](hidden),
                items(batch.items),
                items(batch.negative_items),
                is_masked,
            ),
            "map": attribute_prediction_loss(
                self.heads["map"](hidden), attributes, batch.attributes, is_masked
            ),
        }
        # SP reads the last state of the context and of each segment (the original's
        # readout): the three are encoded as one (3B, L) batch, all of whose rows end in an
        # item or the mask, and only their last column goes through the final block.
        sequences = (batch.segment_context, batch.positive_segment, batch.negative_segment)
        last = self.encode_last(torch.cat(sequences))  # (3B, D)
        context, positive, negative = last.split(len(batch.items))  # (B, D) each
        losses["sp"] = pairwise_sigmoid_loss(
            self.heads["sp"](context), positive, negative, batch.has_segment
        )
        return losses

    def checkpoint(self, config: BaseModel, epoch: int) -> dict[str, Any]:
        """What `S3Rec.load_pretrained` reads (tensors and plain values: weights_only)."""
        heads = {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}
        return {
            "kind": CHECKPOINT_KIND,
            "n_items": self.backbone.n_items,
            "n_attributes": self.n_attributes,
            "epoch": epoch,
            "config": config.model_dump(),
            "backbone": self.backbone.state_dict(),
            "pretrainer": heads,
        }
