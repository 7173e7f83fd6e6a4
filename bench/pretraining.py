"""Speed of S3Rec pre-training (`lossbench pretrain --model s3rec`), packed against padded.

    python bench/pretraining.py                   # lastfm, 40 timed batches after 3 warm-up
    python bench/pretraining.py --json            # the same numbers as JSON

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
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lossbench.data.prepared import ensure_prepared
from lossbench.errors import LossbenchError
from lossbench.models.s3rec import PretrainObjectives, S3Rec, S3RecConfig, S3RecPretrainer
from lossbench.models.transformer import TransformerEncoder
from lossbench.paths import default_data_dir
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

    for sample_ids in order[:3]:  # warm-up: allocator, kernels
        step(sample_ids)
    seconds = {True: 0.0, False: 0.0}  # packed -> total seconds
    timed = order[3 : 3 + batches]
    for index, sample_ids in enumerate(timed):
        for packed in (True, False) if index % 2 else (False, True):
            TransformerEncoder.pack_padding = packed
            start = time.perf_counter()
            step(sample_ids)
            seconds[packed] += time.perf_counter() - start
    TransformerEncoder.pack_padding = True
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--dataset", default="lastfm")
    parser.add_argument("--batches", type=int, default=40, help="timed batches (each mode)")
    parser.add_argument("--batch-size", type=int, default=100, help="as `lossbench pretrain`")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a line")
    args = parser.parse_args()
    row = bench_pretraining(args.dataset, args.data_dir, args.batches, args.batch_size)
    if args.json:
        json.dump(row, sys.stdout, indent=2)
        print()
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    try:
        main()
    except LossbenchError as error:  # bad input: one line, no traceback
        sys.exit(f"error: {error}")
