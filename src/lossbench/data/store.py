"""Where a prepared dataset comes from: the data directory, prepared on first use from its
downloaded or local files, or generated in memory (the synthetic dataset, for tests).
`prepared.py` is the format alone; this module decides when to prepare."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lossbench.data.download import is_downloaded
from lossbench.data.local_files import local_sources
from lossbench.data.prepared import (
    OriginalIds,
    PreparedDataset,
    is_prepared,
    load_prepared,
    prepared_dir,
    prepared_from_frames,
    preprocess_command,
    read_meta,
)
from lossbench.data.preprocess import build_tables, preprocess_dataset, summary_stats
from lossbench.data.registry import Protocol, get_dataset
from lossbench.data.splits import LOO, SplitSpec, check_timed
from lossbench.data.synthetic import generate_interactions
from lossbench.errors import LossbenchError


def ensure_prepared(data_dir: Path, name: str, split: SplitSpec = LOO) -> PreparedDataset:
    """Load `name` split by `split`, preparing on the fly: `synthetic` (again when its folder
    is stale or damaged), a user's own file (again when its registry entry names another
    version), and a downloaded dataset not prepared yet (`prepare_on_first_use`)."""

    entry = get_dataset(name, data_dir=data_dir)
    check_timed(name, entry.format, split)
    if entry.local_file is not None:
        _prepare_local(data_dir, name, split)
    elif entry.generator is not None:
        preprocess_dataset(data_dir, name, split=split)  # a no-op when prepared alike
    else:
        prepare_on_first_use(data_dir, name, split)
    return load_prepared(data_dir, name, split)


def prepare_on_first_use(
    data_dir: Path,
    name: str,
    split: SplitSpec = LOO,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Prepare a downloaded registered dataset not yet prepared with `split`, with its
    registered protocol (`announce` gets one line saying so first); a registered dataset that
    is not downloaded is one line naming the command that fetches it. Generated datasets and
    a user's own files are left to `ensure_prepared`."""

    entry = get_dataset(name, data_dir=data_dir)
    if entry.local_file is not None or entry.generator is not None:
        return
    check_timed(name, entry.format, split)
    if is_prepared(data_dir, name, split):
        return
    if not is_downloaded(data_dir, entry):
        raise LossbenchError(
            f"dataset {name} is not downloaded: run `lossbench download {name}` "
            "(it is prepared on first use)"
        )
    if announce is not None:
        announce(
            f"preparing {name} ({split.label} split) with its registered protocol, once "
            f"(as `{preprocess_command(name, split)}` does)"
        )
    preprocess_dataset(data_dir, name, split=split)


def _prepare_local(data_dir: Path, name: str, split: SplitSpec) -> None:
    """Keep a prepared local file whose source is the registered one (whatever protocol
    `preprocess` was given), else prepare it with the entry's protocol."""

    sources = local_sources(get_dataset(name, data_dir=data_dir))  # refuses a changed file
    meta = read_meta(prepared_dir(data_dir, name, split))
    if meta is None or meta.get("sources") != sources:
        preprocess_dataset(data_dir, name, split=split)


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
    repeat_prob: float = 0.0,
    seed: int = 0,
) -> PreparedDataset:
    """The synthetic dataset as a `PreparedDataset`, in memory (no files): for tests."""
    knobs = dict(locals())  # exactly the keyword arguments above
    raw, attributes = generate_interactions(**knobs)
    tables = build_tables(raw, Protocol(dedup=False), attributes)
    meta = {"name": "synthetic", **summary_stats(tables), "sources": {"generator": knobs}}
    original_ids = OriginalIds.from_maps(tables.users, tables.items)
    return prepared_from_frames(
        "synthetic", tables.split, meta, tables.item_attributes, original_ids
    )
