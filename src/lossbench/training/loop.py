"""The training loop, readable top to bottom: build, train with early stopping, test, save."""

from __future__ import annotations

import contextlib
import copy
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lossbench import __version__
from lossbench.data.batches import TrainBatch, TrainBatcher
from lossbench.data.prepared import PreparedDataset
from lossbench.data.sequences import build_sequence_tensors
from lossbench.data.subsample import sample_users
from lossbench.errors import LossbenchError
from lossbench.evaluation.metrics import metrics_from_ranks
from lossbench.evaluation.ranking import sample_eval_candidates
from lossbench.losses.base import LossInputs
from lossbench.losses.negatives import UnseenSampler
from lossbench.losses.samplers import NegativeSampler, build_sampler
from lossbench.models.base import scoring_table
from lossbench.training.config import TrainConfig
from lossbench.training.evaluate import Evaluator
from lossbench.training.memory import peak_memory_mb, reset_peak_memory
from lossbench.training.observers import RunObserver
from lossbench.training.progress import TrainingProgress
from lossbench.training.run_files import RunFiles
from lossbench.training.setup import (
    LossSettings,
    code_sources,
    make_adam,
    make_model,
    resolve_loss,
    run_device,
    seed_everything,
)
from lossbench.training.softmax_chunk import tuned_loss
from lossbench.training.threads import ThreadGovernor


@dataclass
class RunResult:
    run_dir: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


EpochCallback = Callable[[dict[str, Any]], None]


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
    """Train one (model, loss, seed), early-stopped on validation, then test once.

    `epoch_callback` gets each epoch's history row (after it is written) and stops the run by
    raising (a tuning trial's pruner). With `evaluate_test=False` (a tuning trial) the test
    split is never evaluated: the run returns validation metrics only, and its folder keeps
    `config.json` and `history.csv`, nothing a comparison would read as a finished run.
    `observers` (experiment trackers, checks) see the run start, each epoch and, once it is
    tested, its end.
    """
    console = console or Console(quiet=True)
    if config.sample_users is not None:
        dataset = sample_users(dataset, config.sample_users)
    loss = resolve_loss(config)
    check_split(config, dataset)
    device = run_device(config.device, config.precision)
    threads = ThreadGovernor(config.threads)  # from --threads, else the free cores
    seed_everything(config.seed)
    model, model_settings = make_model(config, dataset.n_items)
    model.to(device)
    if config.model == "s3rec" and config.init is None:
        console.print("[yellow]s3rec without --init has no pre-training: it trains as SASRec[/]")

    sequences = build_sequence_tensors(dataset, max_len=model_settings["max_len"])
    batcher = TrainBatcher(
        sequences,
        batch_size=config.batch_size,
        positions=loss.positions,
        batching=config.batching,
        seed=config.seed,
        mask_prob=config.mask_prob,
        mask_token=getattr(model, "mask_token", None),
        shuffle_train=config.shuffle_train,
    )
    valid = Evaluator(
        sequences.valid,
        config.eval_batch_size,
        config.exclude_seen,
        device,
        _candidates(config, sequences.valid, sequences.item_counts, 1),
        config.seen_targets,
    )
    test = None
    if evaluate_test:
        test = Evaluator(
            sequences.test,
            config.eval_batch_size,
            config.exclude_seen,
            device,
            _candidates(config, sequences.test, sequences.item_counts, 2),
            config.seen_targets,
        )
    ks = sorted({*config.ks, *_metric_k(config.validation_metric)})

    step_model = torch.compile(model) if config.compile else model
    optimizer = make_adam(
        model, device, config.lr, (config.beta1, config.beta2), config.weight_decay
    )
    negative_generator = torch.Generator(device=device).manual_seed(config.seed + 7919)
    sampler = None
    if loss.negatives > 0:
        unseen = None
        if config.negatives_unseen:
            unseen = UnseenSampler(
                sequences.train_offsets, sequences.train_items, dataset.n_items, device
            )
            unseen.check(batcher.users.to(device))
        sampler = build_sampler(
            config.sampler,
            loss.negatives,
            sequences.item_counts,
            batcher.target_counts(dataset.n_items),
            device,
            logq=config.logq,
            unseen=unseen,
        )
    autocast = _autocast(config.precision, device)
    threads.start()
    loss = tuned_loss(loss, device)  # a full softmax on CPU: the chunk measured fastest here

    record = {
        "config": config.model_dump(mode="json"),
        "model_settings": model_settings,
        "loss_settings": loss.record(),
        "sources": code_sources(config),
        "dataset": {
            "name": dataset.name,
            "n_users": dataset.n_users,
            "n_items": dataset.n_items,
            "split": config.split_spec.identity(),
            "valid_users": len(sequences.valid.targets),
            "test_users": len(sequences.test.targets),
        },
        "environment": {
            "device": str(device),
            "torch": torch.__version__,
            "lossbench": __version__,
            "threads": torch.get_num_threads(),
            "precision": config.precision,
        },
    }
    files = RunFiles(run_dir)
    files.start(record)
    for observer in observers:
        observer.on_start(run_dir, record)

    history: list[dict[str, Any]] = []
    best_value, best_epoch, best_state = float("-inf"), 0, copy.deepcopy(model.state_dict())
    reset_peak_memory(device)
    started = time.perf_counter()
    with TrainingProgress(
        console, config.max_epochs, len(batcher), config.validation_metric
    ) as bar:
        for epoch in range(1, config.max_epochs + 1):
            epoch_started = time.perf_counter()
            model.train()
            loss_sum = torch.zeros((), device=device)
            for parts in batcher.epoch():
                with autocast:
                    step_loss = _batch_loss(
                        step_model,
                        model,
                        [part.to(device) for part in parts],
                        loss,
                        negative_generator,
                        sampler,
                    )
                optimizer.zero_grad(set_to_none=True)
                step_loss.backward()
                optimizer.step()
                loss_sum += step_loss.detach()
                threads.tick()
                bar.advance_batch()
            epoch_loss = float(loss_sum) / len(batcher)  # the one sync of the epoch
            train_seconds = time.perf_counter() - epoch_started

            eval_started = time.perf_counter()
            with autocast:
                valid_ranks = valid.evaluate(model).ranks
            valid_metrics = metrics_from_ranks(valid_ranks, ks)
            eval_seconds = time.perf_counter() - eval_started
            value = valid_metrics[config.validation_metric]
            improved = value > best_value
            if improved:
                best_value, best_epoch = value, epoch
                best_state = copy.deepcopy(model.state_dict())
            history.append(
                {
                    "epoch": epoch,
                    "loss": epoch_loss,
                    "train_seconds": train_seconds,
                    "eval_seconds": eval_seconds,
                    "elapsed_seconds": time.perf_counter() - started,
                    "peak_memory_mb": peak_memory_mb(device),
                    "threads": torch.get_num_threads(),
                    **{f"valid_{k}": v for k, v in valid_metrics.items()},
                }
            )
            files.append_history(history[-1])
            for observer in observers:
                observer.on_epoch(history[-1])
            bar.end_epoch(epoch, epoch_loss, value, best_value)
            if epoch_callback is not None:
                epoch_callback(history[-1])
            if epoch - best_epoch >= config.patience:
                break
            if config.time_limit is not None and time.perf_counter() - started > config.time_limit:
                console.print(f"time limit of {config.time_limit:g} s reached after epoch {epoch}")
                break

    model.load_state_dict(best_state)
    test_result = None
    if test is not None:
        with autocast:
            test_result = test.evaluate(model, topk=config.save_topk)
    valid_best = {
        k.removeprefix("valid_"): v
        for k, v in history[best_epoch - 1].items()
        if k.startswith("valid_")
    }
    tested = {} if test_result is None else {"test": metrics_from_ranks(test_result.ranks, ks)}
    metrics = {
        "valid": valid_best,
        **tested,
        "best_epoch": best_epoch,
        "epochs": len(history),
        "train_seconds": sum(h["train_seconds"] for h in history),
        "train_seconds_per_epoch": sum(h["train_seconds"] for h in history) / len(history),
        "eval_seconds_per_epoch": sum(h["eval_seconds"] for h in history) / len(history),
        "peak_memory_mb": peak_memory_mb(device),
        "validation_metric": config.validation_metric,
        "seen_targets": config.seen_rule,  # miss, rank, or keep (--keep-seen)
        "loss": loss.name,
        "model": config.model,
        "dataset": dataset.name,
        "split": config.split_spec.label,
        "seed": config.seed,
    }
    if test_result is None:
        return RunResult(run_dir, record, metrics, history)
    test_set = sequences.test
    files.finish(model.state_dict(), test_result, test_set.rows(), test_set.targets, metrics)
    for observer in observers:
        observer.on_finish(metrics)
    return RunResult(run_dir, record, metrics, history)


def _batch_loss(
    step_model: Callable[..., torch.Tensor],
    model: torch.nn.Module,
    parts: list[TrainBatch],
    loss: LossSettings,
    generator: torch.Generator,
    sampler: NegativeSampler | None,
) -> torch.Tensor:
    """The loss of one training step over the training positions of all its parts (the model
    runs once per part; the loss once, so its mean is over the whole batch)."""
    forward_parts = getattr(model, "forward_parts", None)  # transformers: all parts at once
    if loss.positions != "last" and step_model is model and forward_parts is not None:
        hidden_parts = forward_parts([part.inputs for part in parts])
        states = [
            hidden.reshape(-1, hidden.shape[-1]).index_select(0, part.positions)
            for hidden, part in zip(hidden_parts, parts, strict=True)
        ]
    else:
        states = [_part_states(step_model, model, part, loss) for part in parts]
    at_positions = states[0] if len(states) == 1 else torch.cat(states)  # (N, D)
    targets = parts[0].targets if len(parts) == 1 else torch.cat([p.targets for p in parts])
    negatives, log_q = None, None
    if sampler is not None:
        users = None
        if sampler.needs_users:
            users = torch.cat([part.position_users() for part in parts])  # (N,)
        negatives, log_q = sampler.sample(targets, users, generator), sampler.log_q
    table = scoring_table(model)  # type: ignore[arg-type]
    return loss.spec.fn(LossInputs(at_positions, targets, table, negatives, log_q), loss.params)


def check_split(config: TrainConfig, dataset: PreparedDataset) -> None:
    """The prepared data must be split the way the config says (it is what the run records)."""
    prepared = dataset.meta.get("split")
    if prepared is not None and prepared != config.split_spec.identity():
        raise LossbenchError(
            f"dataset {dataset.name} was prepared with split {prepared}, but the run asks for "
            f"{config.split_spec.identity()}; load the matching prepared data"
        )


def _part_states(
    step_model: Callable[..., torch.Tensor],
    model: torch.nn.Module,
    part: TrainBatch,
    loss: LossSettings,
) -> torch.Tensor:
    """(N_part, D) hidden states at the part's training positions."""
    if loss.positions == "last" and _has_last_only(model):
        # Only the last column is trained: skip the other queries of the final block.
        return step_model(part.inputs, last_only=True)[:, -1]  # (B, D)
    hidden = step_model(part.inputs)  # (B, W, D)
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, part.positions)


def _has_last_only(model: torch.nn.Module) -> bool:
    return "last_only" in inspect.signature(model.forward).parameters


def _candidates(
    config: TrainConfig, evaluation_set: Any, item_counts: torch.Tensor, salt: int
) -> torch.Tensor | None:
    """Sampled-ranking negatives, fixed per seed (None for full ranking)."""
    if config.eval_negatives == 0:
        return None
    return sample_eval_candidates(
        config.eval_negatives,
        len(item_counts) - 1,
        evaluation_set.seen_offsets,
        evaluation_set.seen_items,
        evaluation_set.targets,
        by=config.eval_sampler,
        item_counts=item_counts,
        seed=config.seed * 1000 + salt,
    )


def _metric_k(name: str) -> list[int]:
    _, _, k = name.partition("@")
    return [int(k)] if k else []


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
