"""What a tuning leaves in its out folder, all written atomically:

- `tuning.json`: per loss its study, trials, pruned and failed trials, the best validation value
  and the settings that reached it, with the space, the fixed settings and the budget
- `tuning_progress.png`: the best validation value so far against the trial number, one line
  per loss (the equal budget visible at a glance)
- `tuned.toml`: a grid file that retrains every loss at its tuned settings
  (`[settings.per_loss.<loss>]`) on fresh seeds and tests it: `lossbench compare --config`
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from optuna.trial import TrialState
from rich.table import Table

from lossbench.atomic import atomic_path, write_json, write_with
from lossbench.errors import LossbenchError
from lossbench.tuning.study import LossOutcome, TuneRequest, trial_seconds

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SUMMARY_FILE = "tuning.json"
PROGRESS_FIGURE = "tuning_progress.png"
TUNED_GRID = "tuned.toml"
COMPARE_SEEDS = [0, 1, 2]


def compare_command(out_dir: Path) -> str:
    grid = out_dir / TUNED_GRID
    seeds = ",".join(map(str, COMPARE_SEEDS))
    return f"lossbench compare --config {grid} --seeds {seeds} --out {out_dir / 'compare'}"


def summary_table(outcomes: list[LossOutcome]) -> Table:
    table = Table(title="tuned on validation (the test split was not read)")
    for name in ("loss", "trials", "pruned", "failed", "best validation", "best trial"):
        table.add_column(name, justify="left" if name == "loss" else "right")
    table.add_column("best settings")
    for outcome in outcomes:
        best = outcome.best
        table.add_row(
            outcome.loss,
            str(len(outcome.trials)),
            str(outcome.pruned),
            str(outcome.failed),
            f"{outcome.metric} {best.value:.4f}" if best is not None else "-",
            str(best.number) if best is not None else "-",
            "  ".join(f"{k}={_short(v)}" for k, v in best.params.items()) if best else "-",
        )
    return table


def write_outputs(request: TuneRequest, outcomes: list[LossOutcome], storage: str) -> list[Path]:
    """tuning.json, the figure and tuned.toml; a loss without one complete trial stops here."""
    for outcome in outcomes:
        if outcome.best is None:
            raise LossbenchError(
                f"no trial of {outcome.loss} finished without being pruned; give a larger "
                "budget (--trials, --timeout) or --no-prune"
            )
    out = request.out_dir
    write_json(out / SUMMARY_FILE, summary(request, outcomes, storage))
    progress_figure(outcomes, out / PROGRESS_FIGURE)
    write_tuned_grid(request, outcomes, out / TUNED_GRID)
    return [out / SUMMARY_FILE, out / PROGRESS_FIGURE, out / TUNED_GRID]


def summary(request: TuneRequest, outcomes: list[LossOutcome], storage: str) -> dict[str, Any]:
    return {
        "dataset": request.dataset,
        "model": request.model,
        "seed": request.seed,
        "budget": {"trials": request.trials, "timeout_seconds": request.timeout},
        "prune": request.prune,
        "storage": storage,
        "space": request.space.describe(),
        "settings": request.settings,
        "losses": [
            {
                "loss": outcome.loss,
                "study": outcome.study_name,
                "metric": outcome.metric,
                "trials": len(outcome.trials),
                "pruned": outcome.pruned,
                "failed": outcome.failed,
                "trial_seconds": trial_seconds(outcome.trials),
                "best_value": outcome.best.value if outcome.best else None,
                "best_trial": outcome.best.number if outcome.best else None,
                "best_settings": outcome.best.params if outcome.best else None,
            }
            for outcome in outcomes
        ],
    }


def best_so_far(outcome: LossOutcome) -> list[float]:
    """(n,) the best complete value among trials 1..i; pruned trials spend a step unchanged."""
    best, curve = -math.inf, []
    for trial in outcome.trials:
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            best = max(best, trial.value)
        curve.append(best if best > -math.inf else math.nan)
    return curve


def progress_figure(outcomes: list[LossOutcome], path: Path) -> Path:
    """Best validation value so far against trial number, one colour per loss; dots are the
    complete trials' values, crosses the pruned trials' last validation values."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.5), layout="constrained")
    axes = figure.subplots()
    for i, outcome in enumerate(outcomes):
        color = f"C{i % 10}"
        steps = list(range(1, len(outcome.trials) + 1))
        label = f"{outcome.loss} ({len(steps)} trials, {outcome.pruned} pruned)"
        axes.step(steps, best_so_far(outcome), where="post", color=color, label=label)
        for step, trial in zip(steps, outcome.trials, strict=True):
            if trial.state == TrialState.COMPLETE and trial.value is not None:
                axes.plot([step], [trial.value], "o", color=color, alpha=0.4, markersize=4)
            elif trial.intermediate_values:
                last = trial.intermediate_values[max(trial.intermediate_values)]
                axes.plot([step], [last], "x", color=color, alpha=0.6, markersize=5)
    metric = next((o.metric for o in outcomes if o.metric), "validation metric")
    axes.set_xlabel("trials spent (complete or pruned)")
    axes.set_ylabel(f"best validation {metric.upper()} so far")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.suptitle("tuning progress: the same budget for every loss")
    write_with(path, lambda temporary: figure.savefig(temporary, format="png", dpi=130))
    return path


def tuned_grid(request: TuneRequest, outcomes: list[LossOutcome]) -> dict[str, Any]:
    """The grid of every loss at its best trial's settings, over the tuning's fixed settings."""
    per_loss = {
        o.loss: request.space.settings_layer(o.best.params) for o in outcomes if o.best is not None
    }
    losses = [outcome.loss for outcome in outcomes]
    return {
        "grid": {
            "datasets": [request.dataset],
            "models": [request.model],
            "losses": losses,
            "seeds": COMPARE_SEEDS,
            "baseline": losses[0],
        },
        "settings": request.settings | {"per_loss": per_loss},
    }


def write_tuned_grid(request: TuneRequest, outcomes: list[LossOutcome], path: Path) -> None:
    document = tuned_grid(request, outcomes)
    lines = [
        "# Every loss at the settings its tuning chose on validation (lossbench tune), over the",
        "# fixed settings every trial shared. Retrain on fresh seeds and test:",
        f"#   {compare_command(request.out_dir)}",
    ]
    for outcome in outcomes:
        if outcome.best is not None:
            lines.append(
                f"# {outcome.loss}: trial {outcome.best.number}, the best of {len(outcome.trials)}"
                f" (validation {outcome.metric} {outcome.best.value:.4f}; study "
                f"{outcome.study_name})"
            )
    text = "\n".join(lines) + "\n\n" + dumps_toml(document)
    if tomllib.loads(text) != json.loads(json.dumps(document, default=str)):
        raise AssertionError("tuned.toml does not read back as written")  # a writer bug
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def dumps_toml(table: dict[str, Any], path: tuple[str, ...] = ()) -> str:
    """TOML of nested tables of numbers, strings, booleans and lists of them."""
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    lines = [f"[{'.'.join(map(_key, path))}]"] if path and (scalars or not tables) else []
    lines += [f"{_key(key)} = {_value(value)}" for key, value in scalars.items()]
    text = "\n".join(lines) + ("\n" if lines else "")
    for key, value in tables.items():
        text += ("\n" if text else "") + dumps_toml(value, (*path, key))
    return text


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # str, Path: JSON escapes are TOML's


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
