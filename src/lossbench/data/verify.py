"""`lossbench verify`: the size and sha256 of every downloaded and prepared file of a dataset,
against the registry's pins (or the user's confirmed hashes), the archive's extraction record
and the prepared folder's `meta.json`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from lossbench.data.prepared import (
    READABLE_VERSIONS,
    prepared_problems,
    preprocess_command,
    read_meta,
)
from lossbench.data.raw_files import raw_dir, raw_problems
from lossbench.data.registry import DatasetEntry
from lossbench.data.splits import LOO, SplitSpec
from lossbench.errors import LossbenchError

META_FILE = "meta.json"


@dataclass
class VerifyReport:
    name: str
    checked: list[str] = field(default_factory=list)  # "2 downloaded files", ...
    problems: list[str] = field(default_factory=list)  # each names a file and ends in a fix

    def line(self) -> str:
        if self.problems:
            return f"{self.name}: DAMAGED: " + "; ".join(self.problems)
        return f"{self.name}: ok, size and sha256 match ({', '.join(self.checked)})"


def verify_dataset(data_dir: Path, entry: DatasetEntry, *, named: bool) -> VerifyReport:
    """Hash every file `entry` has in `data_dir`. `named`: the user asked for this dataset, so
    having nothing at all is a problem rather than a dataset to pass over."""
    report = VerifyReport(entry.name)
    raw = raw_dir(data_dir, entry.name)
    present = [f for f in entry.remote_files if (raw / f.file_name).exists()]
    if present:
        problems = raw_problems(data_dir, entry, hashes=True)
        fix = f"run `lossbench download {entry.name} --force`"
        report.problems += [f"{problem}; {fix}" for problem in problems]
        report.checked.append(f"{len(entry.remote_files)} downloaded file(s)")
    if entry.local_file is not None:  # a user's own file, hashed when it was registered
        from lossbench.data.local_files import local_sources

        try:
            local_sources(entry)
            report.checked.append("its registered file")
        except LossbenchError as error:
            report.problems.append(str(error))
    for folder in sorted((data_dir / entry.name).glob("prepared*")):  # one per split
        _check_prepared(data_dir, entry.name, folder, report)
    if named and not report.checked and not report.problems:
        where = "downloaded" if entry.remote_files else "prepared"
        first = "download" if entry.remote_files else "preprocess"
        report.problems.append(f"not {where} in {data_dir}: run `lossbench {first} {entry.name}`")
    return report


def _check_prepared(data_dir: Path, name: str, folder: Path, report: VerifyReport) -> None:
    meta = read_meta(folder)
    if meta is None:  # what training reads first: without it the dataset is not prepared
        state = "is damaged" if (folder / META_FILE).exists() else "is missing"
        fix = f"run `lossbench preprocess {name} --force`{_split_flags(folder)}"
        relative = folder.relative_to(data_dir) if folder.is_relative_to(data_dir) else folder
        report.problems.append(f"{relative / META_FILE} {state}; {fix}")
        return
    try:
        split = SplitSpec.model_validate(meta.get("split", {"kind": "loo"}))
    except ValidationError:
        split = LOO
    fix = f"run `{preprocess_command(name, split)} --force`"
    if meta.get("format_version") not in READABLE_VERSIONS:
        report.problems.append(f"{folder.name} was prepared by another lossbench version; {fix}")
        return
    problems = prepared_problems(data_dir, name, meta, hashes=True, split=split)
    report.problems += [f"{problem}; {fix}" for problem in problems]
    report.checked.append(f"{len(meta.get('files', {}))} prepared files ({split.label})")


def _split_flags(folder: Path) -> str:
    """'' for the `prepared` folder; for `prepared-temporal-v0.8-t0.9` the flags that made it."""
    suffix = folder.name.removeprefix("prepared")
    if not suffix.startswith("-temporal-v"):
        return ""
    valid, _, test = suffix.removeprefix("-temporal-v").partition("-t")
    return f" --split temporal --valid-quantile {valid} --test-quantile {test}"
