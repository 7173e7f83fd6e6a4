"""`lossbench pretrain`: a model's declared self-supervised pre-training (`ModelSpec.pretraining`,
S3Rec's) before `train --init`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lossbench.cli import ci_options as ci
from lossbench.cli import options as opt
from lossbench.cli.app import DataDir, announce, app, console, console_err, current_data_dir
from lossbench.cli.outputs import check_run_folder, print_json
from lossbench.errors import LossbenchError


@app.command()
def pretrain(
    context: typer.Context,
    dataset: Annotated[str, typer.Option(help="Dataset with item attributes, e.g. lastfm.")],
    model: Annotated[str, typer.Option(help="Model to pre-train: s3rec.")] = "s3rec",
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Pre-training epochs (default: the model's, 150).")
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(min=1, help="Write pretrain-epochN.pt every N epochs (default: 10)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default runs/DATASET/MODEL-pretrain-seedN).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Samples per batch (default: 100).")
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", min=0.0, help="Adam learning rate (default: 0.001).")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue from a pretrain-epochN.pt up to --epochs in all (Adam restarts)."
        ),
    ] = None,
    hidden_size: opt.HiddenSize = None,
    num_layers: opt.NumLayers = None,
    num_heads: opt.NumHeads = None,
    dropout: opt.Dropout = None,
    attention_dropout: opt.AttentionDropout = None,
    max_len: opt.MaxLen = None,
    threads: opt.Threads = None,
    json_output: ci.JsonOutput = False,
    data_dir: DataDir = None,
) -> None:
    """Pre-train a model's encoder; fine-tune it with `lossbench train --init OUT/pretrained.pt`
    (model settings must match those of the fine-tuning run)."""
    from lossbench.data.store import ensure_prepared, prepare_on_first_use
    from lossbench.models import model_config, model_spec
    from lossbench.training.pretrainers import PretrainSettings, pretraining_of, run_pretraining
    from lossbench.training.setup import use_threads

    spec = model_spec(model)
    pretrain_settings = PretrainSettings.for_model(
        pretraining_of(model, spec),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        checkpoint_every=checkpoint_every,
    )
    if device not in ("auto", "cpu", "cuda"):
        raise LossbenchError(f"unknown device {device!r}; use auto, cpu or cuda")
    settings = opt.model_settings(
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        dropout=dropout,
        attention_dropout=attention_dropout,
        max_len=max_len,
    )
    config = model_config(model, settings)
    out_dir = out or Path("runs") / dataset / f"{model}-pretrain-seed{seed}"
    check_run_folder(out_dir, "--out")
    prepare_on_first_use(current_data_dir(context), dataset, announce=announce)
    prepared = ensure_prepared(current_data_dir(context), dataset)
    use_threads(threads)
    display = console_err if json_output else console
    display.print(f"pre-training [bold]{model}[/] on [bold]{dataset}[/] -> {out_dir}")
    final = run_pretraining(
        model,
        spec,
        prepared,
        config,
        out_dir,
        pretrain_settings,
        seed=seed,
        device=device,
        console=display,
        resume=resume,
    )
    fine_tune = f"lossbench train --dataset {dataset} --model {model} --init {final}"
    display.print(f"wrote {final}; fine-tune with `{fine_tune}`")
    if json_output:
        document = {"dataset": dataset, "model": model, "out_dir": str(out_dir)}
        print_json({**document, "checkpoint": str(final), "fine_tune_command": fine_tune})
