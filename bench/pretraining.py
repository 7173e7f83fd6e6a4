"""Speed of S3Rec pre-training (`lossbench pretrain --model s3rec`): one pre-training epoch
beside SASRec epochs on the same data (interleaved), and the packed encoder against the padded one.

    python bench/pretraining.py                   # lastfm: both epochs, then 40 timed batches
    python bench/pretraining.py --dataset synthetic --no-batches   # only the two epochs
    python bench/pretraining.py --json            # the same numbers as JSON

`epochs`: one whole pre-training epoch (the loop of `pretrain_s3rec`: the study's model,
batch 100, Adam 1e-3) beside SASRec + improved training epochs (`lossbench train`'s set-up and
steps, the study's settings, no validation), interleaved: the pre-training epoch's batches in
`--rounds` slices, one SASRec epoch after each, so a shared machine's drift slows both alike;
the pre-training epoch's seconds, the median SASRec epoch's and their ratio. An epoch of
pre-training is every prefix of every user's window (S3Rec's samples), each encoded four
times (the masked sequence and SP's three), so it encodes about 2 x window length times the
items of a SASRec epoch: the items encoded by each are printed too, and the seconds per
thousand items, the per-item cost of each path.

Times training steps (batch building, the four objectives, backward, Adam) on one epoch's
batch order, alternating batch by batch between the packed encoder (the default on CPU: real
items' rows only, attention in width-sorted parts) and the padded one (every (B, L) slot
computed), in one process: a shared machine's speed drifts by +-30% over minutes, so the ratio is
steadier than either number. Datasets come from `--data-dir` (`lossbench preprocess lastfm`).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from harness import run_config
from lossbench.data.store import ensure_prepared
from lossbench.errors import LossbenchError
from lossbench.models.s3rec import PretrainObjectives, S3Rec, S3RecConfig, S3RecPretrainer
from lossbench.paths import default_data_dir
from lossbench.training.entry import plan_entry
from lossbench.training.loop import RunHooks, set_up
from lossbench.training.pretrain import make_batch, pretrain_samples
from lossbench.training.setup import make_adam, seed_everything


def bench_pretraining(name: str, data_dir: Path, batches: int, batch_size: int) -> dict[str, Any]:
    dataset = ensure_prepared(data_dir, name)
    config = S3RecConfig.model_validate({})  # the study's Table 2 model, as `lossbench pretrain`
    device = torch.device("cpu")
    samples = pretrain_samples(dataset, config.max_len, device)
    objectives = PretrainObjectives()
    seed_everything(0)
    generator = torch.Generator().manual_seed(0)
    model = S3RecPretrainer(
        S3Rec(dataset.n_items, **config.model_dump()), dataset.n_attributes, config.init_std
    )
    optimizer = make_adam(model, device, 1e-3)
    model.train()
    order = torch.randperm(len(samples.user), generator=generator).split(batch_size)

    def step(sample_ids: torch.Tensor) -> None:
        batch = make_batch(samples, sample_ids, objectives.mask_prob, generator)
        losses = model(batch)
        optimizer.zero_grad(set_to_none=True)
        objectives.total(losses).backward()
        optimizer.step()

    encoder = model.backbone.encoder  # packed or padded, alternating on the same weights
    for sample_ids in order[:3]:  # warm-up: allocator, kernels
        step(sample_ids)
    seconds = {True: 0.0, False: 0.0}  # packed -> total seconds
    timed = order[3 : 3 + batches]
    for index, sample_ids in enumerate(timed):
        for packed in (True, False) if index % 2 else (False, True):
            encoder.pack_padding = packed
            start = time.perf_counter()
            step(sample_ids)
            seconds[packed] += time.perf_counter() - start
    encoder.pack_padding = True
    packed_ms = 1000 * seconds[True] / len(timed)
    padded_ms = 1000 * seconds[False] / len(timed)
    return {
        "dataset": name,
        "samples": len(samples.user),
        "batches_per_epoch": len(order),
        "timed_batches": len(timed),
        "packed_ms_per_batch": packed_ms,
        "padded_ms_per_batch": padded_ms,
        "speedup_vs_padded": padded_ms / packed_ms,
        "packed_seconds_per_epoch_estimate": packed_ms * len(order) / 1000,
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def bench_epochs(name: str, data_dir: Path, rounds: int) -> dict[str, Any]:
    """One whole pre-training epoch and `rounds` SASRec epochs on `name`, interleaved: the
    pre-training epoch's batches run in `rounds` slices, each followed by one SASRec epoch,
    so a shared machine's drift slows both alike. The pre-training epoch's seconds (all its
    batches), the median SASRec epoch's, their ratio and the items each encodes."""
    dataset = ensure_prepared(data_dir, name)
    config = S3RecConfig.model_validate({})  # the study's Table 2 model, as `lossbench pretrain`
    device = torch.device("cpu")
    samples = pretrain_samples(dataset, config.max_len, device)
    objectives = PretrainObjectives()
    seed_everything(0)
    generator = torch.Generator().manual_seed(0)
    model = S3RecPretrainer(
        S3Rec(dataset.n_items, **config.model_dump()), dataset.n_attributes, config.init_std
    )
    optimizer = make_adam(model, device, 1e-3)

    def pretrain_step(sample_ids: torch.Tensor) -> None:  # as `pretrain_s3rec`'s loop
        losses = model(make_batch(samples, sample_ids, objectives.mask_prob, generator))
        optimizer.zero_grad(set_to_none=True)
        objectives.total(losses).backward()
        optimizer.step()

    # SASRec + improved with the study's settings, set up as `lossbench train` does
    sasrec_config = run_config(name, "improved", 1, threads=torch.get_num_threads())
    with tempfile.TemporaryDirectory() as run_dir:
        entry = plan_entry(sasrec_config, Path(run_dir))
        run = set_up(entry, dataset, Console(quiet=True), RunHooks(evaluate_test=False))

    def sasrec_epoch() -> float:  # the training steps of one epoch, seconds
        run.model.train()
        started = time.perf_counter()
        for parts in run.batcher.epoch():
            run.optimizer.zero_grad(set_to_none=True)
            run.step(parts).backward()
            run.optimizer.step()
        return time.perf_counter() - started

    model.train()
    for sample_ids in torch.randperm(len(samples.user), generator=generator)[:300].split(100):
        pretrain_step(sample_ids)  # warm-up: allocator, kernels
    sasrec_epoch()  # warm-up
    batches = torch.randperm(len(samples.user), generator=generator).split(100)
    pretrain_seconds, sasrec_seconds = 0.0, []
    for index in range(rounds):
        started = time.perf_counter()
        for sample_ids in batches[
            index * len(batches) // rounds : (index + 1) * len(batches) // rounds
        ]:
            pretrain_step(sample_ids)
        pretrain_seconds += time.perf_counter() - started
        sasrec_seconds.append(sasrec_epoch())
    sasrec_median = statistics.median(sasrec_seconds)
    # Items each epoch encodes: pre-training 4 sequences per prefix sample; SASRec each
    # user's inputs (its window's items but the last, up to max_len).
    pretrain_items = 4 * int(samples.length.sum())
    sasrec_items = int((dataset.train_lengths - 1).clip(0, config.max_len).sum())
    return {
        "dataset": name,
        "pretrain_epoch_seconds": pretrain_seconds,
        "sasrec_epoch_seconds": sasrec_median,
        "sasrec_epoch_seconds_all": sasrec_seconds,
        "pretrain_vs_sasrec": pretrain_seconds / sasrec_median,
        "pretrain_items_encoded": pretrain_items,
        "sasrec_items_encoded": sasrec_items,
        "pretrain_ms_per_1k_items": 1e6 * pretrain_seconds / pretrain_items,
        "sasrec_ms_per_1k_items": 1e6 * sasrec_median / sasrec_items,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--dataset", default="lastfm")
    parser.add_argument("--batches", type=int, default=40, help="timed batches (each mode)")
    parser.add_argument("--batch-size", type=int, default=100, help="as `lossbench pretrain`")
    parser.add_argument("--no-batches", action="store_true", help="only the two epochs")
    parser.add_argument("--no-epochs", action="store_true", help="only packed vs padded")
    parser.add_argument("--rounds", type=int, default=10, help="SASRec epochs interleaved")
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")
    args = parser.parse_args()
    rows: dict[str, dict[str, Any]] = {}
    if not args.no_epochs:
        rows["epochs"] = bench_epochs(args.dataset, args.data_dir, args.rounds)
    if not args.no_batches:
        rows["batches"] = bench_pretraining(
            args.dataset, args.data_dir, args.batches, args.batch_size
        )
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if "epochs" in rows:
        e = rows["epochs"]
        print(
            f"{e['dataset']}: pre-training epoch {e['pretrain_epoch_seconds']:.1f} s, SASRec "
            f"epoch {e['sasrec_epoch_seconds']:.2f} s (median of {args.rounds}), "
            f"ratio {e['pretrain_vs_sasrec']:.1f}x; "
            f"items encoded {e['pretrain_items_encoded']:,} vs {e['sasrec_items_encoded']:,} "
            f"({e['pretrain_items_encoded'] / e['sasrec_items_encoded']:.0f}x); ms per 1,000 "
            f"items {e['pretrain_ms_per_1k_items']:.2f} vs {e['sasrec_ms_per_1k_items']:.2f}"
        )
    if "batches" in rows:
        row = rows["batches"]
        print(
            "  ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            )
        )


if __name__ == "__main__":
    try:
        main()
    except LossbenchError as error:  # bad input: one line, no traceback
        sys.exit(f"error: {error}")
