"""A generated dataset with real sequential structure, deterministic per seed.

Each item belongs to one topic and has one "successor" item. A user's next item is, with
probability `successor_prob`, the successor of the current item; otherwise it is drawn from
the current topic's Zipf-skewed popularity. Topics follow a sticky Markov chain. Items never
repeat within a user. So the last item predicts the next one strongly (a sequence model can
learn it), the topic predicts it weakly, and global popularity barely does.
Item attributes are drawn mostly from a small set tied to the item's topic (for S3Rec).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from lossbench.data.registry import Protocol, SyntheticSpec

if TYPE_CHECKING:
    from lossbench.data.prepared import PreparedDataset


def _item_structure(
    spec: SyntheticSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(topic of each item, successor of each item, (n_topics, n_items + 1) popularity)."""
    n, k = spec.n_items, min(spec.n_topics, spec.n_items)
    item_topic = np.zeros(n + 1, dtype=np.int64)  # index 0 unused (padding)
    item_topic[1:] = rng.permutation(np.arange(n) % k)
    popularity = np.zeros((k, n + 1))
    for topic in range(k):
        members = np.flatnonzero(item_topic == topic)
        members = members[members > 0]
        ranks = rng.permutation(len(members)) + 1
        popularity[topic, members] = ranks**-spec.popularity_exponent
    popularity /= popularity.sum(axis=1, keepdims=True)
    # Successors stay in the item's topic 80% of the time; never the item itself.
    successor = np.zeros(n + 1, dtype=np.int64)
    for item in range(1, n + 1):
        same = rng.random() < 0.8
        pool = np.flatnonzero(item_topic == item_topic[item]) if same else np.arange(1, n + 1)
        pool = pool[(pool != item) & (pool > 0)]
        successor[item] = rng.choice(pool) if len(pool) else (item % n) + 1
    return item_topic, successor, popularity


def generate_interactions(
    **knobs: float | int,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(interactions `user, item, timestamp, rating`, attributes `item, attribute`)."""
    spec = SyntheticSpec.model_validate(knobs)
    rng = np.random.default_rng(spec.seed)
    item_topic, successor, popularity = _item_structure(spec, rng)
    n_topics = popularity.shape[0]
    stay = spec.topic_stay
    switch = rng.dirichlet(np.ones(n_topics), size=n_topics)
    transition = stay * np.eye(n_topics) + (1 - stay) * switch  # (K, K) row-stochastic

    max_length = max(spec.min_length, min(spec.n_items // 2, int(spec.mean_length * 4)))
    extra = rng.geometric(1.0 / max(1.0, spec.mean_length - spec.min_length + 1), spec.n_users)
    lengths = np.clip(spec.min_length + extra - 1, spec.min_length, max_length)

    users = spec.n_users
    seen = np.zeros((users, spec.n_items + 1), dtype=bool)
    seen[:, 0] = True  # padding is never drawn
    sequences = np.zeros((users, max_length), dtype=np.int64)  # (U, L_max)
    topic = rng.choice(n_topics, size=users)
    previous = np.zeros(users, dtype=np.int64)
    for step in range(max_length):
        active = np.flatnonzero(lengths > step)
        if step:
            cumulative = transition[topic[active]].cumsum(axis=1)
            draws = rng.random((len(active), 1))
            topic[active] = np.minimum((cumulative < draws).sum(axis=1), n_topics - 1)
        # (A, n_items + 1) next-item distribution: topic popularity mixed with the successor.
        weights = (1 - spec.successor_prob) * popularity[topic[active]]
        if step:
            weights[np.arange(len(active)), successor[previous[active]]] += spec.successor_prob
        weights[seen[active]] = 0.0
        empty = weights.sum(axis=1) == 0  # topic exhausted: any unseen item
        weights[empty] = (~seen[active[empty]]).astype(float)
        cumulative = weights.cumsum(axis=1)
        draws = rng.random(len(active)) * cumulative[:, -1]
        chosen = (cumulative < draws[:, None]).sum(axis=1)
        sequences[active, step] = chosen
        seen[active, chosen] = True
        previous[active] = chosen
        topic[active] = item_topic[chosen]

    mask = np.arange(max_length)[None, :] < lengths[:, None]
    user_ids, positions = np.nonzero(mask)
    interactions = pl.DataFrame(
        {
            "user": user_ids + 1,
            "item": sequences[mask],
            "timestamp": positions.astype(np.int64),
            "rating": pl.Series([None] * len(user_ids), dtype=pl.Float64),
        }
    )
    return interactions, _attributes(spec, item_topic, rng)


def _attributes(
    spec: SyntheticSpec, item_topic: np.ndarray, rng: np.random.Generator
) -> pl.DataFrame:
    """1-3 attributes per item, 80% from the 4 attributes tied to the item's topic."""
    n_attrs = spec.n_attributes
    rows_item, rows_attr = [], []
    for item in range(1, spec.n_items + 1):
        base = (item_topic[item] * 4) % n_attrs
        for _ in range(rng.integers(1, 4)):
            own = rng.random() < 0.8
            attr = (base + rng.integers(4)) % n_attrs if own else rng.integers(n_attrs)
            rows_item.append(item)
            rows_attr.append(int(attr) + 1)
    return pl.DataFrame(
        {"item": rows_item, "attribute": rows_attr},
        schema=[("item", pl.Int64), ("attribute", pl.Int64)],
    )


def make_synthetic_prepared(
    *,
    n_users: int = 2000,
    n_items: int = 500,
    mean_length: float = 30.0,
    min_length: int = 5,
    n_topics: int = 10,
    n_attributes: int = 40,
    topic_stay: float = 0.85,
    successor_prob: float = 0.5,
    popularity_exponent: float = 1.0,
    seed: int = 0,
) -> PreparedDataset:
    """The synthetic dataset as a `PreparedDataset`, in memory (no files): for tests."""
    knobs = dict(locals())  # exactly the keyword arguments above
    from lossbench.data.prepared import prepared_from_frames
    from lossbench.data.preprocess import build_tables, summary_stats

    raw, attributes = generate_interactions(**knobs)
    tables = build_tables(raw, Protocol(dedup=False), attributes)
    meta = {"name": "synthetic", **summary_stats(tables), "sources": {"generator": knobs}}
    return prepared_from_frames("synthetic", tables.split, meta, tables.item_attributes)
