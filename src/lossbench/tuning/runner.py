"""`lossbench tune` as one function: check everything, open the storage, tune every loss with
the same budget, then write the summary, the figure and the tuned grid."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console

from lossbench.data.prepared import PreparedDataset
from lossbench.data.splits import SplitSpec
from lossbench.training.data_fit import check_data_fit
from lossbench.tuning.output import summary_table, write_outputs
from lossbench.tuning.study import (
    LossOutcome,
    TuneRequest,
    check_request,
    default_storage,
    open_storage,
    shown_url,
    trial_config,
    tune_loss,
)


def tune_losses(
    request: TuneRequest,
    storage_url: str,
    prepare: Callable[[str, SplitSpec], PreparedDataset],
    console: Console | None = None,
    train: Callable[..., Any] | None = None,
) -> tuple[list[LossOutcome], list[Path]]:
    """Tune every loss of `request`; bad input fails before the storage opens or data loads."""
    console = console or Console(quiet=True)
    names = check_request(request)
    if storage_url == default_storage(request.out_dir):
        request.out_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(storage_url)
    request.out_dir.mkdir(parents=True, exist_ok=True)
    # Each trial gets our own line. A trial that raises (Ctrl-C included) reaches the caller
    # as that exception; Optuna's warning would print its traceback first.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # The split is a fixed setting, never tuned: every trial trains on the same data.
    first = trial_config(request, request.losses[0], request.space.first())
    dataset = prepare(request.dataset, first.split_spec)
    check_data_fit(first, dataset)
    outcomes = []
    for loss in request.losses:
        console.print(f"tuning [bold]{loss}[/]: study {names[loss]} in {shown_url(storage_url)}")
        outcomes.append(tune_loss(request, loss, names[loss], storage, dataset, console, train))
    console.print(summary_table(outcomes))
    return outcomes, write_outputs(request, outcomes, shown_url(storage_url))
