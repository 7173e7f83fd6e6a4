"""SR-GNN: per-prefix session graphs, exactness against a loop reference, causality, padding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from lossbench.models.srgnn import (
    SRGNN,
    EdgeWeight,
    SRGNNConfig,
    prefix_adjacency,
    prefix_pairs,
)


def dense_adjacency(items: list[int], edge_weight: EdgeWeight = "binary") -> Tensor:
    """(T=L, L, 2, E) adjacency of every prefix of one sequence, zeros outside prefixes."""
    ids = torch.tensor([items])
    width = len(items)
    pairs = prefix_pairs(torch.arange(width), width)
    packed = prefix_adjacency(ids, pairs, edge_weight)[0]  # (P, 2, E)
    dense = torch.zeros(width, width, 2, width - 1)
    dense[pairs.prefix, pairs.position] = packed
    return dense


def make_model(n_items: int = 12, **settings: object) -> SRGNN:
    torch.manual_seed(0)
    # a wide init so that every weight visibly matters in the comparisons
    config = SRGNNConfig.model_validate(
        {"hidden_size": 8, "dropout": 0.0, "init_std": 0.3, **settings}
    )
    return SRGNN(n_items, **config.model_dump()).eval()


def test_adjacency_with_a_repeated_item_and_padding() -> None:
    # positions 0, 1 padding; edges e2: 5->7, e3: 7->5, e4: 5->9
    adjacency = dense_adjacency([0, 0, 5, 7, 5, 9])
    full = adjacency[5]  # the whole sequence
    incoming, outgoing = full[:, 0], full[:, 1]  # (L, E)
    for j in (2, 4):  # both positions of item 5 are one node
        assert incoming[j].tolist() == [0, 0, 0, 1, 0]  # from 7 (edge e3)
        assert outgoing[j].tolist() == [0, 0, 0.5, 0, 0.5]  # to 7 and to 9, out-degree 2
    assert incoming[3].tolist() == [0, 0, 1, 0, 0] and outgoing[3].tolist() == [0, 0, 0, 1, 0]
    assert incoming[5].tolist() == [0, 0, 0, 0, 1] and outgoing[5].sum() == 0
    assert full[:2].abs().sum() == 0  # padding rows
    # prefix [5, 7]: only edge e2 exists
    assert adjacency[3, 2, 1].tolist() == [0, 0, 1, 0, 0] and adjacency[3, 2, 0].sum() == 0
    assert adjacency[3, 3, 0].tolist() == [0, 0, 1, 0, 0] and adjacency[3, 3, 1].sum() == 0
    # prefix [5]: no edge at all
    assert adjacency[2].abs().sum() == 0
    # nothing outside the prefix: rows j > t are zero
    assert adjacency[3, 4:].abs().sum() == 0


def test_repeated_transition_is_binary_or_counted() -> None:
    items = [5, 7, 5, 7, 5, 9]  # 5->7 twice, 5->9 once
    binary = dense_adjacency(items, "binary")[5, 0, 1]  # out-row of item 5, whole sequence
    counted = dense_adjacency(items, "count")[5, 0, 1]
    assert binary.tolist() == [0.5, 0, 0, 0, 0.5]  # the second 5->7 (edge e2) is dropped
    assert counted.tolist() == pytest.approx([1 / 3, 0, 1 / 3, 0, 1 / 3])


def test_self_loop_and_length_one() -> None:
    loop = dense_adjacency([3, 3])[1]  # edge e0: 3->3, both positions are one node
    assert loop[:, 0].tolist() == [[1.0], [1.0]] and loop[:, 1].tolist() == [[1.0], [1.0]]
    assert dense_adjacency([0, 0, 4]).abs().sum() == 0
    model = make_model()
    out = model(torch.tensor([[0, 0, 4]]))
    assert torch.isfinite(out).all() and out[0, :2].abs().sum() == 0
    assert out[0, 2].abs().sum() > 0


def reference_srgnn(model: SRGNN, items: list[int], count: bool) -> Tensor:
    """SR-GNN of one unpadded sequence, written like the original code: unique-item nodes,
    dense in / out adjacency normalized by degree, GNN cell, attention over positions."""
    nodes = sorted(set(items))
    index = {item: i for i, item in enumerate(nodes)}
    graph = torch.zeros(len(nodes), len(nodes))
    for source, target in zip(items[:-1], items[1:], strict=True):
        graph[index[source], index[target]] += 1.0
    if not count:
        graph = (graph > 0).float()
    adjacency_in = (graph / graph.sum(0).clamp(min=1.0)).T  # row v: predecessors / in-degree
    adjacency_out = graph / graph.sum(1, keepdim=True).clamp(min=1.0)
    hidden = model.item_embedding.weight[nodes]
    for _ in range(model.num_steps):
        input_in = adjacency_in @ model.edge_in(hidden) + model.bias_in
        input_out = adjacency_out @ model.edge_out(hidden) + model.bias_out
        gate_in = model.gate_input(torch.cat([input_in, input_out], dim=-1))
        hidden = SRGNN._gru(gate_in, model.gate_hidden(hidden), hidden)
    sequence_hidden = hidden[[index[item] for item in items]]  # (n, D) one row per position
    last = sequence_hidden[-1]
    alpha = model.attention(torch.sigmoid(model.query(last) + model.key(sequence_hidden)))
    pooled = (alpha * sequence_hidden).sum(0)
    return model.output(torch.cat([pooled, last]))


@pytest.mark.parametrize(("num_steps", "edge_weight"), [(1, "binary"), (2, "binary"), (2, "count")])
def test_every_position_equals_the_prefix_graph_reference(
    num_steps: int, edge_weight: EdgeWeight
) -> None:
    model = make_model(num_steps=num_steps, edge_weight=edge_weight)
    sequences = [[3, 5, 3, 7, 7, 2, 3, 5], [4, 4, 9], [1], [6, 2, 6, 2, 6, 8]]
    width = 8
    batch = torch.tensor([[0] * (width - len(s)) + s for s in sequences])
    with torch.no_grad():
        out = model(batch)  # (B, L, D)
        last = model.predict_hidden(batch)
        for b, items in enumerate(sequences):
            start = width - len(items)
            for t in range(len(items)):
                expected = reference_srgnn(model, items[: t + 1], edge_weight == "count")
                torch.testing.assert_close(out[b, start + t], expected, atol=1e-5, rtol=1e-5)
            assert out[b, :start].abs().sum() == 0  # padding positions are zero
    torch.testing.assert_close(last, out[:, -1])


def test_causal_and_padding_invariant() -> None:
    model = make_model(num_steps=2)
    generator = torch.Generator().manual_seed(1)
    items = torch.randint(1, 13, (3, 10), generator=generator)  # small catalogue: many repeats
    items[0, :4] = 0
    with torch.no_grad():
        out = model(items)
        changed = items.clone()
        changed[:, 6:] = torch.randint(1, 13, (3, 4), generator=generator)
        changed_out = model(changed)
        torch.testing.assert_close(changed_out[:, :6], out[:, :6], atol=0, rtol=0)
        assert (changed_out[:, 6:] - out[:, 6:]).abs().max() > 1e-3
        padded = torch.cat([torch.zeros(3, 5, dtype=torch.long), items], dim=1)
        torch.testing.assert_close(model(padded)[:, 5:], out, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(model.predict_hidden(padded), out[:, -1], atol=1e-6, rtol=1e-6)


def test_gradients_reach_every_parameter() -> None:
    model = make_model(num_steps=2).train()
    items = torch.tensor([[0, 2, 3, 2, 4], [1, 1, 5, 6, 7]])
    model(items).square().sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert model.item_embedding.weight.grad is not None
    assert model.item_embedding.weight.grad[0].abs().sum() == 0  # padding row never trains


def test_too_wide_batch_is_refused() -> None:
    model = make_model(max_len=4)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.ones(1, 5, dtype=torch.long))


def test_last_only_is_the_last_column() -> None:
    model = make_model()
    items = torch.tensor([[0, 2, 3, 2, 4], [1, 1, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(items, last_only=True), model(items)[:, -1:])


def test_registered_and_trains_end_to_end(tmp_path: Path) -> None:
    from lossbench.data.store import make_synthetic_prepared
    from lossbench.models import MODELS
    from lossbench.training.config import build_config
    from lossbench.training.loop import train_run

    assert MODELS["srgnn"].default_loss == "ce" and not MODELS["srgnn"].bidirectional
    dataset = make_synthetic_prepared(n_users=40, n_items=30, mean_length=8, seed=0)
    for loss in ("ce", "improved"):
        config = build_config(
            overrides={
                "dataset": "synthetic", "model": "srgnn", "loss": loss, "max_epochs": 1,
                "batch_size": 16, "device": "cpu",
                "model_settings": {"hidden_size": 8, "max_len": 8},
            }
        )  # fmt: skip
        result = train_run(config, dataset, tmp_path / loss)
        assert 0.0 <= result.metrics["test"]["ndcg@10"] <= 1.0
