"""`lossbench train`, `lossbench losses`, `lossbench models`.

torch and the training modules are imported inside the commands, so `--help` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lossbench.cli import ci_options as ci
from lossbench.cli import options as opt
from lossbench.cli.app import DataDir, GlobalOptions, announce, app, console, console_err
from lossbench.cli.outputs import check_run_folder, print_json
from lossbench.errors import LossbenchError

if TYPE_CHECKING:
    from lossbench.training.loop import RunResult


@app.command()
@opt.training_flags
def train(
    dataset: Annotated[
        str | None, typer.Option(help="Dataset name (see `lossbench datasets`).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Model (see `lossbench models`), or package.module:name."),
    ] = None,
    loss: Annotated[
        str | None,
        typer.Option(
            help="Loss (default: the model's own; see `lossbench losses`), or "
            "package.module:name / ./file.py:name."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed of the run.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run folder (default runs/DATASET/MODEL-LOSS-seedN).")
    ] = None,
    init: Annotated[
        Path | None, typer.Option(help="Pre-trained checkpoint to fine-tune (s3rec).")
    ] = None,
    save_topk: Annotated[
        int | None, typer.Option(help="Write topk.parquet with each test user's K best items.")
    ] = None,
    config_file: opt.ConfigFile = None,
    preset: opt.Preset = None,
    training: opt.TrainingFlags = opt.NO_FLAGS,
    smoke: ci.Smoke = False,
    sample_users: ci.SampleUsers = None,
    json_output: ci.JsonOutput = False,
    track: ci.Track = None,
    data_dir: DataDir = None,
    checkpoint_every: opt.CheckpointEvery = None,
) -> None:
    """Train one model with one loss, early-stopped on validation, and test it once."""
    overrides = opt.training_overrides(  # before imports: `locals()` holds only the flags
        locals(), skip=("out", "config_file", *ci.NOT_CONFIG)
    )
    from torch.distributed import DistError

    from lossbench.compare.arms import config_label, run_name
    from lossbench.data.prepared import ensure_prepared, prepare_on_first_use
    from lossbench.data.repeats import repeat_notice, repeated_targets
    from lossbench.data.subsample import sample_users as sample
    from lossbench.evaluation.seen import SEEN_RULE_EFFECTS
    from lossbench.plugins import folder_name
    from lossbench.training.config import build_config
    from lossbench.training.distributed import (
        barrier,
        check_same_settings,
        join_process_group,
        leave_process_group,
        peer_failure,
    )
    from lossbench.training.entry import plan_entry
    from lossbench.training.fit_check import check_fits
    from lossbench.training.loop import train_alone
    from lossbench.training.presets import SMOKE_LAYER

    if smoke and preset is not None:
        raise LossbenchError("--smoke is the preset smoke: drop --preset, or --smoke")
    overrides = {
        **(SMOKE_LAYER if smoke else {}),
        **{k: v for k, v in overrides.items() if v is not None},
    }
    config = build_config(toml_file=config_file, overrides=overrides)
    run_dir = (
        out or Path("runs") / config.dataset / f"{folder_name(config.model)}-{run_name(config)}"
    )
    # Impossible settings, model / loss pairings and runs that cannot fit fail before anything
    # starts.
    entry = plan_entry(config, run_dir)
    check_run_folder(run_dir, "--out")
    group = join_process_group(config.device)  # one process, or a rank under torchrun
    check_same_settings(config.model_dump(mode="json"), group)
    if group.is_main:  # rank 0 prepares the data; the others then read what it wrote
        prepare_on_first_use(GlobalOptions.data_dir, config.dataset, config.split_spec, announce)
        prepared = ensure_prepared(GlobalOptions.data_dir, config.dataset, config.split_spec)
    barrier(group)
    if not group.is_main:
        prepared = ensure_prepared(GlobalOptions.data_dir, config.dataset, config.split_spec)
    if config.sample_users is not None:
        prepared = sample(prepared, config.sample_users)
    check_fits(entry, prepared)
    display = console_err if json_output else console
    if not group.is_main:
        display = Console(quiet=True)
        json_output, track = False, None
    tracker = None
    if track is not None:
        from lossbench.tracking import open_tracker

        tracker = open_tracker(track, run_dir)
    display.print(
        f"training [bold]{config.model}[/] with [bold]{config_label(config)}[/] on "
        f"[bold]{config.dataset}[/] ({prepared.n_users:,} users, {prepared.n_items:,} items, "
        f"{config.split_spec.label} split), "
        f"seed {config.seed} -> {run_dir}"
    )
    notice = repeat_notice(
        config.dataset, repeated_targets(prepared), SEEN_RULE_EFFECTS[config.seen_rule]
    )
    if notice:
        display.print(notice, highlight=False)
    try:
        result = train_alone(
            entry, prepared, display, observers=[tracker] if tracker else [], group=group
        )
    except DistError as error:  # a peer rank died or stopped answering
        raise LossbenchError(peer_failure(error, group)) from None
    finally:
        if tracker is not None:
            tracker.close()
        leave_process_group()
    display.print(result_table(result))
    display.print(f"run files in {result.run_dir}")
    if json_output:
        from lossbench.compare.outputs import finite, run_document

        document = {"runs": [run_document(result.run_dir)]}
        sys.stdout.write(json.dumps(finite(document), indent=2, allow_nan=False) + "\n")


def result_table(result: RunResult) -> Table:
    """Rows: (split, metric family); columns: the cut-offs. Recall@k equals HR@k with one
    target per user, so it stays in metrics.json and out of the way here."""
    metrics = result.metrics
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


@app.command()
def losses(json_output: ci.JsonOutput = False) -> None:
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
            table.add_row(name, "", "", f"[red]{escape(str(found))}[/]", "entry point")
            rows.append({"name": name, "from": "entry point", "error": str(found)})
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


@app.command()
def models(json_output: ci.JsonOutput = False) -> None:
    """List the models (built-in and installed), their default loss, settings and origin."""
    from lossbench.models import MODEL_PLUGINS
    from lossbench.plugins import available

    table = Table(title="models", caption="also: --model package.module:name or ./file.py:name")
    for column in ("name", "default loss", "settings", "description", "from"):
        table.add_column(column)
    rows: list[dict[str, Any]] = []
    for name, found in available(MODEL_PLUGINS):
        if isinstance(found, Exception):
            table.add_row(name, "", "", f"[red]{escape(str(found))}[/]", "entry point")
            rows.append({"name": name, "from": "entry point", "error": str(found)})
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
    (console_err if json_output else console).print(table)
    if json_output:
        print_json(document)
