"""Runs that are averaged or paired must have been trained alike; say so when they were not.

A report pools a row's seeds (mean +- std) and pairs each row's runs with the baseline's by
seed; a row is a loss arm (a loss, maybe with its own sampler, logQ or shuffled order). It
compares every recorded setting of those runs: its `config` (execution-only settings aside),
the resolved `model_settings` and `loss_settings`, the `sources` of its loss and model code,
and the `dataset` it read. Runs of one row
must agree on all of them but the seed; runs of different rows on all but the seed and the
arm's and loss's own settings; and the rows must share their seeds. The check is generic: a
setting added to the configuration is compared without any change here.

By default a report that would mix runs is refused, naming the settings that differ. With
`--allow-mixed` the runs are labelled with their differing values (`bce [max_epochs=1]`), so
runs that differ are shown side by side instead of averaged, under a warning line.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from lossbench.errors import LossbenchError
from lossbench.training.run_files import (
    NOT_RECORDED,
    flat_settings,
    read_record,
    setting_text,
    with_backfilled,
)

# What a comparison varies on purpose: the loss is each row's label, the seed is pooled over.
IGNORED = frozenset({"loss", "seed"})
# What tells the arms of one comparison apart besides the loss (`plan/arms.py`): they may differ
# between rows, never within one.
ARM_SETTINGS = frozenset({"sampler", "logq", "negatives_unseen", "shuffle_train"})
LABEL = "loss"  # the column that names the rows of a summary


def run_settings(run_dir: Path) -> dict[str, str]:
    """Every recorded setting of a run folder, flat (`model_settings.max_len`), as text."""
    record = read_record(run_dir) or {}
    config = with_backfilled(record.get("config", {}))
    flat = flat_settings({k: v for k, v in config.items() if k != "model_settings"})
    for section in ("model_settings", "loss_settings", "sources", "dataset"):
        flat.update(flat_settings(record.get(section) or {}, f"{section}."))
    return {key: setting_text(value) for key, value in flat.items()}


def varies_across_losses(key: str) -> bool:
    """The arm's settings and the loss's own resolved ones (positions, negatives...) differ
    from row to row of a comparison."""
    return key in ARM_SETTINGS or key.startswith(("loss_settings.", "sources.loss."))


@dataclass
class Mixing:
    """What differs among the runs of one summary group."""

    group: str  # "toy sasrec"
    # setting -> value -> the runs ("bce seed 2") that have it
    settings: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    seeds: dict[str, list[int]] = field(default_factory=dict)  # label -> seeds, if they differ
    labelled: dict[str, set[str]] = field(default_factory=dict)  # setting -> labels it splits

    def describe(self) -> str:
        parts = [
            f"{key} ({', '.join(_holders(value, runs) for value, runs in sorted(values.items()))})"
            for key, values in self.settings.items()
        ]
        if self.seeds:
            seeds = "; ".join(f"{label} {_numbers(s)}" for label, s in self.seeds.items())
            parts.append(f"seeds ({seeds})")
        return f"{self.group}: {', '.join(parts)}"


def find_mixing(
    group: pl.DataFrame, name: str, may_differ_across: Callable[[str], bool] | None
) -> Mixing | None:
    """The differences among `group`'s runs (one row per run: `run_dir`, `seed`, LABEL).

    `may_differ_across(key)`: the settings that may differ between rows of different labels
    (they must still agree within one label); None: every setting may (`versus`'s two sets)."""
    columns = (group[LABEL].to_list(), group["seed"].to_list(), group["run_dir"].to_list())
    runs = list(zip(*columns, strict=True))
    settings = {run_dir: run_settings(Path(run_dir)) for *_, run_dir in runs}
    mixing = Mixing(name)
    keys = sorted({key for values in settings.values() for key in values} - IGNORED)
    for key in keys:
        within_labels = may_differ_across is None or may_differ_across(key)
        scopes: dict[str, set[str]] = defaultdict(set)
        for label, _, run_dir in runs:
            scopes[label if within_labels else ""].add(settings[run_dir].get(key, NOT_RECORDED))
        mixed = {scope for scope, values in scopes.items() if len(values) > 1}
        if not mixed:
            continue
        holders: dict[str, list[str]] = defaultdict(list)
        for label, seed, run_dir in runs:
            if (label if within_labels else "") in mixed:
                holders[settings[run_dir].get(key, NOT_RECORDED)].append(f"{label} seed {seed}")
        mixing.settings[key] = dict(holders)
        labels = {label for label, *_ in runs}
        mixing.labelled[key] = mixed if within_labels else labels
    seeds = {
        label: sorted(group.filter(pl.col(LABEL) == label)["seed"].to_list())
        for label in group[LABEL].unique(maintain_order=True).to_list()
    }
    if len({tuple(s) for s in seeds.values()}) > 1:
        mixing.seeds = seeds
    return mixing if mixing.settings or mixing.seeds else None


def check_mixing(
    runs: pl.DataFrame,
    groups: list[str],
    may_differ_across: Callable[[str], bool] | None,
    allow_mixed: bool,
) -> tuple[pl.DataFrame, str | None]:
    """(`runs`, None) when nothing is mixed; else refused, or (`allow_mixed`) relabelled so
    that runs with different settings are separate rows, with the warning line to show."""
    found: list[Mixing] = []
    relabel: dict[str, str] = {}
    for key, group in runs.group_by(groups, maintain_order=True):
        mixing = find_mixing(group, " ".join(map(str, key)), may_differ_across)
        if mixing is None:
            continue
        found.append(mixing)
        for run_dir, label in zip(group["run_dir"].to_list(), group[LABEL].to_list(), strict=True):
            values = run_settings(Path(run_dir))
            shown = [
                f"{key}={values.get(key, NOT_RECORDED)}"
                for key, labels in mixing.labelled.items()
                if label in labels
            ]
            relabel[run_dir] = f"{label} [{', '.join(shown)}]" if shown else label
    if not found:
        return runs, None
    described = "; ".join(mixing.describe() for mixing in found)
    if not allow_mixed:
        raise LossbenchError(
            f"these runs were not trained alike, so they cannot be averaged or paired: "
            f"{described}; add --allow-mixed to show them side by side, or retrain them alike"
        )
    labels = [relabel.get(d, label) for d, label in zip(runs["run_dir"], runs[LABEL], strict=True)]
    warning = f"warning: runs not trained alike, shown side by side: {described}"
    return runs.with_columns(pl.Series(LABEL, labels)), warning


def variants(runs: pl.DataFrame, loss: str) -> list[str]:
    """The labels of `loss`'s rows after `check_mixing` (itself, or `loss [...]` ones), the
    one with the most runs first: the natural baseline among them."""
    counts = runs[LABEL].value_counts()
    mine = counts.filter((pl.col(LABEL) == loss) | pl.col(LABEL).str.starts_with(f"{loss} ["))
    return mine.sort(["count", LABEL], descending=[True, False])[LABEL].to_list()


def _holders(value: str, runs: list[str]) -> str:
    return f"{value} in {', '.join(runs)}" if len(runs) <= 2 else f"{value} in {len(runs)} runs"


def _numbers(values: list[int]) -> str:
    return ",".join(str(v) for v in values)
