"""Pre-training a model as its spec declares (`ModelSpec.pretraining`): the one place that
decides whether and how a model pre-trains, for `lossbench pretrain` and a reproduction's
pre-training steps alike. No model name is tested: a plugin model that declares a
`Pretraining` is pre-trained the same way as S3Rec.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel
from rich.console import Console

from lossbench.data.prepared import PreparedDataset
from lossbench.errors import LossbenchError
from lossbench.models import MODELS
from lossbench.models.base import ModelSpec, PretrainFn, Pretraining
from lossbench.plugins import one_line


@dataclass(frozen=True)
class PretrainSettings:
    """How long and how one pre-training runs; `for_model` fills what is not given from the
    model's declared defaults."""

    epochs: int
    batch_size: int
    lr: float
    checkpoint_every: int

    @classmethod
    def for_model(
        cls,
        pretraining: Pretraining,
        *,
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        checkpoint_every: int | None = None,
    ) -> PretrainSettings:
        return cls(
            epochs=pretraining.epochs if epochs is None else epochs,
            batch_size=pretraining.batch_size if batch_size is None else batch_size,
            lr=pretraining.lr if lr is None else lr,
            checkpoint_every=(
                pretraining.checkpoint_every if checkpoint_every is None else checkpoint_every
            ),
        )


def pretraining_of(name: str, spec: ModelSpec) -> Pretraining:
    """The model's declared pre-training, or a LossbenchError naming the models that have one."""
    if spec.pretraining is None:
        names = [model for model, known in MODELS.items() if known.pretraining is not None]
        raise LossbenchError(
            f"model {name} has no pre-training; pre-trainable: {', '.join(names) or 'none'}"
        )
    return spec.pretraining


def pretrain_routine(name: str, pretraining: Pretraining) -> PretrainFn:
    """The routine `pretraining.entry_point` names, imported and checked to be callable."""
    module_name, _, attribute = pretraining.entry_point.partition(":")
    where = f"model {name}'s pre-training {pretraining.entry_point}"
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # an ImportError, or the module failing as it runs
        raise LossbenchError(f"{where} does not import: {one_line(error)}") from None
    routine = getattr(module, attribute, None)
    if routine is None:
        raise LossbenchError(f"{where}: module {module_name} has no {attribute}")
    if not isinstance(routine, PretrainFn):
        raise LossbenchError(f"{where} is a {type(routine).__name__}, not a function")
    return routine


def run_pretraining(
    name: str,
    spec: ModelSpec,
    dataset: PreparedDataset,
    config: BaseModel,
    out_dir: Path,
    settings: PretrainSettings,
    *,
    seed: int,
    device: str = "auto",
    console: Console | None = None,
    resume: Path | None = None,
) -> Path:
    """Pre-train model `name` of `config` (its validated settings) on `dataset` into
    `out_dir` with its declared routine; returns the checkpoint `--init` takes."""
    routine = pretrain_routine(name, pretraining_of(name, spec))
    return routine(
        dataset,
        config,
        out_dir,
        epochs=settings.epochs,
        checkpoint_every=settings.checkpoint_every,
        seed=seed,
        device=device,
        batch_size=settings.batch_size,
        lr=settings.lr,
        console=console,
        resume=resume,
    )
