"""`lossbench verify RUNS_DIR`: every run folder under a folder, against the size and sha256
of each file that its metrics.json recorded when the run finished."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lossbench.training.run_files import (
    CONFIG_FILE,
    DAMAGED_FIX,
    FILES_KEY,
    METRICS_FILE,
    REPLACED,
    is_finished,
    run_problems,
)


@dataclass
class RunCheck:
    run_dir: Path
    state: str  # "finished", "unrecorded" (finished before files were recorded), "unfinished"
    files: int = 0  # files whose sha256 was checked
    problems: list[str] = field(default_factory=list)  # each names a file

    def line(self) -> str:
        if self.problems:
            return f"{self.run_dir}: DAMAGED: {'; '.join(self.problems)}; {DAMAGED_FIX}"
        if self.state == "unfinished":
            return f"{self.run_dir}: not finished, nothing to check (the same command resumes it)"
        if self.state == "unrecorded":
            unrecorded = "finished before runs recorded their files' hashes"
            return f"{self.run_dir}: ok, metrics.json readable ({unrecorded})"
        return f"{self.run_dir}: ok, size and sha256 match ({self.files} recorded files)"


def verify_runs(root: Path) -> list[RunCheck]:
    """A check per run folder under `root` (or `root` itself), sorted; folders a resumed
    comparison set aside (`<run>.replaced-<time>`) are skipped."""
    return [_check(run_dir) for run_dir in sorted(set(_run_dirs(root)))]


def _run_dirs(root: Path) -> list[Path]:
    found = [path.parent for path in root.rglob(CONFIG_FILE)]
    found += [path.parent for path in root.rglob(METRICS_FILE)]
    return [run_dir for run_dir in found if REPLACED not in run_dir.relative_to(root).as_posix()]


def _check(run_dir: Path) -> RunCheck:
    if not is_finished(run_dir):
        return RunCheck(run_dir, "unfinished")
    problems = run_problems(run_dir, hashes=True)
    if problems:
        return RunCheck(run_dir, "finished", problems=problems)
    records = json.loads((run_dir / METRICS_FILE).read_text()).get(FILES_KEY)
    if not isinstance(records, dict):
        return RunCheck(run_dir, "unrecorded")
    return RunCheck(run_dir, "finished", files=len(records))


__all__ = ["RunCheck", "verify_runs"]
