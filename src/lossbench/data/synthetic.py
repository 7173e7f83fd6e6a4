"""A generated dataset with real sequential structure, deterministic per seed.

Each item belongs to one topic and has one "successor" item. A user's next item is, with
probability `successor_prob`, the successor of the current item; otherwise it is drawn from
the current topic's Zipf-skewed popularity. Topics follow a sticky Markov chain. So the last
item predicts the next one strongly (a sequence model can learn it), the topic predicts it
weakly, and global popularity barely does. Items repeat within a user only with
`repeat_prob` > 0 (repeat consumption): then each next item is, with that probability, one
of the user's last `REPEAT_WINDOW` items again (the default 0 draws exactly what it drew
before the knob existed).
Item attributes are drawn mostly from a small set tied to the item's topic (for S3Rec).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from lossbench.data.registry import SyntheticSpec

REPEAT_WINDOW = 3  # a repeated item is one of the user's last 3 (re-listening, re-buying)


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
    by_topic = np.argsort(item_topic[1:], kind="stable") + 1  # (n,) items grouped by topic
    sizes = np.bincount(item_topic[1:], minlength=k)
    starts = np.cumsum(sizes) - sizes
    topics = item_topic[1:]
    same_topic = by_topic[starts[topics] + rng.integers(0, sizes[topics])]
    anywhere = rng.integers(1, n + 1, n)
    successor = np.zeros(n + 1, dtype=np.int64)
    successor[1:] = np.where(rng.random(n) < 0.8, same_topic, anywhere)
    items = np.arange(1, n + 1)
    successor[1:] = np.where(successor[1:] == items, items % n + 1, successor[1:])
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

    # Topic t's cumulative popularity shifted by t, flattened: one searchsorted draws for all.
    popularity_cdf = (popularity.cumsum(axis=1) + np.arange(n_topics)[:, None]).ravel()
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
        chosen = _next_items(
            rng,
            topic[active],
            previous[active] if step else None,
            seen[active],
            successor,
            popularity_cdf,
            spec.successor_prob,
        )
        if step and spec.repeat_prob > 0:
            chosen = _repeat_recent(rng, sequences[active, :step], chosen, spec.repeat_prob)
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


def _next_items(
    rng: np.random.Generator,
    topic: np.ndarray,
    previous: np.ndarray | None,
    seen: np.ndarray,
    successor: np.ndarray,
    popularity_cdf: np.ndarray,
    successor_prob: float,
) -> np.ndarray:
    """(A,) next items of A users: the successor of the previous item (when unseen) with
    probability `successor_prob`, else a draw from the topic's popularity among unseen items."""
    count, width = len(topic), seen.shape[1]
    rows = np.arange(count)
    chosen = np.zeros(count, dtype=np.int64)
    if previous is not None:
        candidate = successor[previous]
        take = (rng.random(count) < successor_prob) & ~seen[rows, candidate]
        chosen[take] = candidate[take]
    for _ in range(16):  # rejection sampling: redraw the ones that hit a seen item
        todo = np.flatnonzero(chosen == 0)
        if not len(todo):
            return chosen
        flat = np.searchsorted(popularity_cdf, topic[todo] + rng.random(len(todo)), side="right")
        draw = np.clip(flat - topic[todo] * width, 0, width - 1)
        fresh = ~seen[todo, draw]
        chosen[todo[fresh]] = draw[fresh]
    for row in np.flatnonzero(chosen == 0):  # topic (nearly) exhausted: any unseen item
        chosen[row] = rng.choice(np.flatnonzero(~seen[row]))
    return chosen


def _repeat_recent(
    rng: np.random.Generator, history: np.ndarray, chosen: np.ndarray, repeat_prob: float
) -> np.ndarray:
    """(A,) `chosen`, each replaced with probability `repeat_prob` by one of the last
    `REPEAT_WINDOW` items of its row of `history` (A, step), step >= 1."""
    step = history.shape[1]
    back = rng.integers(1, min(step, REPEAT_WINDOW) + 1, len(chosen))  # 1 = the previous item
    recent = history[np.arange(len(chosen)), step - back]
    return np.where(rng.random(len(chosen)) < repeat_prob, recent, chosen)


def _attributes(
    spec: SyntheticSpec, item_topic: np.ndarray, rng: np.random.Generator
) -> pl.DataFrame:
    """1-3 attributes per item, 80% from the block of attributes owned by the item's topic."""
    n_topics = int(item_topic.max()) + 1
    block = max(1, spec.n_attributes // n_topics)  # attributes per topic
    counts = rng.integers(1, 4, size=spec.n_items)  # (n_items,)
    items = np.repeat(np.arange(1, spec.n_items + 1), counts)  # (A,)
    own = (item_topic[items] * block + rng.integers(0, block, len(items))) % spec.n_attributes
    anywhere = rng.integers(0, spec.n_attributes, len(items))
    attributes = np.where(rng.random(len(items)) < 0.8, own, anywhere) + 1
    return pl.DataFrame({"item": items, "attribute": attributes}).cast(pl.Int64)
