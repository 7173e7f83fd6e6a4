"""Two sets of finished runs, compared with the same table and paired test as `compare`.

`compare` tests losses within one model. `lossbench versus A B` compares any two sets: two
models (the study's Table 3: improved SASRec against BERT4Rec), two presets, two versions of
the code. Each set is one (dataset, model, loss) folder of seed runs (or one run folder);
runs are paired by seed, and (user, seed) pairs by user, exactly as in `compare`. The two sets
may differ in anything, but the runs of one set must have been trained alike and both sets
must hold the same seeds (`mixed.py`; `allow_mixed` shows them side by side instead).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from lossbench.compare.plan.grid import PLURALS
from lossbench.compare.report.mixed import check_mixing, variants
from lossbench.compare.report.results import find_finished_runs, results_frame
from lossbench.compare.report.summary import SummaryOptions, summarize
from lossbench.errors import LossbenchError

SET_COLUMN = "model"  # summarize groups by (dataset, model): one group holds both sets


def versus_summary(
    treatment: Path, baseline: Path, options: SummaryOptions, allow_mixed: bool = False
) -> tuple[pl.DataFrame, str, str, str | None]:
    """(summary rows, treatment label, baseline label, warning line or None); the baseline is
    the reference row."""
    if treatment.resolve() == baseline.resolve():
        raise LossbenchError(f"{treatment} is both sets; give two different folders of runs")
    treated, base = _run_set(treatment), _run_set(baseline)
    treated_label, base_label = _label(treated), _label(base)
    if treated_label == base_label:  # same model and loss (two versions, two presets...)
        treated_label, base_label = str(treatment), str(baseline)
    datasets = {_only(treated, "dataset", treatment), _only(base, "dataset", baseline)}
    if len(datasets) > 1:
        raise LossbenchError(
            f"{treatment} and {baseline} hold runs on different datasets "
            f"({', '.join(sorted(datasets))}); compare runs on one dataset"
        )
    shared = set(treated["seed"].to_list()) & set(base["seed"].to_list())
    if not shared:
        raise LossbenchError(
            f"{treatment} and {baseline} share no seed, so no run can be paired; "
            "train the same seeds in both"
        )
    runs = pl.concat(
        [
            treated.with_columns(
                pl.lit("versus").alias(SET_COLUMN), pl.lit(treated_label).alias("loss")
            ),
            base.with_columns(pl.lit("versus").alias(SET_COLUMN), pl.lit(base_label).alias("loss")),
        ],
        how="diagonal_relaxed",
    )
    runs, warning = check_mixing(runs, ["dataset", SET_COLUMN], None, allow_mixed)
    reference = variants(runs, base_label)[0]
    order = [*variants(runs, base_label), *variants(runs, treated_label)]
    summary = summarize(runs, {(datasets.pop(), "versus"): reference}, options, order)
    return summary, treated_label, base_label, warning


def _run_set(root: Path) -> pl.DataFrame:
    """The finished runs under `root`, all of one (dataset, model, loss)."""
    if not root.is_dir():
        raise LossbenchError(f"{root} is not a folder; give a run folder or a folder of seeds")
    run_dirs = find_finished_runs(root)
    if not run_dirs:
        raise LossbenchError(f"no finished runs under {root}; train some with `lossbench train`")
    runs = results_frame(run_dirs)
    for column in ("dataset", "model", "loss"):
        _only(runs, column, root)
    return runs


def _only(runs: pl.DataFrame, column: str, root: Path) -> str:
    values = runs[column].unique().sort().to_list()
    if len(values) != 1:
        raise LossbenchError(
            f"{root} holds runs of several {PLURALS[column]} ({', '.join(map(str, values))}); "
            "point at the folder of one (dataset, model, loss)"
        )
    return str(values[0])


def _label(runs: pl.DataFrame) -> str:
    return f"{runs['model'][0]} + {runs['loss'][0]}"
