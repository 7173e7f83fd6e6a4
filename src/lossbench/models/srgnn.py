"""SR-GNN (Wu et al., AAAI 2019) with an exact, causal every-position mode.

SR-GNN turns a sequence into a directed graph of its unique items (an edge u -> v when v follows
u), propagates item states through a gated graph network over the in- and out-adjacency (each
normalized by the node's in- / out-degree), and reads the sequence out with a soft attention
over the positions' node states, queried by the last item's state, concatenated with that state
and projected. Scores are dot products with the shared item embedding table.

Every position, causally: the output at position t is what SR-GNN computes for the prefix
items[..t] alone (its own graph, its own propagation, its own readout queried by item t), so it
never sees later items. The study's every-position variant built one graph from the whole
sequence and reused its propagated states at every position, so position t saw the items after
t while learning to predict them; lossbench does not offer that leaky variant.

Exact per-prefix graphs without a loop per sequence or per prefix: node states live on
(prefix t, position j <= t) pairs (positions holding the same item share a node, hence a state)
and adjacency is kept per edge e (position e -> e + 1). The prefix ending at t holds exactly the
edges e < t, so each pair's adjacency row is a mask product over the L - 1 edges; one
propagation step is a batched matmul onto the gate width. That is about B * L^2 / 2 * 3D values
per step (L = 50, B = 256: 60 M floats). Edges are binary by default (a repeated transition
counts once, as in the SR-GNN and RecBole code); `edge_weight="count"` weights them by
occurrence, as the paper's text describes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from lossbench.models.dropout import Dropout

EdgeWeight = Literal["binary", "count"]


class SRGNNConfig(BaseModel):
    """Width 64 and one propagation step as in the study; dropout 0.5 on the item embeddings
    and init std 0.02 follow the study's S3Rec-code setting (the study's Table 2)."""

    model_config = ConfigDict(extra="forbid")

    hidden_size: int = Field(default=64, ge=1, description="item embedding and node state width D")
    num_steps: int = Field(default=1, ge=1, description="gated graph propagation steps")
    max_len: int = Field(default=50, ge=1, description="longest history the model reads")
    dropout: float = Field(
        default=0.5, ge=0.0, lt=1.0, description="dropout on the item embeddings"
    )
    init_std: float = Field(default=0.02, gt=0.0, description="std of the normal weight init")
    edge_weight: EdgeWeight = Field(
        default="binary",
        description="binary: a repeated transition counts once; count: by occurrence",
    )


@dataclass(frozen=True)
class PrefixPairs:
    """The (prefix, position) pairs a pass computes: position j inside the prefix ending at
    ends[t], i.e. j <= ends[t]; pairs are ordered by prefix, then position."""

    ends: Tensor  # (T,) last position of each prefix
    prefix: Tensor  # (P,) t of each pair
    position: Tensor  # (P,) j of each pair
    flat: Tensor  # (P,) t * L + j, the pair's row in a dense (T * L) layout
    last: Tensor  # (T,) index of the pair (t, ends[t])
    width: int  # L


def prefix_pairs(ends: Tensor, width: int) -> PrefixPairs:
    """(T,) prefix end positions in a batch of `width` columns -> their (t, j <= end) pairs."""
    positions = torch.arange(width, device=ends.device)
    flat = (positions[None, :] <= ends[:, None]).flatten().nonzero().squeeze(1)  # (P,)
    sizes = ends + 1  # pairs per prefix
    last = torch.cumsum(sizes, 0) - 1  # (T,) the last pair of each prefix is (t, ends[t])
    return PrefixPairs(ends, flat // width, flat % width, flat, last, width)


def prefix_adjacency(
    item_ids: Tensor,
    pairs: PrefixPairs,
    edge_weight: EdgeWeight = "binary",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Normalized in / out adjacency of every prefix's item graph, per pair and edge.

    item_ids (B, L) left-padded. Edge e joins position e to e + 1 (E = L - 1 edges). Returns
    (B, P, 2, E): for pair p = (t, j), [b, p, 0, e] is the weight with which j's node receives
    the state of position e (incoming: edge e ends at j's item), [b, p, 1, e] the weight with
    which it receives the state of position e + 1 (outgoing: edge e starts at j's item); only
    edges e < ends[t] exist in prefix t. Each (b, p, direction) row is divided by its sum (the
    node's in- / out-degree); a node without such edges has a zero row.
    """
    width = item_ids.shape[1]
    device = item_ids.device
    source, target = item_ids[:, :-1], item_ids[:, 1:]  # (B, E)
    is_edge = (source != 0) & (target != 0)  # (B, E) padding has no edges
    if edge_weight == "binary":
        # keep only the first occurrence of each (source, target) pair
        same_pair = (source[:, :, None] == source[:, None, :]) & (
            target[:, :, None] == target[:, None, :]
        )  # (B, E, E)
        earlier = torch.ones(width - 1, width - 1, dtype=torch.bool, device=device).tril(-1)
        is_edge = is_edge & ~(same_pair & earlier & is_edge[:, None, :]).any(-1)
    edge_ids = torch.arange(width - 1, device=device)
    in_prefix = edge_ids[None, :] < pairs.ends[:, None]  # (T, E) edge e ends at e + 1 <= t
    live = (is_edge[:, None, :] & in_prefix[None]).to(dtype)  # (B, T, E)
    live = live[:, pairs.prefix, None, :]  # (B, P, 1, E)
    ends_at = torch.stack([target, source], dim=1)  # (B, 2, E) the item each row matches
    matches = item_ids[:, pairs.position, None, None] == ends_at[:, None]  # (B, P, 2, E)
    adjacency = matches.to(dtype) * live
    return adjacency / adjacency.sum(-1, keepdim=True).clamp(min=1.0)


def _dense(packed: Tensor, pairs: PrefixPairs) -> Tensor:
    """(B, P, K) per pair -> (B, T, L, K), zeros outside the prefixes."""
    batch, _, size = packed.shape
    prefixes = pairs.ends.shape[0]
    dense = packed.new_zeros(batch, prefixes * pairs.width, size)
    return dense.index_copy(1, pairs.flat, packed).view(batch, prefixes, pairs.width, size)


class SRGNN(nn.Module):
    """(B, L) left-padded item ids -> (B, L, D); position t sees items at <= t only."""

    bidirectional = False

    def __init__(
        self,
        n_items: int,
        *,
        hidden_size: int,
        num_steps: int,
        max_len: int,
        dropout: float,
        init_std: float,
        edge_weight: EdgeWeight,
    ) -> None:
        super().__init__()
        self.n_items = n_items
        self.max_len = max_len
        self.num_steps = num_steps
        self.edge_weight: EdgeWeight = edge_weight
        size = hidden_size
        # row 0 padding, rows 1..n_items items; also the scoring table
        self.item_embedding = nn.Embedding(n_items + 1, size, padding_idx=0)
        self.dropout = Dropout(dropout)
        # gated graph cell, as in the SR-GNN code (GNNCell)
        self.edge_in = nn.Linear(size, size)
        self.edge_out = nn.Linear(size, size)
        self.bias_in = nn.Parameter(torch.zeros(size))  # added after aggregation
        self.bias_out = nn.Parameter(torch.zeros(size))
        self.gate_input = nn.Linear(2 * size, 3 * size)  # [incoming; outgoing] -> r, z, n
        self.gate_hidden = nn.Linear(size, 3 * size)
        # attention readout
        self.query = nn.Linear(size, size)
        self.key = nn.Linear(size, size)
        self.attention = nn.Linear(size, 1, bias=False)
        self.output = nn.Linear(2 * size, size)
        self._init_weights(init_std)

    def _init_weights(self, std: float) -> None:
        for name, parameter in self.named_parameters():
            if name.endswith("bias") or name.startswith("bias_"):
                nn.init.zeros_(parameter)
            else:
                nn.init.normal_(parameter, mean=0.0, std=std)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def forward(self, item_ids: Tensor, last_only: bool = False) -> Tensor:
        """(B, L) -> (B, L, D): position t from the prefix ending at t; padding rows are 0.
        `last_only` -> (B, 1, D): only the whole sequence's graph (one prefix, not L)."""
        width = item_ids.shape[1]
        start = width - 1 if last_only else 0
        ends = torch.arange(start, width, device=item_ids.device)
        return self.encode_prefixes(item_ids, ends)

    def predict_hidden(self, item_ids: Tensor) -> Tensor:
        """(B, L) histories -> (B, D): the whole history's representation."""
        return self(item_ids, last_only=True)[:, 0]

    def encode_prefixes(self, item_ids: Tensor, ends: Tensor) -> Tensor:
        """(B, L) ids, (T,) last positions of the prefixes -> (B, T, D) representations."""
        width = item_ids.shape[1]
        if width > self.max_len:
            raise ValueError(f"batch width {width} exceeds the model's max_len {self.max_len}")
        pairs = prefix_pairs(ends, width)
        embedded = self.dropout(self.item_embedding(item_ids))  # (B, L, D), every prefix
        adjacency = prefix_adjacency(item_ids, pairs, self.edge_weight, embedded.dtype)
        adjacency = adjacency.flatten(2)  # (B, P, 2E): incoming edges, then outgoing
        states = self._first_step(adjacency, embedded, pairs)  # (B, P, D)
        if self.num_steps > 1:
            dense_adjacency = _dense(adjacency, pairs)  # (B, T, L, 2E)
            for _ in range(self.num_steps - 1):
                states = self._next_step(dense_adjacency, states, pairs)
        return self._readout(states, item_ids != 0, pairs)

    def _messages(self, states: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """What each node sends along its in- and out-edges, already at the gate width.

        The SR-GNN cell computes gate_input([A_in (W_in h + b_in) + c_in; A_out (...) + c_out]).
        Its input matrix is applied before aggregating instead of after (linear, so exact), so
        the big per-pair tensor is produced once, directly at width 3D.
        (..., D) -> sent_in (..., 3D), sent_out (..., 3D), constant (3D,)."""
        weight_in, weight_out = self.gate_input.weight.split(states.shape[-1], dim=1)
        sent_in = F.linear(self.edge_in(states), weight_in)
        sent_out = F.linear(self.edge_out(states), weight_out)
        constant = (
            F.linear(self.bias_in, weight_in)
            + F.linear(self.bias_out, weight_out)
            + self.gate_input.bias
        )
        return sent_in, sent_out, constant

    def _first_step(self, adjacency: Tensor, embedded: Tensor, pairs: PrefixPairs) -> Tensor:
        """adjacency (B, P, 2E), embedded (B, L, D) shared by all prefixes -> (B, P, D)."""
        sent_in, sent_out, constant = self._messages(embedded)  # (B, L, 3D)
        # edge e brings the state of e (incoming) or of e + 1 (outgoing)
        sources = torch.cat([sent_in[:, :-1], sent_out[:, 1:]], dim=1)  # (B, 2E, 3D)
        gate_in = adjacency @ sources + constant  # (B, P, 3D)
        gate_hid = self.gate_hidden(embedded)[:, pairs.position]  # (B, P, 3D)
        return self._gru(gate_in, gate_hid, embedded[:, pairs.position])

    def _next_step(self, adjacency: Tensor, states: Tensor, pairs: PrefixPairs) -> Tensor:
        """adjacency (B, T, L, 2E), states (B, P, D) differing per prefix -> (B, P, D)."""
        sent_in, sent_out, constant = self._messages(states)  # (B, P, 3D)
        dense_in, dense_out = _dense(sent_in, pairs), _dense(sent_out, pairs)  # (B, T, L, 3D)
        sources = torch.cat([dense_in[:, :, :-1], dense_out[:, :, 1:]], dim=2)  # (B, T, 2E, 3D)
        gathered = (adjacency @ sources).flatten(1, 2)[:, pairs.flat]  # (B, P, 3D)
        return self._gru(gathered + constant, self.gate_hidden(states), states)

    @staticmethod
    def _gru(gate_in: Tensor, gate_hid: Tensor, previous: Tensor) -> Tensor:
        """GRU update from precomputed gate inputs: (B, P, 3D), (B, P, 3D), (B, P, D)."""
        in_r, in_z, in_n = gate_in.chunk(3, dim=-1)
        hid_r, hid_z, hid_n = gate_hid.chunk(3, dim=-1)
        reset = torch.sigmoid(in_r + hid_r)
        update = torch.sigmoid(in_z + hid_z)
        candidate = torch.tanh(in_n + reset * hid_n)
        return candidate + update * (previous - candidate)

    def _readout(self, states: Tensor, is_item: Tensor, pairs: PrefixPairs) -> Tensor:
        """states (B, P, D) -> (B, T, D): attention over each prefix's positions queried by its
        last item's state (sigmoid, unnormalized, as in SR-GNN), then output([pooled; last])."""
        last = states[:, pairs.last]  # (B, T, D)
        query = self.query(last)[:, pairs.prefix]  # (B, P, D)
        scores = self.attention(torch.sigmoid(query + self.key(states))).squeeze(-1)  # (B, P)
        weights = scores * is_item[:, pairs.position].to(states.dtype)  # padding never attends
        pooled = last.new_zeros(last.shape).index_add(1, pairs.prefix, weights[..., None] * states)
        represented = self.output(torch.cat([pooled, last], dim=-1))  # (B, T, D)
        return represented * is_item[:, pairs.ends, None].to(represented.dtype)
