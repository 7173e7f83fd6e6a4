"""One Optuna study per loss, each with the same budget, sampler seeds, pruner and space.

A trial trains one run at suggested settings and is scored on the validation metric only (the
test split is never evaluated: `train_run(..., evaluate_test=False)`). Its per-epoch validation
values feed Optuna's median pruner; a pruned trial counts against the budget like a finished
one. Studies live in an RDB storage (an SQLite file in the out folder unless `--storage` names
another), under a name fixed by the dataset, model, loss and a fingerprint of the space and the
fixed settings: a rerun continues the same studies, and several processes given one storage
share them (Optuna's way to spread trials over machines).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from lossbench.compare.plan.build import build_plan
from lossbench.compare.plan.grid import make_grid
from lossbench.data.prepared import PreparedDataset
from lossbench.errors import LossbenchError
from lossbench.plugins import folder_name
from lossbench.training.config import TrainConfig
from lossbench.training.divergence import DivergedRun
from lossbench.training.setup import code_sources
from lossbench.tuning.space import SearchSpace

STUDY_FILE = "study.db"
TRIALS_DIR = "trials"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # the states that spend the budget
# A RUNNING trial whose process stopped beating this long ago was killed: Optuna marks it FAIL.
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30
# Median pruner: the first trials of a loss always finish, and no trial stops after epoch 1.
PRUNE_STARTUP_TRIALS = 5
PRUNE_WARMUP_EPOCHS = 2


@dataclass(frozen=True)
class TuneRequest:
    """What to tune, validated by `check_request` before anything trains."""

    dataset: str
    model: str
    losses: list[str]
    space: SearchSpace
    settings: dict[str, Any]  # fixed settings of every trial ([settings] under the flags)
    seed: int  # every trial's training seed; the k-th trial's sampler is seeded seed + k
    trials: int | None  # per loss (None: no trial limit)
    timeout: float | None  # seconds of trials per loss (None: no time limit)
    prune: bool
    out_dir: Path


@dataclass(frozen=True)
class LossOutcome:
    """One loss's study, counted over its budget (the first `trials` finished trials)."""

    loss: str
    study_name: str
    metric: str
    trials: list[FrozenTrial]  # finished (complete or pruned), in trial-number order
    failed: int  # failed or killed trials: they do not spend the budget
    best: FrozenTrial | None  # the complete trial with the best validation value

    @property
    def pruned(self) -> int:
        return sum(trial.state == TrialState.PRUNED for trial in self.trials)


def default_storage(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / STUDY_FILE).resolve()}"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The RDB storage at `url` with heartbeats on, or one line saying why it cannot open."""
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
            )
    except Exception as error:  # a bad URL, a missing driver, an unreachable server
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LossbenchError(f"cannot open the storage {shown_url(url)}: {reason}") from None


def shown_url(url: str) -> str:
    """The URL with any password hidden."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def trial_config(request: TuneRequest, loss: str, values: dict[str, Any]) -> TrainConfig:
    """A trial's run config, planned exactly as `compare` plans a grid with these settings for
    this loss (`[settings.per_loss.<loss>]`), so the tuned grid retrains what was tuned."""
    grid = make_grid(
        {
            "datasets": [request.dataset],
            "models": [request.model],
            "losses": [loss],
            "seeds": [request.seed],
            "baseline": loss,
            "per_loss": {loss: request.space.settings_layer(values)},
        },
        "tune",
    )
    (run,) = build_plan(grid, request.settings, request.out_dir).entries
    return run.config


def check_request(request: TuneRequest) -> dict[str, str]:
    """Every loss and every probe value of the space makes a valid run; returns the study names."""
    fixed = set(request.settings) | set(request.settings.get("model_settings") or {})
    for name in request.space.names:
        if name in fixed:
            raise LossbenchError(
                f"{name} is both fixed (by a flag or in [settings]) and tuned (in [tune.space]); "
                "drop one of them"
            )
    if request.trials is None and request.timeout is None:
        raise LossbenchError("give a budget per loss: --trials N or --timeout SECONDS")
    names = {}
    first = request.space.first()
    for loss in request.losses:
        for param in request.space.params:
            for value in param.probes():
                try:
                    trial_config(request, loss, first | {param.name: value})
                except LossbenchError as error:
                    reason = str(error).removeprefix(f"settings.per_loss.{loss}: ")
                    raise LossbenchError(
                        f"[tune.space] {param.name} = {value!r} does not make a valid {loss} "
                        f"run: {reason}"
                    ) from None
        names[loss] = study_name(request, loss, trial_config(request, loss, first))
    return names


def study_name(request: TuneRequest, loss: str, config: TrainConfig) -> str:
    """dataset-model-loss-<fingerprint of the space, every fixed setting and the code of a
    plugin loss or model>: a changed loss file starts a new study, as it retrains a run."""
    fixed = config.model_dump(mode="json", exclude={"threads", *request.space.names})
    fixed["model_settings"] = {
        k: v for k, v in fixed["model_settings"].items() if k not in request.space.names
    }
    document = json.dumps(
        {"space": request.space.describe(), "fixed": fixed, "code": code_sources(config)},
        sort_keys=True,
    )
    digest = hashlib.sha256(document.encode()).hexdigest()[:12]
    return f"{request.dataset}-{request.model}-{folder_name(loss)}-{digest}"


def tune_loss(
    request: TuneRequest,
    loss: str,
    name: str,
    storage: optuna.storages.RDBStorage,
    dataset: PreparedDataset,
    console: Console,
    train: Callable[..., Any] | None = None,
) -> LossOutcome:
    """Run trials of one loss until its budget is spent (counting earlier processes' trials)."""
    if train is None:
        from lossbench.training.loop import train_run

        train = train_run
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=PRUNE_STARTUP_TRIALS, n_warmup_steps=PRUNE_WARMUP_EPOCHS
        )
        if request.prune
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", pruner=pruner, load_if_exists=True
    )
    study.set_user_attr("space", request.space.describe())
    _fail_stale(study, storage)
    objective = _objective(request, loss, study, dataset, console, train)
    ran: list[FrozenTrial] = []  # the trial this process just ran (others may run beside it)
    while _budget_left(request, _finished(study)):
        # Trial k's sampler is seeded seed + k for every loss, k counting the trials that
        # finished or run now: the same random start-up settings for all losses, a trial cut
        # off by a kill is drawn again as it was, and processes sharing a study draw apart.
        count = len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))
        study.sampler = optuna.samplers.TPESampler(seed=request.seed + count)
        ran.clear()
        study.optimize(objective, n_trials=1, callbacks=[lambda _, trial: ran.append(trial)])
        (trial,) = ran  # an objective that raised has raised out of optimize already
        if trial.state == TrialState.FAIL:
            raise LossbenchError(f"trial {trial.number} of {loss} failed: it gave no value")
        _print_trial(console, loss, trial, study, request)
    return outcome(study, loss, request.trials)


def _objective(
    request: TuneRequest,
    loss: str,
    study: optuna.Study,
    dataset: PreparedDataset,
    console: Console,
    train: Callable[..., Any],
) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        config = trial_config(request, loss, request.space.suggest(trial))
        metric = config.validation_metric
        run_dir = request.out_dir / TRIALS_DIR / study.study_name / f"trial{trial.number:04d}"
        trial.set_user_attr("metric", metric)

        def report(row: dict[str, Any]) -> None:  # after every epoch's validation
            trial.report(float(row[f"valid_{metric}"]), int(row["epoch"]))
            if trial.should_prune():
                trial.set_user_attr("epochs", int(row["epoch"]))
                raise optuna.TrialPruned(f"pruned after epoch {row['epoch']}")

        try:
            result = train(
                config, dataset, run_dir, console, epoch_callback=report, evaluate_test=False
            )
        except DivergedRun as error:  # a diverging setting is a finding of the search
            trial.set_user_attr("epochs", error.epoch)
            trial.set_user_attr("diverged", f"step {error.step} of epoch {error.epoch}")
            raise optuna.TrialPruned(str(error)) from None
        trial.set_user_attr("epochs", int(result.metrics["epochs"]))
        trial.set_user_attr("best_epoch", int(result.metrics["best_epoch"]))
        return float(result.metrics["valid"][metric])

    return objective


def _finished(study: optuna.Study) -> list[FrozenTrial]:
    trials = study.get_trials(deepcopy=False, states=FINISHED)
    return sorted(trials, key=lambda trial: trial.number)


def _budget_left(request: TuneRequest, finished: list[FrozenTrial]) -> bool:
    if request.trials is not None and len(finished) >= request.trials:
        return False
    return request.timeout is None or trial_seconds(finished) < request.timeout


def trial_seconds(trials: list[FrozenTrial]) -> float:
    """Seconds the trials took, however many processes ran them."""
    total = datetime.timedelta()
    for trial in trials:
        if trial.datetime_start is not None and trial.datetime_complete is not None:
            total += trial.datetime_complete - trial.datetime_start
    return total.total_seconds()


def _fail_stale(study: optuna.Study, storage: optuna.storages.RDBStorage) -> None:
    """Mark FAIL the trials of killed processes: no heartbeat for GRACE_SECONDS (Optuna's rule),
    or none at all and no settings after as long. Optuna never calls a trial without any
    heartbeat stale, but a trial's settings are drawn first thing, so one without them that
    old was killed at its start."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    old = datetime.datetime.now() - datetime.timedelta(seconds=GRACE_SECONDS)
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not trial.params and trial.datetime_start is not None and trial.datetime_start < old:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            try:
                storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # its own process or another resuming one finished it first


def outcome(study: optuna.Study, loss: str, trials: int | None) -> LossOutcome:
    """The study counted over its budget: several processes sharing a storage can finish a
    few trials more than asked; only the first `trials` (by trial number) count."""
    finished = _finished(study)[:trials] if trials is not None else _finished(study)
    complete = [trial for trial in finished if trial.state == TrialState.COMPLETE]
    best = max(complete, key=lambda trial: float(trial.value or 0.0), default=None)
    failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    metric = str(finished[0].user_attrs.get("metric", "")) if finished else ""
    return LossOutcome(loss, study.study_name, metric, finished, failed, best)


def _print_trial(
    console: Console, loss: str, trial: FrozenTrial, study: optuna.Study, request: TuneRequest
) -> None:
    done = len(_finished(study))
    of = f"/{request.trials}" if request.trials is not None else ""
    settings = "  ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    metric = trial.user_attrs.get("metric", "value")
    if "diverged" in trial.user_attrs:
        result = f"diverged (loss not finite at {trial.user_attrs['diverged']})"
    elif trial.state == TrialState.PRUNED:
        result = f"pruned after epoch {trial.user_attrs.get('epochs', '?')}"
    elif trial.state == TrialState.COMPLETE:
        result = f"{metric} {trial.value:.4f} (best {study.best_value:.4f})"
    else:
        result = trial.state.name.lower()
    console.print(
        f"[bold]{loss}[/] {done}{of} (trial {trial.number}): {result}  {settings}", highlight=False
    )


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
