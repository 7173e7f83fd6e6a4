"""The transformer pieces SASRec, BERT4Rec and S3Rec share.

Post-LayerNorm blocks as in the S3Rec code the study used (residual, then LayerNorm), GELU
feed-forward, learned positions counted from the right end so length bucketing changes nothing.
`causal=True` gives SASRec / S3Rec, `causal=False` gives BERT4Rec (`self_attention.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from lossbench.models.base import right_aligned_positions
from lossbench.models.bucketed_linear import BucketedLinear, pads_rows
from lossbench.models.dropout import Dropout, attention

# Rows per attention part when a (B, L) batch is packed (`TransformerEncoder`).
PACKED_PART_ROWS = 64

# Under bf16 autocast on CPU, a part's width is rounded up to a multiple of this (padding
# columns are masked keys): oneDNN then meets a few attention shapes, not one per width.
WIDTH_BUCKET = 8

# The S3Rec code's LayerNorm epsilon; an all-zero row normalizes to zero, never NaN.
LAYER_NORM_EPS = 1e-12


class TransformerConfig(BaseModel):
    """Defaults: the study's S3Rec-code setting (the study's Table 2)."""

    model_config = ConfigDict(extra="forbid")

    hidden_size: int = Field(64, ge=1, description="embedding and hidden width D")
    num_layers: int = Field(2, ge=1, description="transformer blocks")
    num_heads: int = Field(2, ge=1, description="attention heads; must divide hidden_size")
    inner_size: int | None = Field(
        None, ge=1, description="feed-forward width; None means 4 * hidden_size"
    )
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout on embeddings and hidden")
    attention_dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout on attention")
    max_len: int = Field(50, ge=1, description="longest history the model reads")
    init_std: float = Field(0.02, gt=0.0, description="std of the normal weight init")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerConfig:
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size})"
            )
        return self


def init_normal_(module: nn.Module, std: float) -> None:
    """BERT-style init: Linear / Embedding ~ N(0, std), biases 0, LayerNorm ones / zeros.
    Embedding padding rows are re-zeroed so padding adds nothing to the input."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, mean=0.0, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, mean=0.0, std=std)
            if sub.padding_idx is not None:
                with torch.no_grad():
                    sub.weight[sub.padding_idx].zero_()
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


def attention_mask(is_item: Tensor, causal: bool) -> Tensor:
    """(B, L) bool, True at real items -> (B, 1, L, L) bool, True where a query may attend.

    Keys must be real items (and, if causal, not later than the query). The diagonal is always
    allowed so a padding query row has at least one key: its softmax stays finite (no NaN), and
    since real queries already allow their own (real) position, their outputs are unchanged.
    """
    width = is_item.shape[1]
    allowed = is_item[:, None, None, :]  # (B, 1, 1, L) key is a real item
    if causal:
        lower = torch.ones(width, width, dtype=torch.bool, device=is_item.device).tril()
        allowed = allowed & lower  # (B, 1, L, L)
    diagonal = torch.eye(width, dtype=torch.bool, device=is_item.device)
    return allowed | diagonal  # (B, 1, L, L)


class PackedLayout(NamedTuple):
    """Where the real items of one or more (B_p, W_p) parts sit. Hidden states travel as (N, D)
    rows of real items only; the attention scores alone use each part's (B_p, W_p) layout,
    laid end to end in one flat buffer of `size` rows."""

    rows: Tensor  # (N,) int64, increasing flat indices into the parts' B_p * W_p slots
    shapes: list[tuple[int, int]]  # (B_p, W_p) of each part, in order
    masks: list[Tensor]  # (B_p, 1, W_p, W_p) bool attention mask of each part
    size: int  # sum of B_p * W_p


def packed_layout(is_items: list[Tensor], causal: bool) -> PackedLayout:
    """(B_p, W_p) bool masks of real items, one per part -> their packed layout."""
    rows, shapes, offset = [], [], 0
    for is_item in is_items:
        batch, width = is_item.shape
        rows.append(is_item.reshape(-1).nonzero().squeeze(1) + offset)  # (N_p,)
        shapes.append((batch, width))
        offset += batch * width
    masks = [attention_mask(is_item, causal) for is_item in is_items]
    return PackedLayout(rows[0] if len(rows) == 1 else torch.cat(rows), shapes, masks, offset)


class SelfAttention(nn.Module):
    """Multi-head self-attention + dropout + residual + LayerNorm."""

    def __init__(
        self, hidden_size: int, num_heads: int, dropout: float, attention_dropout: float
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.qkv = BucketedLinear(hidden_size, 3 * hidden_size)  # one matmul for Q, K and V
        self.out = BucketedLinear(hidden_size, hidden_size)
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)

    def forward(
        self,
        hidden: Tensor,
        mask: Tensor,
        last_only: bool = False,
        packed: PackedLayout | None = None,
        last_rows: Tensor | None = None,
    ) -> Tensor:
        """(B, L, D) -> (B, L, D), or (B, 1, D) for the last column only when `last_only`
        (prediction needs one state: skip the other queries' attention and feed-forward).
        With `packed`, (N, D) real-item rows -> (N, D) (`mask` unused: the layout has them),
        or (B, D) for the `last_rows` only (see `_forward_packed`)."""
        if packed is not None:
            return self._forward_packed(hidden, packed, last_rows)
        batch, width, size = hidden.shape
        # (B, L, 3D) -> 3 x (B, H, L, D / H)
        qkv = self.qkv(hidden).view(batch, width, 3, self.num_heads, size // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if last_only:
            query, mask, hidden = query[:, :, -1:], mask[:, :, -1:], hidden[:, -1:]
        context = attention(
            query,
            key,
            value,
            mask,  # (B, 1, L or 1, L) bool, broadcast over heads
            self.attention_dropout if self.training else 0.0,
        )  # (B, H, L or 1, D / H)
        context = context.transpose(1, 2).reshape(batch, query.shape[2], size)  # (B, L or 1, D)
        return self.norm(hidden + self.dropout(self.out(context)))

    def _forward_packed(
        self, hidden: Tensor, packed: PackedLayout, last_rows: Tensor | None = None
    ) -> Tensor:
        """(N, D) -> (N, D): projections on real rows only; Q, K, V are scattered into each
        part's (B_p, W_p) layout for the scores (padding rows zero, masked as keys, dropped).
        With `last_rows` ((B,) indices into the N rows of each layout row's last column, in
        part order), only those rows query: -> (B, D)."""
        size = hidden.shape[1]
        qkv = self.qkv(hidden)  # (N, 3D)
        laid_out = qkv.new_zeros(packed.size, 3 * size).index_copy_(0, packed.rows, qkv)
        contexts, offset = [], 0
        for (batch, width), mask in zip(packed.shapes, packed.masks, strict=True):
            part = laid_out[offset : offset + batch * width]
            heads = part.view(batch, width, 3, self.num_heads, size // self.num_heads)
            query, key, value = heads.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, W, D / H)
            if last_rows is not None:
                query, mask = query[:, :, -1:], mask[:, :, -1:]  # (B, H, 1, D / H)
            context = attention(
                query, key, value, mask, self.attention_dropout if self.training else 0.0
            )  # (B, H, W or 1, D / H)
            contexts.append(context.transpose(1, 2).reshape(-1, size))
            offset += batch * width
        context = contexts[0] if len(contexts) == 1 else torch.cat(contexts)  # (size or B, D)
        if last_rows is not None:
            hidden = hidden.index_select(0, last_rows)  # (B, D)
        else:
            context = context.index_select(0, packed.rows)  # (N, D)
        return self.norm(hidden + self.dropout(self.out(context)))


class FeedForward(nn.Module):
    """Position-wise GELU feed-forward + dropout + residual + LayerNorm."""

    def __init__(self, hidden_size: int, inner_size: int, dropout: float) -> None:
        super().__init__()
        self.expand = BucketedLinear(hidden_size, inner_size)
        self.contract = BucketedLinear(inner_size, hidden_size)
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)

    def forward(self, hidden: Tensor) -> Tensor:
        inner = F.gelu(self.expand(hidden))  # exact (erf) GELU, as the S3Rec code
        return self.norm(hidden + self.dropout(self.contract(inner)))


class TransformerBlock(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        inner_size: int,
        dropout: float,
        attention_dropout: float,
    ) -> None:
        super().__init__()
        self.attention = SelfAttention(hidden_size, num_heads, dropout, attention_dropout)
        self.feed_forward = FeedForward(hidden_size, inner_size, dropout)

    def forward(
        self,
        hidden: Tensor,
        mask: Tensor,
        last_only: bool = False,
        packed: PackedLayout | None = None,
        last_rows: Tensor | None = None,
    ) -> Tensor:
        """(B, L, D) -> (B, L, D) (or (B, 1, D) with `last_only`); (N, D) -> (N, D) with
        `packed`, (B, D) with `packed` and `last_rows` (the feed-forward is position-wise:
        it runs on any rows)."""
        return self.feed_forward(self.attention(hidden, mask, last_only, packed, last_rows))


class PositionalInput(nn.Module):
    """(B, L, D) item vectors -> (B, L, D): + right-aligned learned positions, LayerNorm,
    dropout. The item table stays on the model, so it is one Parameter shared with scoring."""

    def __init__(self, hidden_size: int, max_len: int, dropout: float) -> None:
        super().__init__()
        self.max_len = max_len
        self.position_embedding = nn.Embedding(max_len, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.dropout = Dropout(dropout)

    def forward(self, item_vectors: Tensor) -> Tensor:
        width = item_vectors.shape[1]
        if width > self.max_len:
            raise ValueError(f"batch width {width} exceeds the model's max_len {self.max_len}")
        positions = right_aligned_positions(width, self.max_len, item_vectors.device)  # (L,)
        hidden = item_vectors + self.position_embedding(positions)  # (B, L, D)
        return self.dropout(self.norm(hidden))

    def rows(self, item_vectors: Tensor, positions: Tensor) -> Tensor:
        """(N, D) item vectors and their (N,) position ids -> (N, D), as `forward`."""
        return self.dropout(self.norm(item_vectors + self.position_embedding(positions)))


class TransformerEncoder(nn.Module):
    """A stack of blocks over (B, L, D) with a padding (and optionally causal) mask.

    On CPU, when the batch has padding, the blocks run on the real items' rows only (the
    attention scores alone use the (B, L) layout): a length-sorted part of beauty-s3rec is
    still 60% padding, and every projection, feed-forward and dropout would compute it.
    Real positions get the same states either way (tested); padding positions come out 0.
    `pack_padding=False` computes every position, padding included: the reference path.
    """

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        num_heads: int,
        inner_size: int,
        dropout: float,
        attention_dropout: float,
        causal: bool,
        pack_padding: bool = True,
    ) -> None:
        super().__init__()
        self.causal = causal
        self.pack_padding = pack_padding
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size, num_heads, inner_size, dropout, attention_dropout)
            for _ in range(num_layers)
        )

    def forward(
        self,
        hidden: Tensor,
        is_item: Tensor,
        last_only: bool = False,
        causal: bool | None = None,
    ) -> Tensor:
        """hidden (B, L, D), is_item (B, L) bool True at non-padding -> (B, L, D); with
        `last_only`, (B, 1, D): the final block computes only the last column's query.
        `causal` overrides the encoder's own setting (S3Rec pre-training attends both ways)."""
        causal = self.causal if causal is None else causal
        if self._packs(hidden, is_item, last_only):
            return self._forward_packed(hidden, is_item, causal)
        mask = attention_mask(is_item, causal)  # (B, 1, L, L), all layers
        last = len(self.blocks) - 1
        for index, block in enumerate(self.blocks):
            hidden = block(hidden, mask, last_only=last_only and index == last)
        return hidden

    def packs(self, device: torch.device) -> bool:
        """Run on real-item rows? CPU only: finding the rows syncs a GPU, whose fused
        attention kernels care less about padding."""
        return self.pack_padding and device.type == "cpu"

    def _packs(self, hidden: Tensor, is_item: Tensor, last_only: bool) -> bool:
        return self.packs(hidden.device) and not last_only and not bool(is_item.all())

    def _forward_packed(self, hidden: Tensor, is_item: Tensor, causal: bool) -> Tensor:
        """(B, L, D) -> (B, L, D) through the blocks on real-item rows only. For the attention
        scores the rows are sorted by width (from the first real item to the end) and cut into
        parts of `PACKED_PART_ROWS`, each trimmed to its widest row: a random batch of S3Rec's
        pre-training prefixes is mostly short rows padded to the one long one."""
        batch, width, size = hidden.shape
        layout, source, _ = self._pack(is_item, causal)
        states = hidden.reshape(batch * width, size).index_select(0, source)  # (N, D)
        states = self.forward_rows(states, layout)
        laid_out = states.new_zeros(batch * width, size).index_copy_(0, source, states)
        return laid_out.view(batch, width, size)

    def _pack(self, is_item: Tensor, causal: bool) -> tuple[PackedLayout, Tensor, Tensor]:
        """The packed layout of a (B, L) batch, the (N,) input row (in B * L) of each packed
        state, and the (B,) batch rows in layout order (sorted by width)."""
        width = is_item.shape[1]
        has_item = is_item.any(1)
        first = torch.where(has_item, is_item.int().argmax(1), width - 1)  # (B,)
        widths = width - first  # (B,) >= 1
        order = torch.sort(widths, stable=True).indices  # (B,)
        part_rows = list(order.split(PACKED_PART_ROWS))
        part_widths = [int(w) for w in torch.stack([widths[r].max() for r in part_rows])]
        if pads_rows(is_item):  # a few recurring attention shapes (`bucketed_linear.py`)
            part_widths = [bucketed_width(w, width) for w in part_widths]
        # (B_p, W_p) flat indices into the (B * L) input of each part's trimmed slots
        columns = torch.arange(width, device=is_item.device)
        slots = [
            (rows[:, None] * width + columns[width - w :]).reshape(-1)
            for rows, w in zip(part_rows, part_widths, strict=True)
        ]
        flat_is_item = is_item.reshape(-1)
        layout = packed_layout(
            [flat_is_item[index].view(-1, w) for index, w in zip(slots, part_widths, strict=True)],
            causal,
        )
        source = torch.cat(slots).index_select(0, layout.rows)  # (N,) input row of each state
        return layout, source, order

    def last_states(self, hidden: Tensor, is_item: Tensor, causal: bool | None = None) -> Tensor:
        """(B, L, D), is_item (B, L) with every row's last column a real item -> (B, D), the
        last column's final states: the final block queries only there. On CPU it runs packed
        (`_forward_packed`, the final block's attention, projection and feed-forward on the B
        last rows); elsewhere it is `forward(..., last_only=True)`."""
        causal = self.causal if causal is None else causal
        if not self.packs(hidden.device) or bool(is_item.all()):
            return self(hidden, is_item, last_only=True, causal=causal)[:, 0]
        batch, width, size = hidden.shape
        layout, source, order = self._pack(is_item, causal)
        states = hidden.reshape(batch * width, size).index_select(0, source)  # (N, D)
        for block in self.blocks[:-1]:
            states = block(states, layout.masks[0], packed=layout)
        # each layout row's last slot (its part offset + (row + 1) * W_p - 1) among the N rows
        ends = torch.cat(
            [
                offset + torch.arange(1, rows + 1, device=hidden.device) * part_width - 1
                for (rows, part_width), offset in zip(
                    layout.shapes, _part_offsets(layout.shapes), strict=True
                )
            ]
        )  # (B,) in layout order
        last_rows = torch.searchsorted(layout.rows, ends)  # (B,)
        states = self.blocks[-1](states, layout.masks[0], packed=layout, last_rows=last_rows)
        return states.new_empty(batch, size).index_copy_(0, order, states)  # (B, D)

    def forward_rows(self, states: Tensor, layout: PackedLayout) -> Tensor:
        """(N, D) real-item rows of a packed layout -> (N, D) after every block."""
        for block in self.blocks:
            states = block(states, layout.masks[0], packed=layout)  # masks come from layout
        return states


def _part_offsets(shapes: list[tuple[int, int]]) -> list[int]:
    """Where each (B_p, W_p) part starts in a packed layout's flat slots."""
    offsets, offset = [], 0
    for batch, width in shapes:
        offsets.append(offset)
        offset += batch * width
    return offsets


@contextmanager
def padding_computed(model: nn.Module) -> Iterator[None]:
    """Inside, every `TransformerEncoder` of `model` computes every position, padding
    included: the reference the packed path is measured and tested against."""
    encoders = [module for module in model.modules() if isinstance(module, TransformerEncoder)]
    saved = [encoder.pack_padding for encoder in encoders]
    for encoder in encoders:
        encoder.pack_padding = False
    try:
        yield
    finally:
        for encoder, pack in zip(encoders, saved, strict=True):
            encoder.pack_padding = pack


def encode_parts(
    item_embedding: nn.Module,
    positional_input: PositionalInput,
    encoder: TransformerEncoder,
    inputs: list[Tensor],
) -> list[Tensor]:
    """The parts of one batch, (B_p, W_p) left-padded ids each -> their (B_p, W_p, D) states
    (0 at padding), with every projection, feed-forward, LayerNorm and dropout run once over
    all parts' real items: far fewer, larger operations than one model call per part."""
    widths = [part.shape[1] for part in inputs]
    max_len = positional_input.max_len
    if pads_rows(inputs[0]):  # left padding changes no state: positions count from the right
        inputs = [
            F.pad(part, (bucketed_width(part.shape[1], max_len) - part.shape[1], 0))
            for part in inputs
        ]
    layout = packed_layout([ids != 0 for ids in inputs], encoder.causal)
    device = inputs[0].device
    ids = torch.cat([part.reshape(-1) for part in inputs]).index_select(0, layout.rows)  # (N,)
    positions = torch.cat(
        [
            right_aligned_positions(width, max_len, device).expand(batch, width).reshape(-1)
            for batch, width in layout.shapes
        ]
    ).index_select(0, layout.rows)  # (N,)
    states = positional_input.rows(item_embedding(ids), positions)  # (N, D)
    states = encoder.forward_rows(states, layout)
    laid_out = states.new_zeros(layout.size, states.shape[1]).index_copy_(0, layout.rows, states)
    sizes = [batch * width for batch, width in layout.shapes]
    return [
        part.view(batch, width, -1)[:, width - asked :]
        for part, (batch, width), asked in zip(
            laid_out.split(sizes), layout.shapes, widths, strict=True
        )
    ]


def bucketed_width(width: int, limit: int) -> int:
    """`width` rounded up to a multiple of `WIDTH_BUCKET`, at most `limit` (and never below
    `width`)."""
    return max(width, min(limit, width + -width % WIDTH_BUCKET))
