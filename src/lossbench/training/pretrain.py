"""S3Rec pre-training (`lossbench pretrain --model s3rec`).

As in the S3Rec code, the samples are every prefix of each user's last `max_len` training
items, and each batch masks items (MIP / MAP), draws MIP negatives outside the sequence and cuts
one segment (SP) whose negative comes from the other users' items. Only training items are used:
validation and test items never appear, not even as negative segments. Batches are built by
vectorized tensor indexing with an explicit generator on the training device.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor

from lossbench.atomic import write_json
from lossbench.checkpoints import load_checkpoint, save_checkpoint_file
from lossbench.data.prepared import PreparedDataset
from lossbench.errors import LossbenchError
from lossbench.models.s3rec import (
    OBJECTIVES,
    PretrainBatch,
    PretrainObjectives,
    S3Rec,
    S3RecConfig,
    S3RecPretrainer,
)
from lossbench.training.progress import BatchLines
from lossbench.training.setup import make_adam, pick_device, seed_everything


@dataclass(frozen=True)
class PretrainSamples:
    """Every prefix of every user's training window, as tensors on the training device."""

    windows: Tensor  # (U, L) int64 left-padded last L training items of each user
    lengths: Tensor  # (U,) int64 real items per window
    user: Tensor  # (S,) int64 window row of each sample
    length: Tensor  # (S,) int64 prefix length k of each sample, 1..lengths[user]
    all_items: Tensor  # (N,) int64 every user's training items, concatenated
    item_attributes: Tensor  # (n_items + 1, A) float 0/1, row 0 (padding) all zero
    n_items: int


def pretrain_samples(
    dataset: PreparedDataset, max_len: int, device: torch.device
) -> PretrainSamples:
    """The samples of `dataset`, or a LossbenchError if it has no item attributes."""
    if (
        dataset.attribute_offsets is None
        or dataset.attribute_ids is None
        or not dataset.n_attributes
    ):
        from lossbench.data.registry import load_registry

        with_attributes = [
            name
            for name, entry in load_registry().items()
            if entry.attributes is not None or entry.generator is not None
        ]
        raise LossbenchError(
            f"dataset {dataset.name} has no item attributes, which S3Rec pre-training needs; "
            f"datasets with attributes: {', '.join(with_attributes)}"
        )
    lengths = np.minimum(dataset.train_lengths, max_len)  # (U,)
    ends = dataset.train_offsets[1:]  # (U,) one past each user's last training item
    columns = np.arange(max_len)
    index = ends[:, None] - max_len + columns  # (U, L) window columns in the flat item array
    real = columns[None, :] >= max_len - lengths[:, None]
    windows = np.where(real, dataset.train_items[np.clip(index, 0, None)], 0)
    user = np.repeat(np.arange(len(lengths)), lengths)  # (S,)
    first = np.cumsum(lengths) - lengths  # (U,) first sample of each user
    length = np.arange(len(user)) - np.repeat(first, lengths) + 1  # 1..lengths[user]
    attributes = np.zeros((dataset.n_items + 1, dataset.n_attributes), dtype=np.float32)
    counts = np.diff(dataset.attribute_offsets)  # (n_items + 1,)
    attributes[np.repeat(np.arange(len(counts)), counts), dataset.attribute_ids - 1] = 1.0

    def tensor(array: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)

    return PretrainSamples(
        tensor(windows.astype(np.int64)),
        tensor(lengths.astype(np.int64)),
        tensor(user.astype(np.int64)),
        tensor(length.astype(np.int64)),
        tensor(dataset.train_items.astype(np.int64)),
        tensor(attributes),
        dataset.n_items,
    )


def sample_absent_items(items: Tensor, n_items: int, generator: torch.Generator) -> Tensor:
    """(B, L) sequences -> (B, L) items drawn uniformly from 1..n_items minus each row's items.

    Exact, without redraw loops: with the row's distinct items sorted p_1 < ... < p_c, the
    r-th (0-based) absent item is r + 1 + #{i : p_i - i <= r}. A row holding every item (no
    absent one) gets uniform draws."""
    batch, width = items.shape
    ordered, _ = items.sort(dim=1)  # (B, L)
    repeated = torch.zeros_like(ordered, dtype=torch.bool)
    repeated[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    distinct = (ordered != 0) & ~repeated
    big = n_items + width + 1  # sorts after every real item
    present, _ = torch.where(distinct, ordered, big).sort(dim=1)  # distinct items first
    n_present = distinct.sum(1, keepdim=True)  # (B, 1)
    rank = torch.arange(1, width + 1, device=items.device)
    gaps = torch.where(present < big, present - rank, big)  # (B, L) absent items below p_i
    n_absent = (n_items - n_present).clamp(min=1)
    draw = torch.rand(batch, width, generator=generator, device=items.device)
    r = (draw * n_absent).long()  # (B, L) in 0..n_absent - 1
    absent = r + 1 + (gaps[:, None, :] <= r[:, :, None]).sum(-1)
    anything = (draw * n_items).long() + 1
    return torch.where(n_present < n_items, absent, anything)


def make_batch(
    samples: PretrainSamples, sample_ids: Tensor, mask_prob: float, generator: torch.Generator
) -> PretrainBatch:
    """The pre-training batch of `sample_ids` (B,): masking, negatives, segments."""
    device = sample_ids.device
    width = samples.windows.shape[1]
    mask_id = samples.n_items + 1
    user, k = samples.user[sample_ids], samples.length[sample_ids]  # (B,)
    columns = torch.arange(width, device=device)
    relative = columns[None, :] - (width - k[:, None])  # (B, L) position inside the prefix
    real = relative >= 0
    source = (columns[None, :] + (k - samples.lengths[user])[:, None]).clamp(0, width - 1)
    items = torch.where(real, samples.windows[user].gather(1, source), 0)  # (B, L)

    def uniform(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device=device)

    # MIP / MAP: mask a share of the items, and always the last one (as the original code)
    masked = real & ((uniform(*items.shape) < mask_prob) | (columns == width - 1))
    negatives = sample_absent_items(items, samples.n_items, generator)
    # SP: a segment of 1..k // 2 items at a random start; its negative from all_items
    has_segment = k >= 2
    seg_len = 1 + (uniform(len(k)) * (k // 2).clamp(min=1)).long()  # (B,)
    start = (uniform(len(k)) * (k - seg_len + 1).clamp(min=1)).long()
    neg_start = (uniform(len(k)) * (len(samples.all_items) - seg_len + 1)).long()
    in_segment = real & (relative >= start[:, None]) & (relative < (start + seg_len)[:, None])
    offset = (neg_start - start)[:, None] + relative
    other = samples.all_items[offset.clamp(0, len(samples.all_items) - 1)]  # (B, L)
    return PretrainBatch(
        items=items,
        masked_items=torch.where(masked, mask_id, items),
        negative_items=torch.where(masked, negatives, items),
        attributes=samples.item_attributes[items],  # (B, L, A)
        segment_context=torch.where(in_segment, mask_id, items),
        positive_segment=torch.where(real, torch.where(in_segment, items, mask_id), 0),
        negative_segment=torch.where(real, torch.where(in_segment, other, mask_id), 0),
        has_segment=has_segment,
    )


def _load_for_resume(model: S3RecPretrainer, path: Path, epochs: int) -> int:
    """Load a pre-training checkpoint's backbone and heads into `model`; its epoch count."""
    model.backbone.load_pretrained(path)  # checks kind, catalogue and settings
    checkpoint = load_checkpoint(path)
    if checkpoint["n_attributes"] != model.n_attributes:
        raise LossbenchError(
            f"{path} has {checkpoint['n_attributes']} attributes but this dataset has "
            f"{model.n_attributes}; resume on the same dataset"
        )
    backbone = {f"backbone.{k}": v for k, v in checkpoint["backbone"].items()}
    model.load_state_dict({**backbone, **checkpoint["pretrainer"]})
    done = int(checkpoint["epoch"])
    if done >= epochs:
        raise LossbenchError(
            f"{path} is already at epoch {done}; ask for more --epochs (the total) to resume"
        )
    return done


def _earlier_history(out_dir: Path, done: int) -> list[dict[str, float]]:
    """The first `done` epochs of `out_dir`'s history when resuming there, else nothing."""
    path = out_dir / "pretrain-history.json"
    if done == 0 or not path.is_file():
        return []
    earlier: list[dict[str, float]] = json.loads(path.read_text())
    return [row for row in earlier if row["epoch"] <= done]


def pretrain_s3rec(
    dataset: PreparedDataset,
    model_settings: BaseModel,
    out_dir: Path,
    epochs: int,
    checkpoint_every: int,
    seed: int,
    device: str = "auto",
    batch_size: int = 100,
    lr: float = 1e-3,
    objectives: PretrainObjectives | None = None,
    console: Console | None = None,
    resume: Path | None = None,
) -> Path:
    """Pre-train S3Rec on `dataset`; writes `pretrain-epoch{N}.pt` every `checkpoint_every`
    epochs, `pretrained.pt` at the end and `pretrain-history.json` (per epoch: mean losses
    and seconds).
    Returns the path of `pretrained.pt`, which `S3Rec.load_pretrained` reads.

    `resume` continues from a checkpoint of an earlier run (its weights and epoch count) up to
    `epochs` in all; Adam's moment estimates start afresh (checkpoints hold weights only).
    S3Rec's `Pretraining.entry_point` (a `lossbench.models.base.PretrainFn`)."""
    try:
        config = S3RecConfig.model_validate(model_settings.model_dump())
    except ValidationError as error:
        first = error.errors()[0]["msg"]
        raise LossbenchError(f"S3Rec pre-training takes S3Rec's settings: {first}") from None
    if epochs < 1 or checkpoint_every < 1 or batch_size < 1 or lr <= 0:
        raise LossbenchError("epochs, checkpoint_every and batch_size must be >= 1, lr > 0")
    objectives = objectives or PretrainObjectives()
    target = pick_device(device)
    samples = pretrain_samples(dataset, config.max_len, target)
    seed_everything(seed)
    generator = torch.Generator(device=target).manual_seed(seed)
    backbone = S3Rec(dataset.n_items, **config.model_dump())
    model = S3RecPretrainer(backbone, dataset.n_attributes, config.init_std)
    done = _load_for_resume(model, resume, epochs) if resume is not None else 0
    model.to(target)
    if done:  # a new stream of epoch orders and masks, not a replay of epochs 1..done
        generator.manual_seed(seed + 1_000_003 * done)
    optimizer = make_adam(model, target, lr)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_samples = len(samples.user)
    n_batches = -(-n_samples // batch_size)
    history = _earlier_history(out_dir, done)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    console = console or Console(quiet=True)
    # Off a terminal (a log file), one line per epoch instead of a bar's last frame.
    lines = not console.is_terminal and not console.quiet
    bar = Progress(*columns, TimeRemainingColumn(), console=console, disable=lines)
    batch_lines = BatchLines(console, epochs, n_batches, enabled=lines)  # a long epoch's lines
    with bar as progress:
        task = progress.add_task("pre-training s3rec", total=(epochs - done) * n_batches)
        for epoch in range(done + 1, epochs + 1):
            started = time.perf_counter()
            batch_lines.start_epoch(epoch)
            model.train()
            sums = torch.zeros(len(OBJECTIVES), device=target)
            order = torch.randperm(n_samples, generator=generator, device=target)
            for sample_ids in order.split(batch_size):
                losses = model(make_batch(samples, sample_ids, objectives.mask_prob, generator))
                optimizer.zero_grad(set_to_none=True)
                objectives.total(losses).backward()
                optimizer.step()
                sums += torch.stack([losses[name].detach() for name in OBJECTIVES])
                progress.advance(task)
                batch_lines.batch_done()
            means = (sums / n_batches).tolist()  # one sync per epoch
            seconds = time.perf_counter() - started
            losses_by_name = dict(zip(OBJECTIVES, means, strict=True))
            history.append({"epoch": epoch, **losses_by_name, "seconds": seconds})
            losses_text = " ".join(f"{n} {v:.3g}" for n, v in losses_by_name.items())
            progress.update(task, description=f"epoch {epoch}/{epochs}  {losses_text}")
            if lines:
                console.print(
                    f"epoch {epoch}/{epochs}  {losses_text}  {seconds:.1f} s", highlight=False
                )
            if epoch % checkpoint_every == 0:
                save_checkpoint_file(
                    model.checkpoint(config, epoch), out_dir / f"pretrain-epoch{epoch}.pt"
                )
            write_json(out_dir / "pretrain-history.json", history)
    final = out_dir / "pretrained.pt"
    save_checkpoint_file(model.checkpoint(config, epochs), final)
    return final
