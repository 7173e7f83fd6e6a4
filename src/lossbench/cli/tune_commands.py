"""`lossbench tune`: every loss tuned on validation with the same budget (Optuna)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lossbench.api.requests import TuneRequest
from lossbench.cli import options as opt
from lossbench.cli.app import DataDir, announce, command, current_data_dir, display
from lossbench.cli.outputs import print_json
from lossbench.cli.parsing import names_list

if TYPE_CHECKING:
    from lossbench.api.results import TuneResult

TUNE = "Tuning"
DEFAULT_OUT = Path("runs/tune")
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
        help="Folder of the study, trials, summary, figure and tuned.toml.", rich_help_panel=TUNE
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


@dataclass(frozen=True)
class TuneOptions:
    """What `tune` tunes, with what budget, where, and from which pre-trained checkpoint (an
    option group). The fields but `init` are `TuneRequest`'s, by name."""

    dataset: Dataset = "synthetic"
    model: Model = "sasrec"
    losses: Losses = None
    trials: Trials = None
    timeout: Timeout = None
    seed: Seed = 0
    prune: Prune = True
    storage: Storage = None
    out: Out = DEFAULT_OUT
    config_file: ConfigFile = None
    init: opt.Init = None

    def request(
        self, training: opt.TrainingOptions, preset: str | None, data_dir: Path
    ) -> TuneRequest:
        """The tuning these options ask for, every trial trained with `training` and `preset`
        (`init` is a training setting)."""
        asked = {**vars(self), "losses": names_list(self.losses, "--losses")}
        settings = training.settings(init=asked.pop("init"), preset=preset)
        return TuneRequest(**asked, settings=settings, data_dir=data_dir)


@command()
def tune(
    context: typer.Context,
    *,
    tuning: TuneOptions,
    preset: opt.Preset = None,
    training: opt.TrainingOptions,
    json_output: opt.JsonOutput = False,
    data_dir: DataDir = None,
) -> None:
    """Tune every loss on validation with the same budget, then write a grid that retrains each
    at its tuned settings on fresh seeds (`lossbench compare --config OUT/tuned.toml`)."""
    from lossbench import api

    request = tuning.request(training, preset, current_data_dir(context))
    result = api.tune(request, display(json_output), announce)
    show_tuned(result, tuning.out, json_output)


def show_tuned(result: TuneResult, out: Path, json_output: bool) -> None:
    """Where the tuned settings are and the command that retrains them; with `--json`,
    tuning.json as written, with the files and that command."""
    shown = display(json_output)
    shown.print(f"tuned settings in {out / 'tuned.toml'}; retrain and test them on fresh seeds:")
    shown.print(f"  {result.compare_command}", highlight=False, soft_wrap=True)
    if json_output:
        from lossbench.tuning.output import SUMMARY_FILE

        document = json.loads((out / SUMMARY_FILE).read_text())
        files = {"files": [str(path) for path in result.written]}
        print_json(document | files | {"compare_command": result.compare_command})


__all__ = ["tune"]
