"""`tune`: every loss tuned on validation with the same budget (Optuna), then a grid file that
retrains each at its tuned settings on fresh seeds."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console

from lossbench.api.comparing import dataset_preparer
from lossbench.api.plan import check_trials
from lossbench.api.requests import TuneRequest
from lossbench.api.results import TuneResult
from lossbench.compare.plan.grid import make_grid
from lossbench.errors import LossbenchError
from lossbench.training.config import merge_layers
from lossbench.training.names import Names

Announce = Callable[[str], None]


def tune(request: TuneRequest, console: Console, announce: Announce) -> TuneResult:
    """Check the budget, the names and the space, then tune each loss (a rerun adds only the
    missing trials) and write tuned.toml, the summary and the figure."""
    try:
        import optuna  # noqa: F401  the optional extra
    except ImportError:
        raise LossbenchError("lossbench tune needs Optuna: pip install 'lossbench[tune]'") from None
    from lossbench.tuning import study
    from lossbench.tuning.output import compare_command
    from lossbench.tuning.runner import tune_losses
    from lossbench.tuning.space import parse_space, read_tune_file

    check_trials(request.trials, request.timeout)
    names = Names(request.data_dir)
    names.dataset(request.dataset)  # an unknown name fails now, with a suggestion
    grid_values = {"datasets": [request.dataset], "models": [request.model]}
    losses = {"losses": list(request.losses)} if request.losses is not None else {}
    grid = make_grid(grid_values | losses, "options", names)
    config_file = request.config_file
    space_table, settings = read_tune_file(config_file) if config_file else (None, {})
    source = str(config_file) if config_file else "the built-in space"
    plan = study.TuneRequest(
        dataset=request.dataset,
        model=request.model,
        losses=list(dict.fromkeys(arm.loss for arm in grid.arms_for(request.model, names))),
        space=parse_space(space_table, request.model, source),
        settings=merge_layers(settings, request.settings),
        seed=request.seed,
        trials=request.trials if request.trials is not None or request.timeout is not None else 20,
        timeout=request.timeout,
        prune=request.prune,
        out_dir=request.out,
    )
    prepare = dataset_preparer(request.data_dir, announce)
    storage = request.storage or study.default_storage(request.out)
    outcomes, written = tune_losses(plan, storage, prepare, console)
    return TuneResult(request.out, outcomes, written, compare_command(request.out))
