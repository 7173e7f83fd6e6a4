"""`lossbench pretrain`: a model's declared self-supervised pre-training (`ModelSpec.pretraining`,
S3Rec's) before `train --init`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from lossbench.cli import options as opt
from lossbench.cli.app import DataDir, announce, command, current_data_dir, display
from lossbench.cli.outputs import check_run_folder, print_json
from lossbench.errors import LossbenchError

Dataset = Annotated[str, typer.Option(help="Dataset with item attributes, e.g. lastfm.")]
Model = Annotated[str, typer.Option(help="Model to pre-train: s3rec.")]
Epochs = Annotated[
    int | None, typer.Option(min=1, help="Pre-training epochs (default: the model's, 150).")
]
CheckpointEvery = Annotated[
    int | None,
    typer.Option(min=1, help="Write pretrain-epochN.pt every N epochs (default: 10)."),
]
Out = Annotated[
    Path | None, typer.Option(help="Output folder (default runs/DATASET/MODEL-pretrain-seedN).")
]
Seed = Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Random seed.")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
BatchSize = Annotated[int | None, typer.Option(min=1, help="Samples per batch (default: 100).")]
LearningRate = Annotated[
    float | None, typer.Option("--lr", min=0.0, help="Adam learning rate (default: 0.001).")
]
Resume = Annotated[
    Path | None,
    typer.Option(help="Continue from a pretrain-epochN.pt up to --epochs in all (Adam restarts)."),
]


@dataclass(frozen=True)
class PretrainOptions:
    """What `pretrain` pre-trains, on what, and how (an option group)."""

    dataset: Dataset
    model: Model = "s3rec"
    epochs: Epochs = None
    checkpoint_every: CheckpointEvery = None
    out: Out = None
    seed: Seed = 0
    device: Device = "auto"
    batch_size: BatchSize = None
    lr: LearningRate = None
    resume: Resume = None

    @property
    def out_dir(self) -> Path:
        return self.out or Path("runs") / self.dataset / f"{self.model}-pretrain-seed{self.seed}"


@command()
def pretrain(
    context: typer.Context,
    *,
    pretraining: PretrainOptions,
    model_options: opt.ModelOptions,
    threads: opt.Threads = None,
    json_output: opt.JsonOutput = False,
    data_dir: DataDir = None,
) -> None:
    """Pre-train a model's encoder; fine-tune it with `lossbench train --init OUT/pretrained.pt`
    (model settings must match those of the fine-tuning run)."""
    shown = display(json_output)
    settings = model_options.settings()
    final = pretrain_encoder(pretraining, settings, threads, current_data_dir(context), shown)
    show_pretrained(pretraining, final, json_output)


def pretrain_encoder(
    options: PretrainOptions,
    model_settings: dict[str, Any],
    threads: int | None,
    data_dir: Path,
    shown: Console,
) -> Path:
    """Check the options, prepare the dataset and pre-train; the final checkpoint's path."""
    from lossbench.data.store import ensure_prepared, prepare_on_first_use
    from lossbench.models import model_config, model_spec
    from lossbench.training.pretrainers import PretrainSettings, pretraining_of, run_pretraining
    from lossbench.training.setup import use_threads

    model, dataset = options.model, options.dataset
    spec = model_spec(model)
    settings = PretrainSettings.for_model(
        pretraining_of(model, spec),
        epochs=options.epochs,
        batch_size=options.batch_size,
        lr=options.lr,
        checkpoint_every=options.checkpoint_every,
    )
    if options.device not in ("auto", "cpu", "cuda"):
        raise LossbenchError(f"unknown device {options.device!r}; use auto, cpu or cuda")
    config = model_config(model, model_settings)
    check_run_folder(options.out_dir, "--out")
    prepare_on_first_use(data_dir, dataset, announce=announce)
    prepared = ensure_prepared(data_dir, dataset)
    use_threads(threads)
    shown.print(f"pre-training [bold]{model}[/] on [bold]{dataset}[/] -> {options.out_dir}")
    return run_pretraining(
        model,
        spec,
        prepared,
        config,
        options.out_dir,
        settings,
        seed=options.seed,
        device=options.device,
        console=shown,
        resume=options.resume,
    )


def show_pretrained(options: PretrainOptions, final: Path, json_output: bool) -> None:
    """The checkpoint written and the command that fine-tunes it; with `--json`, both."""
    model, dataset = options.model, options.dataset
    fine_tune = f"lossbench train --dataset {dataset} --model {model} --init {final}"
    display(json_output).print(f"wrote {final}; fine-tune with `{fine_tune}`")
    if json_output:
        document = {"dataset": dataset, "model": model, "out_dir": str(options.out_dir)}
        print_json({**document, "checkpoint": str(final), "fine_tune_command": fine_tune})
