"""`lossbench tune`: every loss tuned on validation with the same budget (Optuna)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from lossbench.cli import ci_options as ci
from lossbench.cli import options as opt
from lossbench.cli.app import DataDir, GlobalOptions, announce, app, console, console_err
from lossbench.cli.outputs import print_json
from lossbench.errors import LossbenchError

TUNE = "Tuning"
DEFAULT_OUT = Path("runs/tune")


@app.command()
@opt.training_flags
def tune(
    dataset: Annotated[
        str, typer.Option(help="Dataset to tune on (its validation split).", rich_help_panel=TUNE)
    ] = "synthetic",
    model: Annotated[
        str, typer.Option(help="Model (see `lossbench models`).", rich_help_panel=TUNE)
    ] = "sasrec",
    losses: Annotated[
        str | None,
        typer.Option(
            help="Losses to tune, e.g. bce,improved (default bce,ce,improved); "
            "'original' = the model's own.",
            rich_help_panel=TUNE,
        ),
    ] = None,
    trials: Annotated[
        int | None,
        typer.Option(
            help="Trials per loss (pruned ones count; default 20 without --timeout); "
            "a rerun adds only the missing ones.",
            rich_help_panel=TUNE,
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds of trials per loss (with or instead of --trials).", rich_help_panel=TUNE
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(
            help="Training seed of every trial; the k-th trial's sampler gets seed + k.",
            rich_help_panel=TUNE,
        ),
    ] = 0,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune/--no-prune",
            help="Stop trials whose validation curve is below the median of earlier trials.",
            rich_help_panel=TUNE,
        ),
    ] = True,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna RDB storage URL shared by several tune processes, e.g. "
            "postgresql://user:password@host/db (default: sqlite in --out).",
            rich_help_panel=TUNE,
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            help="Folder of the study, trials, summary, figure and tuned.toml.",
            rich_help_panel=TUNE,
        ),
    ] = DEFAULT_OUT,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="TOML: \\[tune.space] the settings to tune (default lr and dropout); "
            "\\[settings] fixed for every trial (flags override them).",
            rich_help_panel=TUNE,
        ),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(help="Pre-trained checkpoint to fine-tune (s3rec).", rich_help_panel=opt.RUN),
    ] = None,
    preset: opt.Preset = None,
    training: opt.TrainingFlags = opt.NO_FLAGS,
    json_output: ci.JsonOutput = False,
    data_dir: DataDir = None,
) -> None:
    """Tune every loss on validation with the same budget, then write a grid that retrains each
    at its tuned settings on fresh seeds (`lossbench compare --config OUT/tuned.toml`)."""
    flags = opt.training_overrides(
        locals(),
        skip=(
            "dataset",
            "model",
            "losses",
            "trials",
            "timeout",
            "seed",
            "prune",
            "storage",
            "out",
            "config_file",
            "json_output",
        ),
    )
    try:
        import optuna  # noqa: F401  the optional extra
    except ImportError:
        raise LossbenchError("lossbench tune needs Optuna: pip install 'lossbench[tune]'") from None
    from lossbench.compare.plan.grid import make_grid, merge_settings
    from lossbench.data.prepared import PreparedDataset
    from lossbench.data.registry import get_dataset
    from lossbench.data.splits import SplitSpec
    from lossbench.data.store import ensure_prepared, prepare_on_first_use
    from lossbench.tuning.output import SUMMARY_FILE, compare_command
    from lossbench.tuning.runner import tune_losses
    from lossbench.tuning.space import parse_space, read_tune_file
    from lossbench.tuning.study import TuneRequest, default_storage

    if trials is not None and trials < 1:
        raise LossbenchError(f"--trials must be at least 1, not {trials}")
    if timeout is not None and not 0 < timeout < math.inf:  # nan fails both comparisons
        raise LossbenchError(f"--timeout must be a positive number of seconds, not {timeout:g}")
    get_dataset(dataset)  # an unknown name fails now, with a suggestion
    names = None if losses is None else [p.strip() for p in losses.split(",") if p.strip()]
    grid_values = {"datasets": [dataset], "models": [model]}
    grid = make_grid(grid_values | ({"losses": names} if names is not None else {}), "options")
    space_table, settings = read_tune_file(config_file) if config_file else (None, {})
    source = str(config_file) if config_file else "the built-in space"
    request = TuneRequest(
        dataset=dataset,
        model=model,
        losses=list(dict.fromkeys(arm.loss for arm in grid.arms_for(model))),
        space=parse_space(space_table, model, source),
        settings=merge_settings(settings, flags),
        seed=seed,
        trials=trials if trials is not None or timeout is not None else 20,
        timeout=timeout,
        prune=prune,
        out_dir=out,
    )
    display = console_err if json_output else console

    def prepare(name: str, split: SplitSpec) -> PreparedDataset:
        prepare_on_first_use(GlobalOptions.data_dir, name, split, announce)
        return ensure_prepared(GlobalOptions.data_dir, name, split)

    _, written = tune_losses(
        request,
        storage or default_storage(out),
        prepare,
        display,
    )
    display.print(f"tuned settings in {out / 'tuned.toml'}; retrain and test them on fresh seeds:")
    display.print(f"  {compare_command(out)}", highlight=False, soft_wrap=True)
    if json_output:  # tuning.json as written, with the files and the command that follows
        document = json.loads((out / SUMMARY_FILE).read_text())
        files = {"files": [str(path) for path in written], "compare_command": compare_command(out)}
        print_json(document | files)


__all__ = ["tune"]
