"""Pre-training as a step of a reproduction: once per (dataset, model), reused and resumed.

A step's folder is `OUT/<dataset>/<model>/pretrain-<N>-epochs/`: `pretrain.json` (what the
step computes: dataset, epochs, seed, batch size, learning rate, model settings), then what
`lossbench pretrain` writes (`pretrain-epochK.pt` every few epochs, `pretrained.pt` last).
The fine-tuning runs name `pretrained.pt` as their `init`, so a step with other epochs is
another folder and makes them other runs. A step is `finished` (its `pretrained.pt` with the
same settings), `partial` (a `pretrain-epochK.pt`: continued from the latest), `changed`
(other settings: refused, or moved aside with `--retrain-changed`) or `missing`.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from rich.console import Console

from lossbench.atomic import atomic_path, write_json
from lossbench.compare.execute.types import PrepareFn
from lossbench.data.splits import SplitSpec
from lossbench.errors import LossbenchError
from lossbench.models.base import ModelSpec
from lossbench.training.pretrainers import PretrainSettings, pretraining_of
from lossbench.training.run_lock import run_lock

PRETRAIN_RECORD = "pretrain.json"
PRETRAINED = "pretrained.pt"
_EPOCH_CHECKPOINT = re.compile(r"pretrain-epoch(\d+)\.pt")

StepState = Literal["finished", "partial", "changed", "missing"]


@dataclass(frozen=True)
class PretrainStep:
    """Pre-train `model` on `dataset` for `epochs`; its fine-tuning runs start from it."""

    dataset: str
    split: SplitSpec  # the fine-tuning runs' split: pre-training sees its training items only
    model: str
    model_settings: BaseModel  # the fine-tuning runs' validated model settings
    epochs: int
    seed: int
    folder: Path
    spec: ModelSpec  # its `pretraining` declares the routine, batch size and learning rate

    @property
    def settings(self) -> PretrainSettings:
        """The model's declared pre-training settings for `epochs` epochs."""
        return PretrainSettings.for_model(pretraining_of(self.model, self.spec), epochs=self.epochs)

    @property
    def checkpoint(self) -> Path:
        return self.folder / PRETRAINED

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.model} pre-training, {self.epochs} epoch" + (
            "s" if self.epochs != 1 else ""
        )

    def record(self) -> dict[str, Any]:
        """What the step computes (not how: device and threads are left out)."""
        return {
            "dataset": self.dataset,
            "split": self.split.identity(),
            "model": self.model,
            "epochs": self.epochs,
            "seed": self.seed,
            "batch_size": self.settings.batch_size,
            "lr": self.settings.lr,
            "model_settings": self.model_settings.model_dump(mode="json"),
        }


def pretrain_folder(out_dir: Path, dataset_folder: str, model: str, epochs: int) -> Path:
    return out_dir / dataset_folder / model / f"pretrain-{epochs}-epochs"


def step_state(step: PretrainStep) -> StepState:
    record_path = step.folder / PRETRAIN_RECORD
    if not record_path.is_file():
        anything = step.checkpoint.is_file() or _latest_epoch(step.folder) is not None
        return "changed" if anything else "missing"
    try:
        saved = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return "changed"
    if saved != step.record():
        return "changed"
    if step.checkpoint.is_file():
        return "finished"
    return "partial" if _latest_epoch(step.folder) is not None else "missing"


def _latest_epoch(folder: Path) -> int | None:
    epochs = [
        int(match.group(1))
        for path in (folder.glob("pretrain-epoch*.pt") if folder.is_dir() else [])
        if (match := _EPOCH_CHECKPOINT.fullmatch(path.name))
    ]
    return max(epochs, default=None)


def refuse_changed_steps(steps: list[PretrainStep]) -> None:
    if steps:
        folders = ", ".join(str(step.folder) for step in steps)
        raise LossbenchError(
            f"pre-training folder(s) {folders} hold another pre-training; add "
            "--retrain-changed to pre-train again (the old folders are kept as "
            "<folder>.replaced-<time>), or give another --out"
        )


def run_step(step: PretrainStep, prepare: PrepareFn, device: str, console: Console) -> Path:
    """Pre-train unless finished (continuing a partial step); returns the checkpoint path.

    Under the folder's lock: a second process on the same `--out` waits, then reuses it."""
    with run_lock(step.folder, wait=True):
        state = step_state(step)
        if state == "finished":
            console.print(f"reusing {step.label}: {step.checkpoint}")
            return step.checkpoint
        if state == "changed":
            refuse_changed_steps([step])
        return _pretrain(step, prepare, device, console, state)


def _pretrain(
    step: PretrainStep, prepare: PrepareFn, device: str, console: Console, state: StepState
) -> Path:
    from lossbench.training.pretrainers import run_pretraining

    resume = None
    latest = _latest_epoch(step.folder)
    if state == "partial" and latest is not None:
        resume = step.folder / f"pretrain-epoch{latest}.pt"
        if latest >= step.epochs:  # stopped between the last epoch's two writes
            with atomic_path(step.checkpoint) as temporary:
                shutil.copyfile(resume, temporary)
            return step.checkpoint
        console.print(f"continuing {step.label} from {resume.name}")
    else:
        console.print(f"[bold]{step.label}[/] -> {step.folder}")
    step.folder.mkdir(parents=True, exist_ok=True)
    write_json(step.folder / PRETRAIN_RECORD, step.record())
    return run_pretraining(
        step.model,
        step.spec,
        prepare(step.dataset, step.split),
        step.model_settings,
        step.folder,
        step.settings,
        seed=step.seed,
        device=device,
        console=console,
        resume=resume,
    )
