"""How finished runs are summarized (`compare`, `report`, `reproduce`, `versus`): the options
and their group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer

from lossbench.api.requests import SummaryRequest
from lossbench.cli.parsing import names_list

COMPARE = "Comparison"

Metrics = Annotated[
    str,
    typer.Option(
        help="Test metrics in the table, e.g. hr@10,ndcg@10,mrr "
        "(any k: recomputed from the saved ranks).",
        rich_help_panel=COMPARE,
    ),
]
SignificanceMetric = Annotated[
    str,
    typer.Option(help="Per-user metric of the paired significance test.", rich_help_panel=COMPARE),
]
Permutations = Annotated[
    int | None,
    typer.Option(
        help="Random sign flips of the permutation test.",
        show_default="10000",
        rich_help_panel=COMPARE,
    ),
]
Alpha = Annotated[
    float,
    typer.Option(help="Significance level (Holm-corrected across rows).", rich_help_panel=COMPARE),
]


@dataclass(frozen=True)
class SummaryOptions:
    """`--metrics`, `--significance-metric`, `--permutations`, `--alpha` (an option group;
    the API checks the values)."""

    metrics: Metrics = "hr@10,ndcg@10"
    significance_metric: SignificanceMetric = "ndcg@10"
    permutations: Permutations = None
    alpha: Alpha = 0.05

    def request(self) -> SummaryRequest:
        shown = names_list(self.metrics, "--metrics") or ()
        return SummaryRequest(shown, self.significance_metric, self.permutations, self.alpha)
