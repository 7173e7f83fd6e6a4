"""Resuming a comparison: which runs are done, which can continue, which were trained with
other settings, and what happens to those.

A run folder is `finished` (metrics.json) or `partial` (a checkpoint) with the settings the
plan asks for, `changed` when either holds other settings, `stale` when only the source file
of a plugin loss or model differs from the one it was trained with, `damaged` when a finished
run's files no longer match what it recorded (metrics.json cut short, test ranks overwritten),
or `missing`. A comparison with changed runs is refused, naming every setting that differs
(old -> new); with `--retrain-changed` they are retrained. Stale runs are retrained (the code
was edited on purpose), and so are damaged ones (their numbers cannot be trusted). Either way
the old folder is first moved aside to `<run>.replaced-<time>/`, so no result is ever deleted.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape

from lossbench.errors import LossbenchError
from lossbench.training.entry import PlanEntry
from lossbench.training.run_files import (
    CHECKPOINT_FILE,
    REPLACED,
    is_finished,
    read_record,
    run_problems,
    setting_changes,
    setting_text,
    source_changes,
)
from lossbench.training.run_lock import lock_holder, run_lock

RunState = Literal["finished", "partial", "changed", "stale", "damaged", "missing"]


@dataclass(frozen=True)
class RunStatus:
    entry: PlanEntry
    state: RunState
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)  # (setting, old, new)
    problems: list[str] = field(default_factory=list)  # why a finished run is damaged


def run_status(entry: PlanEntry) -> RunStatus:
    """The state of `entry`'s folder against the settings the plan asks for."""
    finished = is_finished(entry.run_dir)
    if not finished and not (entry.run_dir / CHECKPOINT_FILE).is_file():
        return RunStatus(entry, "missing")  # nothing there that took time to compute
    if finished and (problems := run_problems(entry.run_dir, hashes=True)):
        return RunStatus(entry, "damaged", problems=problems)
    record = read_record(entry.run_dir) or {}
    saved = record.get("config")
    if not isinstance(saved, dict):
        return RunStatus(entry, "changed", [("config.json", "unreadable", "a new run")])
    changes = setting_changes(saved, entry.config.model_dump(mode="json"))
    code = source_changes(record.get("sources"), entry)
    if changes:
        return RunStatus(entry, "changed", changes + code)
    if code:
        return RunStatus(entry, "stale", code)
    return RunStatus(entry, "finished" if finished else "partial")


def settle_runs(
    entries: Sequence[PlanEntry],
    out_dir: Path,
    console: Console,
    retrain_changed: bool = False,
    check: Callable[[list[PlanEntry]], None] | None = None,
    statuses: Sequence[RunStatus] | None = None,
) -> list[PlanEntry]:
    """The entries still to train, after the rules every command that trains follows.

    Runs trained with other settings are refused (`refuse_changed`) unless `retrain_changed`;
    `check` (memory fit, budget) then sees the entries to train, before anything is moved; changed
    and stale folders are moved aside, and reused finished runs are counted on `console`.
    `statuses`: the entries' `run_status`, when the caller has read them already."""
    if statuses is None:
        statuses = [run_status(entry) for entry in entries]
    changed = [status for status in statuses if status.state == "changed"]
    if changed and not retrain_changed:
        refuse_changed(changed, out_dir)
    todo = [status.entry for status in statuses if status.state != "finished"]
    if check is not None:
        check(todo)
    for status in statuses:
        if status.state in ("changed", "stale", "damaged"):
            moved = move_aside(status.entry.run_dir)
            console.print(
                f"[yellow]{escape(_why_retrained(status))}: retraining it "
                f"(the old run is kept as {moved.name})[/]"
            )
    reused = len(statuses) - len(todo)
    if reused and statuses[0].entry.run_dir == out_dir:  # `train --out out_dir`
        console.print(f"{out_dir} holds this run, finished with the same settings: reusing it")
    elif reused:
        console.print(f"reusing {reused} finished run(s) of {len(statuses)}")
    return todo


def _why_retrained(status: RunStatus) -> str:
    if status.state == "damaged":
        return f"{status.entry.run_dir} is damaged ({'; '.join(status.problems)})"
    why = "other settings" if status.state == "changed" else "another version of its code"
    return f"{status.entry.run_dir} was trained with {why}"


def refuse_changed(changed: list[RunStatus], out_dir: Path) -> None:
    """One line: how many runs differ, and each differing setting with its old and new values."""
    values: dict[str, tuple[set[str], set[str]]] = defaultdict(lambda: (set(), set()))
    for status in changed:
        for key, old, new in status.changes:
            values[key][0].add(setting_text(old))
            values[key][1].add(setting_text(new))
    settings = "; ".join(
        f"{key} {' / '.join(sorted(old))} -> {' / '.join(sorted(new))}"
        for key, (old, new) in sorted(values.items())
    )
    if len(changed) == 1 and changed[0].entry.run_dir == out_dir:  # `train --out out_dir`
        raise LossbenchError(
            f"{out_dir} holds a run trained with other settings ({settings}); add "
            f"--retrain-changed to retrain it (the old folder is kept as {out_dir.name}"
            f"{REPLACED}<time>), or give another --out"
        )
    raise LossbenchError(
        f"{len(changed)} run(s) in {out_dir} were trained with other settings ({settings}); "
        "add --retrain-changed to retrain them (the old folders are kept as "
        "<run>.replaced-<time>), or give another --out"
    )


def move_aside(run_dir: Path, now: float | None = None) -> Path:
    """Rename a run folder to `<run>.replaced-<time>` (a number added if that exists)."""
    with run_lock(run_dir, wait=False) as held:
        if not held:
            raise LossbenchError(
                f"{run_dir} is being trained by process {lock_holder(run_dir) or '?'}; "
                "let it finish, or stop it first"
            )
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
        target = run_dir.with_name(f"{run_dir.name}{REPLACED}{stamp}")
        count = 1
        while target.exists():
            count += 1
            target = run_dir.with_name(f"{run_dir.name}{REPLACED}{stamp}-{count}")
        run_dir.rename(target)
        return target
