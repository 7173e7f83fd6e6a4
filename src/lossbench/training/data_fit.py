"""Refuse, before anything trains, settings that make no sense on the chosen data: a sample of
more users than the dataset has, cut-offs asked for beyond its catalogue, a test split of one
user.

Each would run to the end and report numbers that mean nothing (HR@100000 = 1 on a catalogue
of 500; with one user every item but the target is in its history, so HR@1 = 1).
"""

from __future__ import annotations

from lossbench.data.prepared import PreparedDataset
from lossbench.errors import LossbenchError
from lossbench.training.config import TrainConfig
from lossbench.training.presets import PRESETS

# Fewer test users than this leave nothing to average or to test for significance.
MIN_TEST_USERS = 2


def check_data_fit(config: TrainConfig, dataset: PreparedDataset) -> None:
    """A one-line LossbenchError when `config` cannot be measured on `dataset` (sampled or
    not: a sample of N users has exactly N)."""
    name, n_users, n_items = dataset.name, dataset.n_users, dataset.n_items
    cap = PRESETS[config.preset].get("sample_users")  # a preset's sample is "at most N"
    if config.sample_users not in (None, cap) and config.sample_users > n_users:
        raise LossbenchError(
            f"--sample-users {config.sample_users:,} is more than the {n_users:,} users of "
            f"{name}; give at most {n_users:,}, or drop --sample-users to use them all"
        )
    tested = int((dataset.test_items > 0).sum())
    if config.sample_users is not None and config.sample_users < n_users:
        tested = min(tested, config.sample_users)  # not sampled yet
    if config.sample_users is not None:
        name = f"{name} with --sample-users {config.sample_users:,}"
    if tested < MIN_TEST_USERS:
        raise LossbenchError(
            f"{name} has {tested} test user{'s' if tested != 1 else ''}: metrics over so few "
            "users mean nothing (the items a user has are excluded, so the target may be all "
            f"that is left); use a dataset with at least {MIN_TEST_USERS} users"
        )
    default_ks = TrainConfig.model_fields["ks"].get_default(call_default_factory=True)
    too_large = [k for k in config.ks if k > n_items]
    if too_large and config.ks != default_ks:  # the defaults on a tiny catalogue are no junk
        raise LossbenchError(
            f"--ks {','.join(map(str, too_large))}: more than the {n_items:,} items of {name}, "
            f"so every run would score 1 there; use cut-offs up to {n_items:,}"
        )
