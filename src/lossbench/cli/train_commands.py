"""`lossbench train`, `lossbench losses`, `lossbench models`.

torch and the training modules are imported inside the commands, so `--help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from lossbench.api.requests import TrainingSettings, TrainRequest
from lossbench.cli import options as opt
from lossbench.cli.app import (
    DataDir,
    announce,
    command,
    console_err,
    current_data_dir,
    display,
)
from lossbench.cli.outputs import print_json

if TYPE_CHECKING:
    from lossbench.api.results import TrainResult

Dataset = Annotated[str | None, typer.Option(help="Dataset name (see `lossbench datasets`).")]
Model = Annotated[
    str | None, typer.Option(help="Model (see `lossbench models`), or package.module:name.")
]
Loss = Annotated[
    str | None,
    typer.Option(
        help="Loss (default: the model's own; see `lossbench losses`), or "
        "package.module:name / ./file.py:name."
    ),
]
Seed = Annotated[int | None, typer.Option(help="Random seed of the run.")]
Out = Annotated[
    Path | None, typer.Option(help="Run folder (default runs/DATASET/MODEL-LOSS-seedN).")
]
Init = Annotated[Path | None, typer.Option(help="Pre-trained checkpoint to fine-tune (s3rec).")]
SaveTopk = Annotated[
    int | None, typer.Option(help="Write topk.parquet with each test user's K best items.")
]


@dataclass(frozen=True)
class RunOptions:
    """The run `train` trains (an option group; None: the settings file's, else the
    default). The fields are `TrainRequest`'s, by name."""

    dataset: Dataset = None
    model: Model = None
    loss: Loss = None
    seed: Seed = None
    out: Out = None


@command()
def train(
    context: typer.Context,
    *,
    run: RunOptions,
    init: Init = None,
    save_topk: SaveTopk = None,
    config_file: opt.ConfigFile = None,
    preset: opt.Preset = None,
    training: opt.TrainingOptions,
    ci: opt.TrainCiOptions,
    data_dir: DataDir = None,
    checkpoint_every: opt.CheckpointEvery = None,
    retrain_changed: opt.RetrainChanged = False,
) -> None:
    """Train one model with one loss, early-stopped on validation, and test it once.

    Run again on the same --out, it reuses a finished run with the same settings, continues
    an interrupted one, and refuses one trained with other settings (as `compare` does)."""
    from lossbench import api
    from lossbench.api.training import RunFailed

    settings = training.settings(
        init=init,
        save_topk=save_topk,
        preset=preset,
        sample_users=ci.sample_users,
        checkpoint_every=checkpoint_every,
    )
    request = train_request(
        run, settings, config_file, ci, retrain_changed, current_data_dir(context)
    )
    try:
        result = api.train(request, display(ci.json_output), announce)
    except RunFailed as failure:  # its traceback is in the run's failure.txt
        console_err.print(str(failure), style="red", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    if result is not None:  # None: a rank other than 0, rank 0 speaks
        show_run(result, ci.json_output)


def train_request(
    run: RunOptions,
    settings: TrainingSettings,
    config_file: Path | None,
    ci: opt.TrainCiOptions,
    retrain_changed: bool,
    data_dir: Path,
) -> TrainRequest:
    """The run these options and the command's other options ask for."""
    return TrainRequest(
        **vars(run),
        config_file=config_file,
        settings=settings,
        smoke=ci.smoke,
        retrain_changed=retrain_changed,
        json_output=ci.json_output,
        track=ci.track,
        data_dir=data_dir,
    )


def show_run(result: TrainResult, json_output: bool) -> None:
    """The finished run's metrics as a table, its folder, and with `--json` its document."""
    shown = display(json_output)
    shown.print(result_table(dict(result.metrics)))
    shown.print(f"run files in {result.run_dir}")
    if json_output:
        from lossbench.compare.report.outputs import run_document

        print_json({"runs": [run_document(result.run_dir)]})


def result_table(metrics: dict[str, Any]) -> Table:
    """A finished run's `metrics.json` as rows (split, metric family) and columns (the
    cut-offs). Recall@k equals HR@k with one target per user, so it stays out of the way."""
    ks = sorted({int(name.split("@")[1]) for name in metrics["test"] if "@" in name})
    table = Table(
        title=f"{metrics['model']} + {metrics['loss']} on {metrics['dataset']}, seed "
        f"{metrics['seed']} (best epoch {metrics['best_epoch']} of {metrics['epochs']})",
        caption=f"{metrics['train_seconds_per_epoch']:.2f} s/epoch training"
        + _loss_share(metrics)
        + f", {metrics['eval_seconds_per_epoch']:.2f} s validation, "
        f"peak memory {metrics['peak_memory_mb']:,.0f} MB"
        + (", collapsed: no better than popularity" if metrics.get("collapsed") else ""),
    )
    table.add_column("split")
    table.add_column("metric")
    for k in ks:
        table.add_column(f"@{k}", justify="right")
    table.add_column("MRR", justify="right")
    for split in ("valid", "test"):
        values = metrics[split]
        for family in ("hr", "ndcg"):
            mrr = f"{values['mrr']:.4f}" if family == "hr" else ""
            cells = [f"{values.get(f'{family}@{k}', float('nan')):.4f}" for k in ks]
            table.add_row(split if family == "hr" else "", family.upper(), *cells, mrr)
    return table


def _loss_share(metrics: dict[str, Any]) -> str:
    """' (12% in the loss, 110,000 tokens/s)', or nothing for a run recorded without it."""
    share, tokens = metrics.get("loss_share"), metrics.get("tokens_per_second")
    if share is None or tokens is None:
        return ""
    return f" ({share:.0%} in the loss, {tokens:,.0f} tokens/s)"


@command()
def losses(json_output: opt.JsonOutput = False) -> None:
    """List the losses (built-in and installed), the setup each was published with and where
    each comes from. Any other `package.module:name` or `./file.py:name` works as well."""
    from lossbench.losses import LOSS_PLUGINS
    from lossbench.plugins import available

    table = Table(title="losses", caption="also: --loss package.module:name or ./file.py:name")
    columns = ("name", "positions", "negatives", "what it computes", "from")
    for column in columns:
        table.add_column(column, justify="right" if column == "negatives" else "left")
    rows: list[dict[str, str | None]] = []
    for name, found in available(LOSS_PLUGINS):
        if isinstance(found, Exception):
            _add_broken(table, rows, name, found)
            continue
        spec = found.value
        negatives = str(spec.negatives) if spec.samples_negatives else "full softmax"
        if "generator" in spec.declared:  # sce, rece: the catalogue, searched by projections
            negatives = "projected"
        if spec.negatives_from_flags:
            negatives = "--negatives"
        cells = (name, spec.positions, negatives, spec.description, found.source.describe())
        table.add_row(*cells)
        keys = ("name", "positions", "negatives", "description", "from")
        rows.append({**dict(zip(keys, cells, strict=True)), "error": None})
    _show(table, {"losses": rows}, json_output)


def _add_broken(table: Table, rows: list[dict[str, Any]], name: str, error: Exception) -> None:
    """An installed plugin that failed to load: its error in the table and in the JSON rows."""
    table.add_row(name, "", "", f"[red]{escape(str(error))}[/]", "entry point")
    rows.append({"name": name, "from": "entry point", "error": str(error)})


@command()
def models(json_output: opt.JsonOutput = False) -> None:
    """List the models (built-in and installed), their default loss, settings and origin."""
    from lossbench.models import MODEL_PLUGINS
    from lossbench.plugins import available

    table = Table(title="models", caption="also: --model package.module:name or ./file.py:name")
    for column in ("name", "default loss", "settings", "description", "from"):
        table.add_column(column)
    rows: list[dict[str, Any]] = []
    for name, found in available(MODEL_PLUGINS):
        if isinstance(found, Exception):
            _add_broken(table, rows, name, found)
            continue
        spec = found.value
        defaults = {field: info.default for field, info in spec.config_class.model_fields.items()}
        settings = ", ".join(f"{field}={value}" for field, value in defaults.items())
        table.add_row(name, spec.default_loss, settings, spec.description, found.source.describe())
        rows.append(
            {
                "name": name,
                "default_loss": spec.default_loss,
                "settings": defaults,
                "description": spec.description,
                "from": found.source.describe(),
                "error": None,
            }
        )
    _show(table, {"models": rows}, json_output)


def _show(table: Table, document: dict[str, Any], json_output: bool) -> None:
    """The table on standard output, or on standard error with the JSON document on output."""
    display(json_output).print(table)
    if json_output:
        print_json(document)
