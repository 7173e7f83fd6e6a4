"""`lossbench tune`: every loss tuned on validation with the same budget (Optuna)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lossbench.cli import ci_options as ci
from lossbench.cli import options as opt
from lossbench.cli.app import DataDir, announce, app, console, console_err, current_data_dir
from lossbench.cli.outputs import print_json

TUNE = "Tuning"
DEFAULT_OUT = Path("runs/tune")
# tune's options that are no TrainConfig field.
NOT_TRAINING = (
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
)


Dataset = Annotated[
    str, typer.Option(help="Dataset to tune on (its validation split).", rich_help_panel=TUNE)
]
Model = Annotated[str, typer.Option(help="Model (see `lossbench models`).", rich_help_panel=TUNE)]
Losses = Annotated[
    str | None,
    typer.Option(
        help="Losses to tune, e.g. bce,improved (default bce,ce,improved); "
        "'original' = the model's own.",
        rich_help_panel=TUNE,
    ),
]
Trials = Annotated[
    int | None,
    typer.Option(
        help="Trials per loss (pruned ones count; default 20 without --timeout); "
        "a rerun adds only the missing ones.",
        rich_help_panel=TUNE,
    ),
]
Timeout = Annotated[
    float | None,
    typer.Option(
        help="Seconds of trials per loss (with or instead of --trials).", rich_help_panel=TUNE
    ),
]
Seed = Annotated[
    int,
    typer.Option(
        help="Training seed of every trial; the k-th trial's sampler gets seed + k.",
        rich_help_panel=TUNE,
    ),
]
Prune = Annotated[
    bool,
    typer.Option(
        "--prune/--no-prune",
        help="Stop trials whose validation curve is below the median of earlier trials.",
        rich_help_panel=TUNE,
    ),
]
Storage = Annotated[
    str | None,
    typer.Option(
        help="Optuna RDB storage URL shared by several tune processes, e.g. "
        "postgresql://user:password@host/db (default: sqlite in --out).",
        rich_help_panel=TUNE,
    ),
]
Out = Annotated[
    Path,
    typer.Option(
        help="Folder of the study, trials, summary, figure and tuned.toml.",
        rich_help_panel=TUNE,
    ),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML: \\[tune.space] the settings to tune (default lr and dropout); "
        "\\[settings] fixed for every trial (flags override them).",
        rich_help_panel=TUNE,
    ),
]
Init = Annotated[
    Path | None,
    typer.Option(help="Pre-trained checkpoint to fine-tune (s3rec).", rich_help_panel=opt.RUN),
]


@app.command()
@opt.training_flags
def tune(
    context: typer.Context,
    dataset: Dataset = "synthetic",
    model: Model = "sasrec",
    losses: Losses = None,
    trials: Trials = None,
    timeout: Timeout = None,
    seed: Seed = 0,
    prune: Prune = True,
    storage: Storage = None,
    out: Out = DEFAULT_OUT,
    config_file: ConfigFile = None,
    init: Init = None,
    preset: opt.Preset = None,
    training: opt.TrainingFlags = opt.NO_FLAGS,
    json_output: ci.JsonOutput = False,
    data_dir: DataDir = None,
) -> None:
    """Tune every loss on validation with the same budget, then write a grid that retrains each
    at its tuned settings on fresh seeds (`lossbench compare --config OUT/tuned.toml`)."""
    settings = opt.training_overrides(locals(), skip=NOT_TRAINING)  # first: only the options
    from lossbench import api

    request = api.TuneRequest(
        dataset=dataset,
        model=model,
        losses=None if losses is None else tuple(p.strip() for p in losses.split(",") if p.strip()),
        trials=trials,
        timeout=timeout,
        seed=seed,
        prune=prune,
        storage=storage,
        out=out,
        config_file=config_file,
        settings=settings,
        data_dir=current_data_dir(context),
    )
    display = console_err if json_output else console
    result = api.tune(request, display, announce)
    display.print(f"tuned settings in {out / 'tuned.toml'}; retrain and test them on fresh seeds:")
    display.print(f"  {result.compare_command}", highlight=False, soft_wrap=True)
    if json_output:  # tuning.json as written, with the files and the command that follows
        from lossbench.tuning.output import SUMMARY_FILE

        document = json.loads((out / SUMMARY_FILE).read_text())
        files = {"files": [str(path) for path in result.written]}
        print_json(document | files | {"compare_command": result.compare_command})


__all__ = ["tune"]
