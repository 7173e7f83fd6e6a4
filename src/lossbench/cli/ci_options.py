"""Options for pipelines and tracking, shared by `compare` and `train`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

CI = "CI and tracking"

Smoke = Annotated[
    bool,
    typer.Option(
        "--smoke",
        help="Toy settings for CI (preset smoke: 1 block of width 32, 5 epochs, at most 1000 "
        "users): a 3-loss comparison on synthetic data trains in seconds.",
        rich_help_panel=CI,
    ),
]
SampleUsers = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Train and test on a fixed, seeded sample of N users (the same for every run).",
        rich_help_panel=CI,
    ),
]
Expect = Annotated[
    list[str] | None,
    typer.Option(
        "--expect",
        help="Exit 1 unless this holds, e.g. 'improved > bce', 'improved > bce significant', "
        "'ndcg@10(improved) >= 0.05', 'hr@10(a) >= 0.9 * hr@10(b)' (repeatable; a grid "
        "file's top-level expect = [...] adds more).",
        rich_help_panel=CI,
    ),
]
JsonOutput = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print one JSON document of the results on standard output "
        "(the display goes to standard error).",
        rich_help_panel=CI,
    ),
]
Junit = Annotated[
    Path | None,
    typer.Option(help="Write a JUnit XML report (expectations, failed runs).", rich_help_panel=CI),
]
Track = Annotated[
    str | None,
    typer.Option(
        help="Log runs to mlflow (a store in the output folder, or MLFLOW_TRACKING_URI) or "
        "tensorboard (event files in the output folder).",
        rich_help_panel=CI,
    ),
]

# The flags above that are not TrainConfig fields (`sample_users` is one).
AllowCollapsed = Annotated[
    bool,
    typer.Option(
        "--allow-collapsed",
        help="Judge --expect on a loss's runs that did not collapse (no better than the "
        "popularity floor on validation, or a non-finite loss) instead of failing it.",
        rich_help_panel=CI,
    ),
]
MemoryBudget = Annotated[
    str | None,
    typer.Option(
        help="Refuse, before training, any run whose estimated peak memory exceeds this "
        "(e.g. 8GB; binary units), naming the setting to lower; prints each loss's estimate.",
        rich_help_panel=CI,
    ),
]

NOT_CONFIG = (
    "smoke",
    "expect",
    "json_output",
    "junit",
    "track",
    "allow_collapsed",
    "memory_budget",
)
