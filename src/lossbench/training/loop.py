"""The training loop, readable top to bottom: set up, one epoch, evaluate, finish.

`train_entry(entry, dataset)` is one run as a plain function: a resolved plan entry and its
prepared dataset in, a finished run folder out. Executors (one process, or a pool) call it for
every entry of a plan. A run writes a checkpoint now and then (`checkpoint.py`) and, started
again on the same folder with the same settings, continues from it to the same result.

Observers (trackers, checks) see the run start, each epoch and its end; an epoch callback (a
tuning trial's pruner) sees each epoch and may stop the run by raising. A run that is not
tested (`evaluate_test=False`, a tuning trial) keeps no checkpoint: its trials are its unit.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor, nn

from lossbench.data.prepared import PreparedDataset
from lossbench.data.sequences import EvaluationSet, build_sequence_tensors
from lossbench.data.subsample import sample_users
from lossbench.errors import LossbenchError
from lossbench.evaluation.metrics import metrics_from_ranks
from lossbench.losses.softmax_backend import with_softmax_backend
from lossbench.models.base import mask_token_id
from lossbench.training.batches import TrainBatch, TrainBatcher
from lossbench.training.checkpoint import (
    TrainingState,
    checkpoint_due,
    read_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from lossbench.training.config import TrainConfig
from lossbench.training.cost import LossClock, cost_metrics
from lossbench.training.distributed import (
    SINGLE_PROCESS,
    ProcessGroup,
    positions_in,
    rank_share,
    sum_gradients,
    sum_over_ranks,
)
from lossbench.training.divergence import FiniteLossWatch
from lossbench.training.entry import PlanEntry, plan_entry
from lossbench.training.evaluate import EvaluationResult, Evaluator
from lossbench.training.fit_check import check_fits
from lossbench.training.memory import peak_memory_mb, reset_peak_memory
from lossbench.training.observers import RunObserver
from lossbench.training.popularity import is_collapsed, popularity_metrics
from lossbench.training.progress import TrainingProgress
from lossbench.training.run_files import (
    CHECKPOINT_FILE,
    RunFiles,
    describe_changes,
    run_record,
    setting_changes,
    source_changes,
)
from lossbench.training.run_lock import lock_holder, run_lock
from lossbench.training.setup import (
    bound_onednn_caches,
    make_adam,
    make_evaluator,
    precision_notice,
    seed_everything,
)
from lossbench.training.softmax_chunk import tuned_loss
from lossbench.training.step import TrainingStep, loss_item_counts, negative_sampler
from lossbench.training.threads import ThreadGovernor


@dataclass
class RunResult:
    run_dir: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


EpochCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class RunHooks:
    """Who watches a run and whether it is tested; none of it changes what the run computes."""

    observers: Sequence[RunObserver] = ()
    epoch_callback: EpochCallback | None = None  # gets each history row; raises to stop
    evaluate_test: bool = True  # False: validation only (a tuning trial), no checkpoint
    # This process's place in a data-parallel run; only rank 0 writes files and is observed.
    group: ProcessGroup = SINGLE_PROCESS


@dataclass(frozen=True)
class _Run:
    """What a run builds once, before its first epoch."""

    entry: PlanEntry
    model: nn.Module
    step: TrainingStep
    optimizer: torch.optim.Optimizer
    batcher: TrainBatcher
    valid: Evaluator
    test: Evaluator | None  # None: the run is not tested
    test_set: EvaluationSet
    item_counts: torch.Tensor  # (n_items + 1,) training counts: the popularity floor
    ks: list[int]
    generators: dict[str, torch.Generator]  # every generator a checkpoint must restore
    threads: ThreadGovernor  # CPU threads, following the free cores between steps
    record: dict[str, Any]  # config.json
    files: RunFiles
    console: Console
    hooks: RunHooks

    @property
    def config(self) -> TrainConfig:
        return self.entry.config

    @property
    def group(self) -> ProcessGroup:
        return self.hooks.group

    @property
    def writes(self) -> bool:
        """Does this process write the run folder (one process, or rank 0 of several)?"""
        return self.hooks.group.is_main

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.precision == "bf16":
            return torch.autocast(device_type=self.entry.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def train_run(
    config: TrainConfig,
    dataset: PreparedDataset,
    run_dir: Path,
    console: Console | None = None,
    *,
    epoch_callback: EpochCallback | None = None,
    evaluate_test: bool = True,
    observers: Sequence[RunObserver] = (),
) -> RunResult:
    """Resolve `config` into a plan entry for `run_dir`, check it fits, then train it
    (`train_entry`, which trains entries a plan has checked)."""
    entry = plan_entry(config, run_dir)
    check_fits(
        entry, sample_users(dataset, config.sample_users) if config.sample_users else dataset
    )
    hooks = RunHooks(observers, epoch_callback, evaluate_test)
    return train_entry(entry, dataset, console, hooks=hooks)


def train_entry(
    entry: PlanEntry,
    dataset: PreparedDataset,
    console: Console | None = None,
    *,
    hooks: RunHooks | None = None,
    observers: Sequence[RunObserver] = (),
    group: ProcessGroup = SINGLE_PROCESS,
) -> RunResult:
    """Train one (model, loss, seed), early-stopped on validation, then test once.

    `observers` and `group` are short for `hooks=RunHooks(observers, group=group)`. With
    `evaluate_test=False` the test
    split is never evaluated: the run returns validation metrics only, and its folder keeps
    `config.json` and `history.csv`, nothing a comparison would read as a finished run."""
    hooks = hooks or RunHooks(observers, group=group)
    if not hooks.group.is_main:  # other ranks train silently and write nothing
        hooks = RunHooks((), hooks.epoch_callback, hooks.evaluate_test, hooks.group)
        console = None
    if entry.config.sample_users is not None:
        dataset = sample_users(dataset, entry.config.sample_users)
    run = set_up(entry, dataset, console or Console(quiet=True), hooks)
    state = start_or_resume(run)
    config = entry.config
    reset_peak_memory(entry.device)
    clock_start = time.perf_counter() - state.elapsed_seconds  # time of earlier processes too
    last_checkpoint = time.perf_counter()
    with TrainingProgress(
        run.console, config.max_epochs, len(run.batcher), config.validation_metric, state.epoch
    ) as bar:
        while state.epoch < config.max_epochs:
            row = train_epoch(run, bar, state.epoch + 1)
            row |= validate(run)
            state.epoch += 1
            state.elapsed_seconds = time.perf_counter() - clock_start
            stop = end_epoch(run, state, row, bar)
            if stop or state.epoch == config.max_epochs:
                break
            since = time.perf_counter() - last_checkpoint
            due = checkpoint_due(state.epoch, config.checkpoint_every, entry.device, since)
            if due and hooks.evaluate_test and run.writes:
                write_checkpoint(run, state)
                last_checkpoint = time.perf_counter()
    return finish(run, state)


def train_alone(
    entry: PlanEntry,
    dataset: PreparedDataset,
    console: Console | None = None,
    observers: Sequence[RunObserver] = (),
    group: ProcessGroup = SINGLE_PROCESS,
) -> RunResult:
    """`train_entry` holding the run folder's lock: refused while another process trains it.
    In a data-parallel run rank 0 holds the lock for all ranks."""
    if not group.is_main:
        return train_entry(entry, dataset, console, hooks=RunHooks(observers, group=group))
    with run_lock(entry.run_dir, wait=False) as held:
        if not held:
            raise LossbenchError(
                f"{entry.run_dir} is being trained by process {lock_holder(entry.run_dir) or '?'}"
                "; wait for it, or give another --out"
            )
        return train_entry(entry, dataset, console, hooks=RunHooks(observers, group=group))


def set_up(entry: PlanEntry, dataset: PreparedDataset, console: Console, hooks: RunHooks) -> _Run:
    """Build the run's model, batches, evaluators, optimizer and sampler (the plan that made
    `entry` checked that it fits: `check_fits`, once per run)."""
    config, device = entry.config, entry.device
    check_split(config, dataset)
    threads = ThreadGovernor(config.threads)  # from --threads, else the free cores
    seed_everything(config.seed)
    model = entry.build_model(dataset.n_items).to(device, dtype=parameter_dtype(config))
    if entry.model.pretrainable and config.init is None:
        console.print(f"[yellow]{config.model} without --init starts from random weights[/]")
    bound_onednn_caches(config.precision, device)
    if notice := precision_notice(config.precision, device):
        console.print(f"[yellow]{notice}[/]", highlight=False)
    console.print(
        f"up to {config.max_epochs} epochs, stopping after {config.patience} without a better "
        f"validation {config.validation_metric}",
        highlight=False,
    )
    sequences = build_sequence_tensors(dataset, max_len=entry.max_len)
    batcher = TrainBatcher(
        sequences,
        batch_size=config.batch_size,
        positions=entry.loss.positions,
        batching=config.batching,
        seed=config.seed,
        mask_prob=config.mask_prob,
        mask_token=mask_token_id(dataset.n_items) if entry.model.uses_mask_token else None,
        shuffle_train=config.shuffle_train,
    )
    sampler = negative_sampler(entry, dataset.n_items, sequences, batcher)
    # Each rank its own stream of negatives, derived from the run seed (rank 0's is the
    # single-process stream).
    negatives_seed = config.seed + 7919 + 1_000_003 * hooks.group.rank
    generator = torch.Generator(device=device).manual_seed(negatives_seed)
    step_model = torch.compile(model) if config.compile else model
    loss = tuned_loss(entry.loss, device)  # a full softmax on CPU: the chunk measured fastest
    loss = dataclasses.replace(loss, spec=with_softmax_backend(loss.spec, device))
    threads.start()  # before the record, which names the threads the run trains with
    return _Run(
        entry=entry,
        model=model,
        step=TrainingStep(
            model,
            entry.model,
            loss,
            sampler,
            generator,
            step_model,
            LossClock(device),
            loss_item_counts(entry, sequences),
        ),
        optimizer=make_adam(
            model, device, config.lr, (config.beta1, config.beta2), config.weight_decay
        ),
        batcher=batcher,
        valid=make_evaluator(config, sequences.valid, sequences.item_counts, device, salt=1),
        test=make_evaluator(config, sequences.test, sequences.item_counts, device, salt=2)
        if hooks.evaluate_test
        else None,
        test_set=sequences.test,
        item_counts=sequences.item_counts,
        ks=sorted({*config.ks, *_metric_k(config.validation_metric)}),
        generators={"batches": batcher.generator, "negatives": generator},
        threads=threads,
        record=run_record(entry, dataset, sequences, loss, hooks.group),
        files=RunFiles(entry.run_dir, dataset.original_ids),
        console=console,
        hooks=hooks,
    )


def start_or_resume(run: _Run) -> TrainingState:
    """Continue from the run folder's checkpoint when it has the same settings, else start."""
    path = run.entry.run_dir / CHECKPOINT_FILE
    checkpoint = read_checkpoint(path) if run.hooks.evaluate_test else None
    if checkpoint is not None:
        changes = setting_changes(checkpoint["config"], run.record["config"])
        changes += source_changes(checkpoint.get("sources"), run.entry)
        if not changes:
            state = restore_checkpoint(checkpoint, run.model, run.optimizer, run.generators)
            run.console.print(f"resuming {run.entry.run_dir} after epoch {state.epoch}")
            _start(run, state)
            return state
        run.console.print(
            f"[yellow]{path} has other settings ({describe_changes(changes)}): "
            "training from the first epoch[/]"
        )
        if run.writes:
            path.unlink(missing_ok=True)
    state = TrainingState(best_state=copy.deepcopy(run.model.state_dict()))
    _start(run, state)
    return state


def _start(run: _Run, state: TrainingState) -> None:
    """Write the run folder's first files; observers see the start and any resumed epochs."""
    if not run.writes:
        return
    run.files.start(run.record, state.history)
    for observer in run.hooks.observers:
        observer.on_start(run.entry.run_dir, run.record)
        for row in state.history:
            observer.on_epoch(row)


def train_epoch(run: _Run, bar: TrainingProgress, epoch: int) -> dict[str, float]:
    """One pass over the training users; the epoch's mean loss and seconds. A non-finite
    step loss stops the run (`DivergedRun`, naming the step), without a wait per step."""
    started = time.perf_counter()
    device = run.entry.device
    run.model.train()
    loss_sum = torch.zeros((), device=device)
    # Ranks read the flag only at the epoch's end, together: one stopping alone mid-epoch
    # would leave the others waiting in the next step's all-reduce.
    group = run.group
    watch = FiniteLossWatch(device, epoch, len(run.batcher), run.config.lr, not group.distributed)
    tokens = 0  # history items fed to the model (padding excluded), counted on the CPU
    clock = run.step.clock
    for parts in run.batcher.epoch():
        tokens += sum(int(torch.count_nonzero(part.inputs)) for part in parts)
        run.optimizer.zero_grad(set_to_none=True)
        if group.distributed:
            step_loss = distributed_backward(run, parts)
        else:
            with run.autocast():
                step_loss = run.step([part.to(device) for part in parts])
            if clock is not None:
                clock.backward_starts()
            step_loss.backward()
            step_loss = step_loss.detach()
        loss_sum += step_loss
        watch.add(step_loss)
        run.optimizer.step()
        run.threads.tick()
        bar.advance_batch()
    agree_on_divergence(watch, group, device)
    watch.check()
    loss_sum = sum_over_ranks(loss_sum, group, device)
    epoch_loss = float(loss_sum) / len(run.batcher)  # the epoch's sync, beside the check
    return {
        "loss": epoch_loss,
        "train_seconds": time.perf_counter() - started,
        "loss_seconds": clock.take() if clock is not None else float("nan"),
        "tokens": float(tokens),
    }


def distributed_backward(run: _Run, parts: list[TrainBatch]) -> Tensor:
    """This rank's share of one step: its rows' loss, weighted by its share of the global
    batch's positions, backward, gradients summed over ranks. Returns its weighted loss."""
    device = run.entry.device
    mine = rank_share(parts, run.group)
    weighted = torch.zeros((), device=device)
    if mine:
        with run.autocast():
            step_loss = run.step([part.to(device) for part in mine])
        weighted = step_loss * (positions_in(mine) / positions_in(parts))
        if run.step.clock is not None:
            run.step.clock.backward_starts()
        weighted.backward()
    sum_gradients(run.model, run.group)
    return weighted.detach()


def agree_on_divergence(watch: FiniteLossWatch, group: ProcessGroup, device: torch.device) -> None:
    """Every rank takes the earliest first bad step of any rank (and its loss), so that all
    stop together, with the same message."""
    if not group.distributed:
        return
    steps = torch.zeros(group.world_size, dtype=torch.int64, device=device)  # (ranks,)
    losses = torch.zeros(group.world_size, device=device)
    steps[group.rank], losses[group.rank] = watch.first_bad_step, watch.first_bad_loss
    steps = sum_over_ranks(steps, group, device)
    losses = sum_over_ranks(losses, group, device)
    ranked = torch.where(steps > 0, steps, torch.iinfo(torch.int64).max)
    first = ranked.argmin()
    watch.first_bad_step, watch.first_bad_loss = steps[first], losses[first]


def validate(run: _Run) -> dict[str, float]:
    """Validation metrics (`valid_*`) of the current weights, and their seconds."""
    started = time.perf_counter()
    with run.autocast():
        ranks = run.valid.evaluate(run.model, shard=_shard(run)).ranks
    ranks = sum_over_ranks(ranks, run.group, run.entry.device)
    metrics = metrics_from_ranks(ranks, run.ks)
    return {
        "eval_seconds": time.perf_counter() - started,
        **{f"valid_{name}": value for name, value in metrics.items()},
    }


def end_epoch(
    run: _Run, state: TrainingState, row: dict[str, float], bar: TrainingProgress
) -> bool:
    """Record the epoch, keep the best weights; True when training stops here."""
    config = run.config
    value = row[f"valid_{config.validation_metric}"]
    if value > state.best_value:
        state.best_value, state.best_epoch = value, state.epoch
        state.best_state = copy.deepcopy(run.model.state_dict())
    state.history.append(
        {
            "epoch": state.epoch,
            "loss": row["loss"],
            "train_seconds": row["train_seconds"],
            "eval_seconds": row["eval_seconds"],
            "loss_seconds": row["loss_seconds"],
            "tokens": row["tokens"],
            "elapsed_seconds": state.elapsed_seconds,
            "peak_memory_mb": peak_memory_mb(run.entry.device),
            "threads": torch.get_num_threads(),
            **{k: v for k, v in row.items() if k.startswith("valid_")},
        }
    )
    if run.writes:
        run.files.append_history(state.history[-1])
    for observer in run.hooks.observers:
        observer.on_epoch(state.history[-1])
    bar.end_epoch(state.epoch, row["loss"], value, state.best_value)
    if run.hooks.epoch_callback is not None:
        run.hooks.epoch_callback(state.history[-1])
    if state.epoch - state.best_epoch >= config.patience:
        return True
    if config.time_limit is not None and state.elapsed_seconds > config.time_limit:
        run.console.print(
            f"time limit of {config.time_limit:g} s reached after epoch {state.epoch}"
        )
        return True
    return False


def write_checkpoint(run: _Run, state: TrainingState) -> None:
    save_checkpoint(
        run.entry.run_dir / CHECKPOINT_FILE,
        run.record,
        state,
        run.model,
        run.optimizer,
        run.generators,
    )


def finish(run: _Run, state: TrainingState) -> RunResult:
    """Restore the best weights, test once, write the run's files (metrics.json last)."""
    config, history = run.config, state.history
    run.model.load_state_dict(state.best_state)
    test_result = None
    if run.test is not None:
        with run.autocast():
            test_result = run.test.evaluate(run.model, topk=config.save_topk, shard=_shard(run))
        test_result = gather_result(test_result, run)
    valid_best = {
        k.removeprefix("valid_"): v
        for k, v in history[state.best_epoch - 1].items()
        if k.startswith("valid_")
    }
    tested = {} if test_result is None else {"test": metrics_from_ranks(test_result.ranks, run.ks)}
    metrics = {
        "valid": valid_best,
        **tested,
        "best_epoch": state.best_epoch,
        "epochs": len(history),
        **cost_metrics(history),  # seconds per epoch, tokens per second, the loss's share
        "eval_seconds_per_epoch": sum(h["eval_seconds"] for h in history) / len(history),
        "peak_memory_mb": peak_memory_mb(run.entry.device),
        "loss_backend": run.record["environment"]["loss_backend"],
        "validation_metric": config.validation_metric,
        "seen_targets": config.seen_rule,  # miss, rank, or keep (--keep-seen)
        "loss": config.loss_name,
        "model": config.model,
        "dataset": run.record["dataset"]["name"],
        "split": config.split_spec.label,
        "seed": config.seed,
    }
    if test_result is None or not run.writes:
        return RunResult(run.entry.run_dir, run.record, metrics, history)
    metrics |= popularity_floor(run, valid_best, [h["loss"] for h in history])
    test_set = run.test_set
    run.files.finish(
        run.model.state_dict(), test_result, test_set.rows(), test_set.targets, metrics
    )
    for observer in run.hooks.observers:
        observer.on_finish(metrics)
    return RunResult(run.entry.run_dir, run.record, metrics, history)


def popularity_floor(
    run: _Run, valid_best: dict[str, float], losses: list[float]
) -> dict[str, Any]:
    """The popularity ranking's metrics on the run's own validation and test users, and
    whether the run collapsed (no better than it on validation, or a non-finite loss)."""
    assert run.test is not None
    evaluators = {"valid": run.valid, "test": run.test}
    popularity = popularity_metrics(run.item_counts, run.entry.device, evaluators, run.ks)
    metric = run.config.validation_metric
    return {
        "popularity": popularity,
        "collapsed": is_collapsed(valid_best, popularity["valid"], metric, losses),
    }


def _shard(run: _Run) -> tuple[int, int]:
    return (run.group.rank, run.group.world_size)


def gather_result(result: EvaluationResult, run: _Run) -> EvaluationResult:
    """Every rank's share of a sharded evaluation, summed into the whole result."""
    if not run.group.distributed:
        return result
    device = run.entry.device
    topk = None if result.topk is None else sum_over_ranks(result.topk, run.group, device)
    return EvaluationResult(sum_over_ranks(result.ranks, run.group, device), topk)


def parameter_dtype(config: TrainConfig) -> torch.dtype:
    """fp64 trains in float64 throughout (exactness checks); fp32 and bf16 keep fp32 weights."""
    return torch.float64 if config.precision == "fp64" else torch.float32


def check_split(config: TrainConfig, dataset: PreparedDataset) -> None:
    """The prepared data must be split the way the config says (it is what the run records)."""
    prepared = dataset.meta.get("split")
    if prepared is not None and prepared != config.split_spec.identity():
        raise LossbenchError(
            f"dataset {dataset.name} was prepared with split {prepared}, but the run asks for "
            f"{config.split_spec.identity()}; load the matching prepared data"
        )


def _metric_k(name: str) -> list[int]:
    _, _, k = name.partition("@")
    return [int(k)] if k else []
