"""Everything a run needs before its first step: device, seeds, model, loss settings,
optimizer and evaluators."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lossbench.data.sequences import EvaluationSet
from lossbench.errors import LossbenchError
from lossbench.evaluation.ranking import sample_eval_candidates
from lossbench.losses.base import LossParams, LossSpec, Need, Positions
from lossbench.models import build_model, model_spec
from lossbench.models.base import pretrainable_model
from lossbench.training.config import TrainConfig
from lossbench.training.evaluate import Evaluator
from lossbench.training.names import Names


@dataclass(frozen=True)
class LossSettings:
    """The loss as it will actually train: the published defaults with the user's overrides."""

    name: str
    spec: LossSpec
    positions: Positions
    negatives: int
    params: LossParams
    sampler: str = "uniform"  # of the negatives (none when `negatives` is 0)
    logq: bool | str = False  # True: the standard correction; "corrected": Khrylchenko et al.'s

    @property
    def needs(self) -> frozenset[Need]:
        """What the trainer supplies to the loss (`LossSpec.run_needs`): its declared needs,
        with the negatives a bare function takes from the flags, and the input `--logq` asks
        for."""
        return self.spec.run_needs(self.negatives, self.logq)

    def record(self) -> dict[str, Any]:
        return {
            "loss": self.name,
            "positions": self.positions,
            "negatives": self.negatives,
            "sampler": self.sampler if "negatives" in self.needs else None,
            "logq": self.logq,
            "gbce_t": self.params.gbce_t,
            "softmax_chunk": self.params.softmax_chunk,
        }


def resolve_loss(config: TrainConfig, names: Names | None = None) -> LossSettings:
    """The loss of `config` as it will train, checked against its model; `names`: the
    request's resolved names (a fresh set when not given)."""
    names = names if names is not None else Names()
    name = config.loss if config.loss is not None else names.default_loss(config.model)
    spec = names.loss_spec(name)
    positions = config.positions or spec.positions
    negatives = spec.negatives if config.negatives is None else config.negatives
    if spec.samples_negatives and negatives == 0:
        raise LossbenchError(f"loss {name} needs sampled negatives; use --negatives 1 or more")
    if not spec.samples_negatives and not spec.negatives_from_flags:
        negatives = 0  # losses that sample no negatives ignore --negatives
    bidirectional = names.model_spec(config.model).bidirectional
    if (positions == "masked") != bidirectional:
        if bidirectional:
            raise LossbenchError(
                f"model {config.model} sees the whole sequence, so it can only train with the "
                "masked-item loss mlm; use --loss mlm or a causal model (sasrec, gru4rec)"
            )
        raise LossbenchError(
            f"loss {name} trains on masked positions and needs a bidirectional model; "
            "use --model bert4rec, or --positions all|last"
        )
    check_sampler(config, name, spec, negatives)
    params = LossParams(
        gbce_t=config.gbce_t,
        softmax_chunk=config.softmax_chunk,
        logq_correction="corrected" if config.logq == "corrected" else "standard",
        scaled_ce_alpha=config.scaled_ce_alpha,
        sce_bucket_size_y=config.sce_bucket_size_y,
        rece_rounds=config.rece_rounds,
        rece_extra_chunks=config.rece_extra_chunks,
    )
    return LossSettings(name, spec, positions, negatives, params, config.sampler, config.logq)


def check_sampler(config: TrainConfig, name: str, spec: LossSpec, negatives: int) -> None:
    """Refuse negative-sampling settings the loss `name` cannot use (one line each)."""
    batch_sampler = config.sampler in ("in-batch", "mixed")
    logq_flag = "--logq corrected" if config.logq == "corrected" else "--logq"
    if not spec.samples_negatives and (batch_sampler or config.logq):
        flag = logq_flag if config.logq else f"--sampler {config.sampler}"
        raise LossbenchError(
            f"loss {name} scores the full catalogue and samples no negatives, so {flag} "
            "does not apply; use a sampled loss such as sampled-ce"
        )
    wanted = "item_frequencies" if config.logq == "corrected" else "log_q"
    if config.logq and wanted not in spec.accepts | spec.needs:
        raise LossbenchError(
            f"{logq_flag} corrects a sampled softmax and loss {name} is not one; "
            f"use --loss sampled-ce, or drop {logq_flag}"
        )
    if config.sampler == "mixed" and negatives < 2:
        raise LossbenchError(
            "--sampler mixed takes half its negatives from the batch and half uniformly; "
            "use --negatives 2 or more"
        )


def code_sources(
    config: TrainConfig, names: Names | None = None
) -> dict[str, dict[str, str | None]]:
    """Where the run's loss and model code came from, with the sha256 of a plugin's source
    file (see `lossbench.plugins`), as recorded in config.json."""
    names = names if names is not None else Names()
    loss = config.loss if config.loss is not None else names.default_loss(config.model)
    return names.sources(loss, config.model)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise LossbenchError("--device cuda was asked for but no CUDA device is visible; use cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_device(device_name: str, precision: str) -> torch.device:
    """The device a run trains on (any precision runs on it: see `precision_notice`)."""
    return pick_device(device_name)


def run_precision(precision: str, device: torch.device) -> str:
    """fp32 or bf16 as asked; `auto`: bf16 where `device` has bf16 arithmetic, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if has_bf16_arithmetic(device) else "fp32"


def has_bf16_arithmetic(device: torch.device) -> bool:
    """A CUDA GPU that supports bf16, or a CPU with bf16 dot-product instructions."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and cpu_has_bf16_matmul()


def precision_notice(precision: str, device: torch.device) -> str | None:
    """One line for a bf16 run on a CPU without bf16 arithmetic (it runs, emulated), else None."""
    if precision != "bf16" or device.type != "cpu" or cpu_has_bf16_matmul():
        return None
    return (
        "this CPU has no bf16 arithmetic (AVX-512 BF16 or AMX): --precision bf16 runs "
        "emulated, slower than fp32 (--precision auto picks fp32 here)"
    )


# oneDNN, which runs bf16 matmuls on CPU, keeps a compiled kernel per matmul shape in two
# caches (oneDNN's and torch's ideep), 1,024 entries each by default, about 1 MB each. The
# packed encoder's row counts and widths are rounded to a few recurring values in bf16
# (`models/bucketed_linear.py`); a beauty-s3rec epoch then meets about 60 shapes. 64 entries:
# 7.4 s an epoch and 596 MB peak (fp32: 10.2 s, 690 MB); 32: 7.8 s, 535 MB; 256: 7.1 s,
# 760 MB (one thread, AMX Xeon).
ONEDNN_CACHE_ENTRIES = "64"


def bound_onednn_caches(precision: str, device: torch.device) -> None:
    """Bound oneDNN's kernel caches for a bf16 run on CPU (a user's own setting wins). Read at
    the process's first oneDNN matmul, so set before any."""
    if precision == "bf16" and device.type == "cpu":
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE_ENTRIES)
        os.environ.setdefault("LRU_CACHE_CAPACITY", ONEDNN_CACHE_ENTRIES)


def cpu_has_bf16_matmul() -> bool:
    """Does this CPU have bf16 dot-product instructions (AVX-512 BF16 or AMX)? Without them
    torch converts bf16 to fp32 and back around every product. torch declares both; an older
    torch without the declaration is answered from /proc/cpuinfo's flags."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        try:
            flags = Path("/proc/cpuinfo").read_text().split()
        except OSError:  # not Linux: fp32 is never the slow choice
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


def make_adam(
    model: nn.Module,
    device: torch.device,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
) -> torch.optim.Adam:
    """Adam, fused into one kernel per step on CPU and CUDA (the per-parameter loop cost
    ~5% of a SASRec step on CPU); same update, same hyperparameters for every loss."""
    fused = device.type in ("cpu", "cuda") and all(
        p.is_floating_point() for p in model.parameters()
    )
    return torch.optim.Adam(
        model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None
    )


def use_threads(threads: int | None) -> None:
    """Set torch's intra-op CPU threads: `threads` when asked, else one per free core now
    (`ThreadGovernor`, which a training run also keeps adjusting)."""
    from lossbench.training.threads import ThreadGovernor

    ThreadGovernor(threads).start()


def seed_everything(seed: int) -> None:
    """Each run seeds itself, so no result depends on the runs before it."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_model(config: TrainConfig, n_items: int) -> tuple[nn.Module, dict[str, Any]]:
    """The model of `config` with fresh weights, or `--init`'s for a pretrainable model."""
    model, model_config = build_model(config.model, n_items, config.model_settings)
    if config.init is not None:
        spec = model_spec(config.model)
        if not spec.pretrainable:
            raise LossbenchError(f"model {config.model} takes no --init checkpoint")
        pretrainable_model(model, spec, config.model).load_pretrained(config.init)
    return model, model_config.model_dump()


def make_evaluator(
    config: TrainConfig,
    evaluation_set: EvaluationSet,
    item_counts: Tensor,
    device: torch.device,
    salt: int,
) -> Evaluator:
    """Full ranking, or ranking among sampled negatives fixed per seed (and per split: salt)."""
    candidates = None
    if config.eval_negatives > 0:
        candidates = sample_eval_candidates(
            config.eval_negatives,
            len(item_counts) - 1,
            evaluation_set.seen_offsets,
            evaluation_set.seen_items,
            evaluation_set.targets,
            by=config.eval_sampler,
            item_counts=item_counts,
            seed=config.seed * 1000 + salt,
        )
    return Evaluator(
        evaluation_set,
        config.eval_batch_size,
        config.exclude_seen,
        device,
        candidates,
        config.seen_targets,
    )
