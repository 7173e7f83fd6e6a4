"""`train`: one run, request -> plan -> validate -> prepare -> execute -> report, alone or as
one rank of a data-parallel run under torchrun (rank 0 prepares, settles and speaks)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from rich.console import Console

from lossbench.api.plan import TrainPlan, resolve
from lossbench.api.requests import TrainRequest
from lossbench.api.results import TrainResult
from lossbench.compare.execute.resume import run_status, settle_runs
from lossbench.data.prepared import PreparedDataset
from lossbench.data.store import ensure_prepared, prepare_on_first_use
from lossbench.errors import LossbenchError
from lossbench.training.distributed import (
    ProcessGroup,
    barrier,
    check_same_settings,
    join_process_group,
    leave_process_group,
)
from lossbench.training.entry import PlanEntry
from lossbench.training.loop import RunResult
from lossbench.training.observers import RunObserver
from lossbench.training.run_files import is_finished, read_metrics

Announce = Callable[[str], None]


class RunFailed(LossbenchError):
    """The run raised while training; its traceback is in the run's failure.txt."""


def train(request: TrainRequest, console: Console, announce: Announce) -> TrainResult | None:
    """Train the request's run, early-stopped on validation, and test it once; a finished
    run with the same settings is reused, one with other settings refused (or, with
    `retrain_changed`, moved aside). None on a rank other than 0 of a data-parallel run."""
    plan = resolve(request)
    config = plan.config
    group = join_process_group(config.device)  # one process, or a rank under torchrun
    check_same_settings(config.model_dump(mode="json"), group)
    prepared = _prepare(plan, group, announce)
    display = console if group.is_main else Console(quiet=True)
    try:
        to_train = _settle(plan.entry, prepared, display, request.retrain_changed, group)
        if to_train:
            _announce_run(plan, prepared, display)
            _train_or_fail(plan.entry, prepared, display, request.track, group)
    finally:
        leave_process_group()
    if not group.is_main:
        return None
    return TrainResult(plan.entry.run_dir, read_metrics(plan.entry.run_dir), to_train)


def _prepare(plan: TrainPlan, group: ProcessGroup, announce: Announce) -> PreparedDataset:
    """Rank 0 prepares the data; the others then read what it wrote. A user sample is the
    same on every rank."""
    from lossbench.data.subsample import sample_users

    config, data_dir = plan.config, plan.request.data_dir
    if group.is_main:
        prepare_on_first_use(data_dir, config.dataset, config.split_spec, announce)
        prepared = ensure_prepared(data_dir, config.dataset, config.split_spec)
    barrier(group)
    if not group.is_main:
        prepared = ensure_prepared(data_dir, config.dataset, config.split_spec)
    if config.sample_users is not None:
        prepared = sample_users(prepared, config.sample_users)
    return prepared


def _settle(
    entry: PlanEntry,
    prepared: PreparedDataset,
    display: Console,
    retrain_changed: bool,
    group: ProcessGroup,
) -> bool:
    """compare's rules on the run folder (rank 0, for all ranks): reuse a finished run,
    refuse (or move aside) one with other settings, check the run fits; whether to train."""
    from lossbench.training.fit_check import check_fits

    def fits(entries: list[PlanEntry]) -> None:
        for each in entries:
            check_fits(each, prepared)

    if group.is_main:
        to_train = bool(settle_runs([entry], entry.run_dir, display, retrain_changed, fits))
    barrier(group)  # the others follow what rank 0 found (and moved aside)
    if not group.is_main:
        to_train = run_status(entry).state != "finished"
    return to_train


def _announce_run(plan: TrainPlan, prepared: PreparedDataset, display: Console) -> None:
    from lossbench.data.repeats import repeat_notice, repeated_targets
    from lossbench.evaluation.seen import SEEN_RULE_EFFECTS
    from lossbench.training.run_labels import arm_label

    config, entry = plan.config, plan.entry
    label = arm_label(
        entry.loss.name,
        config.sampler,
        config.logq,
        config.shuffle_train,
        config.negatives,
        entry.loss.spec,
    )
    display.print(
        f"training [bold]{config.model}[/] with [bold]{label}[/] on "
        f"[bold]{config.dataset}[/] ({prepared.n_users:,} users, {prepared.n_items:,} "
        f"items, {config.split_spec.label} split), seed {config.seed} -> {entry.run_dir}"
    )
    notice = repeat_notice(
        config.dataset, repeated_targets(prepared), SEEN_RULE_EFFECTS[config.seen_rule]
    )
    if notice:
        display.print(notice, highlight=False)


def _train_or_fail(
    entry: PlanEntry,
    prepared: PreparedDataset,
    display: Console,
    track: str | None,
    group: ProcessGroup,
) -> None:
    """Train `entry` holding its folder's lock (rank 0 holds it for all ranks). A run that
    fails is handled as `compare` handles it: its traceback in the run's failure.txt, and
    `RunFailed` naming it."""
    from lossbench.compare.execute.failures import FAILURE_FILE, train_or_fail
    from lossbench.training.run_lock import lock_holder, run_lock

    if not group.is_main:
        try:
            _train_rank(entry, prepared, display, [], group)
        except Exception:  # noqa: BLE001  rank 0 records and reports the failure
            raise SystemExit(1) from None
        return
    with run_lock(entry.run_dir, wait=False) as held:
        if not held:
            raise LossbenchError(
                f"{entry.run_dir} is being trained by process {lock_holder(entry.run_dir) or '?'}"
                "; wait for it, or give another --out"
            )
        if is_finished(entry.run_dir):  # by another process since it was settled
            display.print(f"{entry.run_dir} was finished by another process")
            return
        tracker = None
        if track is not None:
            from lossbench.training.tracking import open_tracker

            tracker = open_tracker(track, entry.run_dir)
        train = partial(_train_rank, observers=[tracker] if tracker else [], group=group)
        try:
            _, failure = train_or_fail(train, entry, prepared, display)
        finally:
            if tracker is not None:
                tracker.close()
    if failure is not None:
        raise RunFailed(f"{failure.line} (traceback in {entry.run_dir / FAILURE_FILE})")


def _train_rank(
    entry: PlanEntry,
    dataset: PreparedDataset,
    console: Console,
    observers: list[RunObserver],
    group: ProcessGroup,
) -> RunResult:
    """`train_entry` on this rank; a peer that died or hung is one line."""
    from torch.distributed import DistError

    from lossbench.training.distributed import peer_failure
    from lossbench.training.loop import train_entry

    try:
        return train_entry(entry, dataset, console, observers=observers, group=group)
    except DistError as error:  # a peer rank died or stopped answering
        raise LossbenchError(peer_failure(error, group)) from None
