"""`lossbench datasets`, `download`, `preprocess`, `verify`: thin commands over `lossbench.data`.

The data modules (polars, numpy) are imported inside the commands, so `--help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.table import Table

from lossbench.cli import options as opt
from lossbench.cli.app import DataDir, command, current_data_dir, display
from lossbench.cli.outputs import print_json
from lossbench.errors import LossbenchError

if TYPE_CHECKING:
    from lossbench.compare.report.verify_runs import RunCheck
    from lossbench.data.preprocess import PrepareResult
    from lossbench.data.registry import DatasetEntry
    from lossbench.data.splits import SplitSpec
    from lossbench.data.verify import VerifyReport

EXIT_CHECK_FAILED = 1

Names = Annotated[list[str], typer.Argument(help="Dataset names (see `lossbench datasets`).")]


def _size(entry: DatasetEntry) -> str:
    if entry.generator is not None:
        return "generated"
    sizes = [entry.local_file.size] if entry.local_file else [f.size for f in entry.remote_files]
    if any(size is None for size in sizes):
        return "unknown"
    total = float(sum(size or 0 for size in sizes))
    for unit in ("B", "KB", "MB", "GB"):
        if total < 1000 or unit == "GB":
            return f"{total:.0f} {unit}" if unit == "B" else f"{total:.1f} {unit}"
        total /= 1000
    return ""


def _status(entry: DatasetEntry, meta: dict[str, Any] | None, data_dir: Path) -> str:
    from lossbench.data.download import is_downloaded
    from lossbench.data.prepared import READABLE_VERSIONS, prepared_problems

    if meta is not None and meta.get("format_version") not in READABLE_VERSIONS:
        if entry.generator is not None:
            return "[yellow]stale (older version); generated again on demand[/]"
        return "[yellow]stale (older version): preprocess --force[/]"
    if meta is not None:
        damaged = prepared_problems(data_dir, entry.name, meta, hashes=False)
        return "[red]prepared, damaged[/]" if damaged else "[green]prepared[/]"
    if entry.generator is not None:
        return "generated on demand"
    if entry.local_file is not None:
        return "local file, prepared on demand"
    return "downloaded" if is_downloaded(data_dir, entry) else "[dim]not downloaded[/]"


@command()
def datasets(
    context: typer.Context, json_output: opt.JsonOutput = False, data_dir: DataDir = None
) -> None:
    """List the registered datasets, whether each is downloaded or prepared, and (prepared)
    the share of validation / test targets already in the user's history."""
    from rich.text import Text

    from lossbench.data.prepared import prepared_dir, read_meta
    from lossbench.data.registry import load_registry
    from lossbench.data.repeats import META_KEY, share_text

    data_dir_path = current_data_dir(context)
    table = Table(title=f"datasets in {data_dir_path}")
    for column in ("name", "source", "size", "status", "seen targets"):
        table.add_column(column, overflow="fold")
    older, rows = [], []
    for entry in load_registry(data_dir=data_dir_path).values():
        meta = read_meta(prepared_dir(data_dir_path, entry.name))
        shares = share_text(meta.get(META_KEY)) if meta is not None else ""
        if meta is not None and not shares:
            older.append(entry.name)
        status = _status(entry, meta, data_dir_path)
        table.add_row(entry.name, entry.source, _size(entry), status, shares)
        rows.append(
            {
                "name": entry.name,
                "source": entry.source,
                "size": _size(entry),
                "status": Text.from_markup(status).plain,
                "seen_targets": meta.get(META_KEY) if meta is not None else None,
            }
        )
    if older:
        table.caption = (
            f"seen targets unknown for {', '.join(older)}: prepared by an earlier version "
            "(`lossbench preprocess NAME --force` adds them)"
        )
    display(json_output).print(table)
    if json_output:
        print_json({"data_dir": str(data_dir_path), "datasets": rows})


@command()
def download(
    context: typer.Context,
    names: Names,
    mirror: Annotated[
        str | None,
        typer.Option(
            "--mirror",
            envvar="LOSSBENCH_MIRROR",
            help="Folder or http(s) base URL laid out as <mirror>/<dataset>/<file name>.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Download again.")] = False,
    trust_new_hash: Annotated[
        bool,
        typer.Option("--trust-new-hash", help="Record the hash of a file that has none pinned."),
    ] = False,
    json_output: opt.JsonOutput = False,
    data_dir: DataDir = None,
) -> None:
    """Download datasets, verifying size and sha256 (resumes; fetches damaged files again)."""
    from lossbench.data.download import download_dataset
    from lossbench.data.registry import get_dataset

    for name in names:
        get_dataset(name, data_dir=current_data_dir(context))  # a misspelled name fails at once
    done = []
    for name in names:
        message = download_dataset(
            current_data_dir(context),
            name,
            mirror=mirror,
            force=force,
            trust_new_hash=trust_new_hash,
        )
        display(json_output).print(message, highlight=False)
        done.append({"name": name, "message": message})
    if json_output:
        print_json({"datasets": done})


MinRating = Annotated[
    float | None, typer.Option(help="Keep ratings >= this (default: the dataset's).")
]
UserCore = Annotated[int | None, typer.Option(help="Users keep >= this many items.")]
ItemCore = Annotated[int | None, typer.Option(help="Items keep >= this many users.")]
Dedup = Annotated[
    bool | None, typer.Option("--dedup/--no-dedup", help="Keep the first (user, item) only.")
]
OrganicOnly = Annotated[
    bool | None,
    typer.Option(
        "--organic-only/--all-events", help="Yambda: keep only organic events (is_organic)."
    ),
]


@dataclass(frozen=True)
class ProtocolOverrides:
    """Protocol settings over the dataset's own (an option group; None: the dataset's)."""

    min_rating: MinRating = None
    user_core: UserCore = None
    item_core: ItemCore = None
    dedup: Dedup = None
    organic_only: OrganicOnly = None

    def given(self) -> dict[str, Any]:
        return {key: value for key, value in vars(self).items() if value is not None}


@dataclass(frozen=True)
class SplitOptions:
    """How the prepared dataset is split (an option group; None: the default)."""

    split: opt.Split = None
    valid_quantile: opt.ValidQuantile = None
    test_quantile: opt.TestQuantile = None

    def spec(self) -> SplitSpec:
        from lossbench.data.splits import split_spec

        kind = self.split or "loo"
        return split_spec(kind, self.valid_quantile or 0.8, self.test_quantile or 0.9)


@command()
def preprocess(
    context: typer.Context,
    names: Names,
    *,
    force: Annotated[bool, typer.Option("--force", help="Prepare again.")] = False,
    protocol: ProtocolOverrides,
    splitting: SplitOptions,
    json_output: opt.JsonOutput = False,
    data_dir: DataDir = None,
) -> None:
    """Check the downloads' sha256, then filter, re-index and split them for training."""
    from lossbench.data.preprocess import preprocess_dataset
    from lossbench.data.registry import get_dataset

    data_dir_path, split_by = current_data_dir(context), splitting.spec()
    for name in names:
        get_dataset(name, data_dir=data_dir_path)  # a misspelled name fails before any work
    overrides = protocol.given()
    results = [
        preprocess_dataset(data_dir_path, name, overrides=overrides, force=force, split=split_by)
        for name in names
    ]
    show_prepared(results, split_by.kind == "temporal", json_output)


def show_prepared(results: list[PrepareResult], temporal: bool, json_output: bool) -> None:
    """What preparing did: the datasets skipped, their summary, fingerprints, targets already
    in the history and the temporal split; with `--json`, each prepared folder's meta.json."""
    from lossbench.data.fingerprint import META_KEY as FINGERPRINT_KEY
    from lossbench.data.fingerprint import describe

    shown = display(json_output)
    for result in results:
        if result.skipped:
            shown.print(
                f"{result.name}: already prepared from the same files and protocol, nothing to do "
                "(--force prepares again)",
                highlight=False,
            )
    shown.print(summary_table(results))
    for result in results:  # two preparations alike have the same fingerprint
        fingerprint = describe(result.meta.get(FINGERPRINT_KEY))
        shown.print(f"{result.name} fingerprint: {fingerprint}", highlight=False, soft_wrap=True)
    shown.print(repeats_table(results))
    if temporal:
        shown.print(temporal_table(results))
    if json_output:  # each prepared folder's meta.json: counts, statistics, split, files
        print_json(
            {"datasets": [{"name": r.name, "skipped": r.skipped, "meta": r.meta} for r in results]}
        )


@command()
def verify(
    context: typer.Context,
    names: Annotated[
        list[str] | None,
        typer.Argument(
            help="Dataset names (default: every downloaded or prepared one), or folders of "
            "runs (`lossbench verify runs/compare`).",
            show_default=False,
        ),
    ] = None,
    json_output: opt.JsonOutput = False,
    data_dir: DataDir = None,
) -> None:
    """Check the size and sha256 of every downloaded and prepared file, or of every file of
    the runs in a folder; exit 1 on damage."""
    data_dir_path = current_data_dir(context)
    folders = [Path(name) for name in names or [] if _is_runs_folder(name, data_dir_path)]
    datasets = [name for name in names or [] if Path(name) not in folders]
    reports = _dataset_reports(datasets, bool(names), bool(folders), data_dir_path)
    runs = [check for folder in folders for check in _run_checks(folder)]
    if not _show_verification(reports, runs, bool(folders), data_dir_path, json_output):
        raise typer.Exit(EXIT_CHECK_FAILED)


def _dataset_reports(
    datasets: list[str], named: bool, folders_given: bool, data_dir: Path
) -> list[VerifyReport]:
    """The named datasets' checks; none named, every registered dataset's unless only run
    folders were given."""
    from lossbench.data.registry import get_dataset, load_registry
    from lossbench.data.verify import verify_dataset

    if datasets:
        entries = [get_dataset(name, data_dir=data_dir) for name in datasets]
    else:
        entries = [] if folders_given else list(load_registry(data_dir=data_dir).values())
    return [verify_dataset(data_dir, entry, named=named) for entry in entries]


def _run_checks(folder: Path) -> list[RunCheck]:
    from lossbench.compare.report.verify_runs import verify_runs

    if not (checks := verify_runs(folder)):
        raise LossbenchError(
            f"{folder} holds no run folders (none has a config.json); give the --out "
            "folder of a comparison or of a run"
        )
    return checks


def _show_verification(
    reports: list[VerifyReport],
    runs: list[RunCheck],
    folders_given: bool,
    data_dir: Path,
    json_output: bool,
) -> bool:
    """A line per dataset checked and per run; with `--json`, the document. Whether all
    passed."""
    shown = display(json_output)
    checked = [report for report in reports if report.checked or report.problems]
    for line in [report.line() for report in checked] + [check.line() for check in runs]:
        shown.print(line, highlight=False, soft_wrap=True, markup=False)
    if not checked and not folders_given:
        shown.print(f"nothing downloaded or prepared in {data_dir}", highlight=False)
    failed = any(report.problems for report in reports) or any(check.problems for check in runs)
    if json_output:
        print_json(
            {
                "passed": not failed,
                "datasets": [vars(report) for report in checked],
                "runs": [{**vars(check), "run_dir": str(check.run_dir)} for check in runs],
            }
        )
    return not failed


def _is_runs_folder(name: str, data_dir: Path) -> bool:
    """A folder (of runs) rather than a dataset: an existing folder whose name is not a
    registered dataset's (`./NAME` picks the folder)."""
    from lossbench.data.registry import load_registry

    return name not in load_registry(data_dir=data_dir) and Path(name).is_dir()


def summary_table(results: list[PrepareResult]) -> Table:
    table = Table(title="prepared datasets", box=box.SIMPLE_HEAD, pad_edge=False)
    columns = ("dataset", "users", "items", "interactions", "mean", "median", "density")
    for column in columns:
        table.add_column(column, justify="left" if column == "dataset" else "right", no_wrap=True)
    for result in results:
        meta: dict[str, Any] = result.meta
        table.add_row(
            result.name,
            f"{meta['n_users']:,}",
            f"{meta['n_items']:,}",
            f"{meta['n_interactions']:,}",
            f"{meta['mean_length']:.1f}",
            f"{meta['median_length']:.0f}",
            f"{meta['density']:.3%}",
        )
    notes = [
        f"{r.name}: {r.meta['report']['users_too_short']:,} users with < 3 interactions dropped"
        for r in results
        if r.meta.get("report", {}).get("users_too_short")
    ]
    if notes:
        table.caption = "; ".join(notes)
    return table


def repeats_table(results: list[PrepareResult]) -> Table:
    """Per dataset and split, the targets already in the user's history: with seen items
    excluded they follow `--seen-targets` (not found, or ranked among the unseen items)."""
    from lossbench.data.repeats import META_KEY

    table = Table(
        title="targets already in the user's history", box=box.SIMPLE_HEAD, pad_edge=False
    )
    for column in ("dataset", "valid users", "valid share", "test users", "test share"):
        table.add_column(column, justify="left" if column == "dataset" else "right", no_wrap=True)
    for result in results:
        entry = result.meta.get(META_KEY, {})
        cells = [result.name]
        for split in ("valid", "test"):
            counts = entry.get(split)
            cells += (
                ["—", "—"] if counts is None else [f"{counts['users']:,}", f"{counts['share']:.1%}"]
            )
        table.add_row(*cells)
    table.caption = "these follow --seen-targets (default: not found)"
    return table


def temporal_table(results: list[PrepareResult]) -> Table:
    """The temporal split's thresholds and counts: one row per quantity, a column per dataset."""
    table = Table(title="temporal split", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("", no_wrap=True)
    for result in results:
        table.add_column(result.name, justify="right", no_wrap=True)
    reports: list[dict[str, Any]] = [result.meta["report"] for result in results]
    rows = {
        "validation after time": "valid_threshold",
        "test after time": "test_threshold",
        "users with training positions": "train_users",
        "training interactions": "train_interactions",
        "validation users": "valid_users",
        "test users": "test_users",
        "validation users with no history": "valid_cold_users",
        "test users with no history": "test_cold_users",
        "validation targets never trained on": "valid_cold_items",
        "test targets never trained on": "test_cold_items",
    }
    for label, key in rows.items():
        plain = key.endswith("threshold")  # a time, not a count
        table.add_row(label, *(str(r[key]) if plain else f"{r[key]:,}" for r in reports))
    table.caption = "users with no history before a threshold are not evaluated"
    return table
