"""Options for pipelines and tracking, shared by `compare` and `train`, and their groups."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from lossbench.cli.options import in_panel

CI = "CI and tracking"
ci_option = in_panel(CI)

Smoke = Annotated[
    bool,
    ci_option(
        "--smoke",
        help="Toy settings for CI (preset smoke: 1 block of width 32, 5 epochs, at most 1000 "
        "users): a 3-loss comparison on synthetic data trains in seconds.",
    ),
]
SampleUsers = Annotated[
    int | None,
    ci_option(
        min=1, help="Train and test on a fixed, seeded sample of N users (the same for every run)."
    ),
]
Expect = Annotated[
    list[str] | None,
    ci_option(
        "--expect",
        help="Exit 1 unless this holds, e.g. 'improved > bce', 'improved > bce significant', "
        "'ndcg@10(improved) >= 0.05', 'hr@10(a) >= 0.9 * hr@10(b)' (repeatable; a grid "
        "file's top-level expect = [...] adds more).",
    ),
]
JsonOutput = Annotated[
    bool,
    ci_option(
        "--json",
        help="Print one JSON document of the results on standard output "
        "(the display goes to standard error).",
    ),
]
Junit = Annotated[
    Path | None,
    ci_option(help="Write a JUnit XML report (expectations, failed runs)."),
]
Track = Annotated[
    str | None,
    ci_option(
        help="Log runs to mlflow (a store in the output folder, or MLFLOW_TRACKING_URI) or "
        "tensorboard (event files in the output folder)."
    ),
]

AllowCollapsed = Annotated[
    bool,
    ci_option(
        "--allow-collapsed",
        help="Judge --expect on a loss's runs that did not collapse (no better than the "
        "popularity floor on validation, or a non-finite loss) instead of failing it.",
    ),
]
MemoryBudget = Annotated[
    str | None,
    ci_option(
        help="Refuse, before training, any run whose estimated peak memory exceeds this "
        "(e.g. 8GB; binary units), naming the setting to lower; prints each loss's estimate."
    ),
]


@dataclass(frozen=True)
class CiOptions:
    """`compare`'s CI and tracking options (an option group); `sample_users` is a TrainConfig
    field, the others are the request's."""

    smoke: Smoke = False
    sample_users: SampleUsers = None
    expect: Expect = None
    allow_collapsed: AllowCollapsed = False
    memory_budget: MemoryBudget = None
    json_output: JsonOutput = False
    junit: Junit = None
    track: Track = None


@dataclass(frozen=True)
class TrainCiOptions:
    """`train`'s CI and tracking options (an option group)."""

    smoke: Smoke = False
    sample_users: SampleUsers = None
    json_output: JsonOutput = False
    track: Track = None
