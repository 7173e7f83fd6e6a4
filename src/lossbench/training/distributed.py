"""One run over several processes: the process group, each rank's share of a batch, the
gradient all-reduce and sharded evaluation.

Started by `torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT),
or by Ray Train's torch trainer (which sets up the process group itself), a run trains data
parallel: every rank builds the same global batch from the same seeded generator and keeps
every `world_size`-th row of it, so the global batch equals the single-process batch. Each rank
weights its loss by its share of the global batch's training positions before `backward`, and
the gradients are summed over ranks in one coalesced all-reduce, so N processes compute the
gradient one process would (losses that are means over positions; in-batch negatives are the
rank's own batch). Evaluation batches are dealt out to the ranks and their ranks summed back, so
every rank sees the same metrics and stops at the same epoch. Only rank 0 writes files.

The all-reduce is what `DistributedDataParallel` does after backward; it is called directly
because the packed-parts encoders run through methods other than `forward`, which DDP's
reducer does not see.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lossbench.errors import LossbenchError, PeerLost
from lossbench.training.batches import TrainBatch

# Seconds a collective waits for the other ranks before it fails: a rank that died stops the
# others within about this long (torchrun also stops them as soon as it sees the exit).
DEFAULT_TIMEOUT_SECONDS = 60.0
TIMEOUT_VARIABLE = "LOSSBENCH_DIST_TIMEOUT"


@dataclass(frozen=True)
class ProcessGroup:
    """Where this process stands in its run: rank 0 of 1 when it trains alone."""

    rank: int = 0
    world_size: int = 1
    backend: str = "none"  # gloo (CPU), nccl (CUDA), none (one process)
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend}


SINGLE_PROCESS = ProcessGroup()


def launched_distributed() -> bool:
    """Was this process started as one of several (torchrun's environment)?"""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join_process_group(device_name: str = "auto") -> ProcessGroup:
    """Join the group torchrun describes in the environment (gloo on CPU, NCCL on CUDA), or the
    one already initialized (Ray Train); one process alone when neither is there."""
    if dist.is_available() and dist.is_initialized():
        return _current_group()
    if not launched_distributed():
        return SINGLE_PROCESS
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    address = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds()))
    except (RuntimeError, ValueError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise LossbenchError(
            f"could not join the process group at {address} ({first_line}); check that every "
            "rank got the same --master-addr/--master-port and that the address is reachable"
        ) from None
    return _current_group()


def _current_group() -> ProcessGroup:
    return ProcessGroup(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        backend=str(dist.get_backend()),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def timeout_seconds() -> float:
    return float(os.environ.get(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT_SECONDS))


def leave_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: torch.device, group: ProcessGroup) -> torch.device:
    """Each rank's own GPU (LOCAL_RANK) under CUDA; the CPU stays the CPU."""
    if device.type == "cuda" and group.distributed:
        return torch.device("cuda", group.local_rank)
    return device


def check_same_settings(settings: dict[str, Any], group: ProcessGroup) -> None:
    """Every rank must train the same run: compare a hash of the settings across ranks."""
    if not group.distributed:
        return
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    digests: list[str | None] = [None] * group.world_size
    with collective(group):
        dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        differing = [rank for rank, other in enumerate(digests) if other != digests[0]]
        raise LossbenchError(
            f"the ranks were started with different settings (ranks {differing} differ from "
            "rank 0); start every rank with the same command and files"
        )


def peer_failure(error: Exception, group: ProcessGroup) -> str:
    """One line for a collective that failed because another rank died or hung."""
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return (
        f"rank {group.rank} of {group.world_size} lost its peers ({first_line[:160]}); run the "
        "same command again to resume from the last checkpoint"
    )


@contextlib.contextmanager
def collective(group: ProcessGroup) -> Iterator[None]:
    """A collective whose peer died (gloo: connection closed) or hung (timeout) raises
    `PeerLost` with one line, rather than failing the run."""
    try:
        yield
    except RuntimeError as error:  # DistError and gloo's transport errors alike
        raise PeerLost(peer_failure(error, group)) from None


def barrier(group: ProcessGroup) -> None:
    if group.distributed:
        with collective(group):
            dist.barrier()


def positions_in(parts: list[TrainBatch]) -> int:
    return sum(int(part.targets.numel()) for part in parts)


def rank_share(parts: list[TrainBatch], group: ProcessGroup) -> list[TrainBatch]:
    """This rank's rows of a global batch: row i of the batch (over all its parts, in order)
    goes to rank i mod world_size. Parts left without rows are dropped."""
    if not group.distributed:
        return parts
    share: list[TrainBatch] = []
    first_row = 0
    for part in parts:
        rows = torch.arange(part.inputs.shape[0])
        mine = rows[(rows + first_row) % group.world_size == group.rank]  # (B_r,)
        first_row += part.inputs.shape[0]
        if len(mine) > 0:
            share.append(_part_rows(part, mine))
    return share


def _part_rows(part: TrainBatch, rows: Tensor) -> TrainBatch:
    """The part restricted to `rows`, its flat positions renumbered for the smaller batch."""
    width = part.inputs.shape[1]
    position_rows = torch.div(part.positions, width, rounding_mode="floor")  # (N,)
    new_row = torch.full((part.inputs.shape[0],), -1, dtype=torch.int64)
    new_row[rows] = torch.arange(len(rows))
    keep = new_row[position_rows] >= 0  # (N,) positions in this rank's rows
    positions = new_row[position_rows[keep]] * width + part.positions[keep] % width
    return TrainBatch(part.inputs[rows], part.targets[keep], positions, part.users[rows])


def sum_gradients(model: nn.Module, group: ProcessGroup) -> None:
    """Sum every parameter's gradient over the ranks in one coalesced all-reduce (a parameter
    without a gradient on this rank adds zeros)."""
    if not group.distributed:
        return
    parameters = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])  # (P,)
    with collective(group):
        dist.all_reduce(flat)
    offset = 0
    for parameter in parameters:
        size = parameter.numel()
        parameter.grad = flat[offset : offset + size].view_as(parameter).clone()
        offset += size


def sum_over_ranks(values: Tensor, group: ProcessGroup, device: torch.device) -> Tensor:
    """Each rank filled its own entries and left the others 0: every rank gets them all."""
    if not group.distributed:
        return values
    on_device = values.to(device)
    with collective(group):
        dist.all_reduce(on_device)
    return on_device.to(values.device)
