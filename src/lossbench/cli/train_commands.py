"""`lossbench train`, `lossbench losses`, `lossbench models`.

torch and the training modules are imported inside the commands, so `--help` stays fast.
"""

from __future__ import annotations

import json
import sys
from functools import partial
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
    from lossbench.data.prepared import PreparedDataset
    from lossbench.training.distributed import ProcessGroup
    from lossbench.training.entry import PlanEntry
    from lossbench.training.loop import RunResult
    from lossbench.training.observers import RunObserver


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
    retrain_changed: opt.RetrainChanged = False,
) -> None:
    """Train one model with one loss, early-stopped on validation, and test it once.

    Run again on the same --out, it reuses a finished run with the same settings, continues
    an interrupted one, and refuses one trained with other settings (as `compare` does)."""
    overrides = opt.training_overrides(  # before imports: `locals()` holds only the flags
        locals(), skip=("out", "config_file", "retrain_changed", *ci.NOT_CONFIG)
    )
    from lossbench.compare.execute.resume import run_status, settle_runs
    from lossbench.data.repeats import repeat_notice, repeated_targets
    from lossbench.data.store import ensure_prepared, prepare_on_first_use
    from lossbench.data.subsample import sample_users as sample
    from lossbench.evaluation.seen import SEEN_RULE_EFFECTS
    from lossbench.plugins import folder_name
    from lossbench.training.config import build_config
    from lossbench.training.distributed import (
        barrier,
        check_same_settings,
        join_process_group,
        leave_process_group,
    )
    from lossbench.training.entry import plan_entry
    from lossbench.training.presets import SMOKE_LAYER
    from lossbench.training.run_files import read_metrics
    from lossbench.training.run_labels import config_label, run_name

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
    display = console_err if json_output else console
    if not group.is_main:  # rank 0 speaks, settles the folder and records for all ranks
        display = Console(quiet=True)
        json_output, track = False, None
    try:
        # compare's rules: reuse a finished run, refuse (or move aside) one with other settings
        if group.is_main:
            fits = partial(_check_fits, dataset=prepared)
            to_train = bool(settle_runs([entry], run_dir, display, retrain_changed, fits))
        barrier(group)  # the others follow what rank 0 found (and moved aside)
        if not group.is_main:
            to_train = run_status(entry).state != "finished"
        if to_train:
            display.print(
                f"training [bold]{config.model}[/] with [bold]{config_label(config)}[/] on "
                f"[bold]{config.dataset}[/] ({prepared.n_users:,} users, {prepared.n_items:,} "
                f"items, {config.split_spec.label} split), seed {config.seed} -> {run_dir}"
            )
            notice = repeat_notice(
                config.dataset, repeated_targets(prepared), SEEN_RULE_EFFECTS[config.seen_rule]
            )
            if notice:
                display.print(notice, highlight=False)
            train_or_exit(entry, prepared, display, track, group)
    finally:
        leave_process_group()
    if not group.is_main:
        return
    display.print(result_table(read_metrics(run_dir)))
    display.print(f"run files in {run_dir}")
    if json_output:
        from lossbench.compare.report.outputs import finite, run_document

        document = {"runs": [run_document(run_dir)]}
        sys.stdout.write(json.dumps(finite(document), indent=2, allow_nan=False) + "\n")


def _check_fits(entries: list[PlanEntry], dataset: PreparedDataset) -> None:
    from lossbench.training.fit_check import check_fits

    for entry in entries:
        check_fits(entry, dataset)


def train_or_exit(
    entry: PlanEntry,
    prepared: PreparedDataset,
    display: Console,
    track: str | None,
    group: ProcessGroup,
) -> None:
    """Train `entry` holding its folder's lock (rank 0 holds it for all ranks). A run that
    fails is handled as `compare` handles it: one `FAIL training` line, the traceback in the
    run's failure.txt, exit 1."""
    from lossbench.compare.execute.failures import FAILURE_FILE, train_or_fail
    from lossbench.compare.execute.resume import run_status
    from lossbench.training.run_lock import lock_holder, run_lock

    if not group.is_main:
        try:
            _train_rank(entry, prepared, display, [], group)
        except Exception:  # noqa: BLE001  rank 0 records and reports the failure
            raise SystemExit(1) from None
        return
    with run_lock(entry.run_dir, wait=False) as held:
        if not held:
            raise LossbenchError(
                f"{entry.run_dir} is being trained by process {lock_holder(entry.run_dir) or '?'}"
                "; wait for it, or give another --out"
            )
        if run_status(entry).state == "finished":  # by another process since it was settled
            display.print(f"{entry.run_dir} was finished by another process")
            return
        tracker = None
        if track is not None:
            from lossbench.training.tracking import open_tracker

            tracker = open_tracker(track, entry.run_dir)
        train = partial(_train_rank, observers=[tracker] if tracker else [], group=group)
        try:
            _, failure = train_or_fail(train, entry, prepared, display)
        finally:
            if tracker is not None:
                tracker.close()
    if failure is not None:
        where = entry.run_dir / FAILURE_FILE
        console_err.print(
            f"{failure.line} (traceback in {where})",
            style="red",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise SystemExit(1)


def _train_rank(
    entry: PlanEntry,
    dataset: PreparedDataset,
    console: Console,
    observers: list[RunObserver],
    group: ProcessGroup,
) -> RunResult:
    """`train_entry` on this rank; a peer that died or hung is one line."""
    from torch.distributed import DistError

    from lossbench.training.distributed import peer_failure
    from lossbench.training.loop import train_entry

    try:
        return train_entry(entry, dataset, console, observers=observers, group=group)
    except DistError as error:  # a peer rank died or stopped answering
        raise LossbenchError(peer_failure(error, group)) from None


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
