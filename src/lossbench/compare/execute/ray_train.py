"""One run over several Ray worker processes through Ray Train's torch trainer.

Under `compare --executor ray --workers-per-run N`, each run's Ray task starts a
`TorchTrainer` of N workers, each reserving `--cpus-per-run` CPUs (its torch threads) and
`--gpus-per-run` GPUs. Ray Train sets up the torch process group (gloo on CPU, NCCL on GPUs);
every worker then trains the same plan entry with `train_entry`, which finds the group and trains
data-parallel exactly as under torchrun (training/distributed.py): same shares of each batch,
same gradients, rank 0 writes the run folder. A grid of such runs fills a cluster.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from rich.console import Console

from lossbench.errors import LossbenchError

if TYPE_CHECKING:
    from lossbench.compare.execute.types import TrainFn
    from lossbench.training.entry import PlanEntry


def check_ray_train() -> None:
    """A missing Ray Train says so before anything is planned."""
    try:
        import ray.train.torch  # noqa: F401
    except ImportError:
        raise LossbenchError(
            "--workers-per-run needs Ray Train: pip install 'lossbench[ray]' (ray[train])"
        ) from None


def fit_data_parallel(
    entry: PlanEntry,
    dataset_ref: list[Any],  # [the dataset's object reference], unresolved
    cwd: str,
    cpus: int,
    gpus: float,
    workers: int,
    train: TrainFn | None,
) -> None:
    """Train `entry` on `workers` Ray Train workers; raises when one of them failed."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    per_worker = {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", entry.run_dir.name)
    with tempfile.TemporaryDirectory(prefix="lossbench-ray-train-") as storage:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "entry": entry,
                "dataset": dataset_ref,
                "cwd": cwd,
                "gpus": gpus,
                "train": train,
            },
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=bool(gpus), resources_per_worker=per_worker
            ),
            # Nothing is checkpointed through Ray Train: the run folder holds the checkpoints.
            run_config=RunConfig(
                storage_path=storage, name=name, failure_config=FailureConfig(max_failures=0)
            ),
        )
        result = trainer.fit()
    if result.error is not None:
        raise result.error


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: join Ray's process group and train the entry as its rank."""
    import ray

    from lossbench.training.distributed import join_process_group
    from lossbench.training.setup import run_device

    if os.path.isdir(config["cwd"]):
        os.chdir(config["cwd"])  # relative paths in the settings mean what they do on the driver
    entry: PlanEntry = config["entry"]
    group = join_process_group()
    dataset = ray.get(config["dataset"][0])
    device = entry.config.device if config["gpus"] else "cpu"
    entry = replace(entry, device=run_device(device, entry.config.precision))
    train = config["train"]
    if train is None:
        from lossbench.training.loop import train_entry

        train = train_entry
    train(entry, dataset, Console(quiet=True), group=group)
