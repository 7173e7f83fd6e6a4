"""Tables, results files, summary.md and figures from saved (constructed) run folders, and
the `report` / `compare` commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import lossbench.cli.compare_commands  # noqa: F401  (registers compare and report)
from lossbench.cli.app import app
from lossbench.compare.report.render import SUMMARY_FILE, render_report
from lossbench.compare.report.results import results_frame
from lossbench.compare.report.summary import BETTER, SummaryOptions, summarize
from lossbench.errors import LossbenchError
from lossbench.evaluation.metrics import metrics_from_ranks
from lossbench.training.config import TrainConfig

N_USERS = 300
OPTIONS = SummaryOptions(n_permutations=999)


def write_fake_run(
    root: Path,
    loss: str,
    seed: int,
    ranks: np.ndarray,
    model: str = "sasrec",
    dataset: str = "toy",
    **settings: object,
) -> Path:
    """A finished run folder as `train_run` leaves it (without weights); `settings`: config
    fields other than the defaults (and fields a newer configuration may have)."""
    run_dir = root / dataset / model / loss / f"seed{seed}"
    run_dir.mkdir(parents=True)
    config = TrainConfig(dataset=dataset, model=model, loss=loss, seed=seed, max_epochs=3)
    record = {
        "config": config.model_dump(mode="json") | settings,
        "model_settings": {"hidden_size": 64},
        "loss_settings": {
            "loss": loss,
            "positions": "all",
            "negatives": 1,
            "gbce_t": 0.75,
            "softmax_chunk": 16384,
        },
        "environment": {"device": "cpu", "precision": "fp32"},
    }
    (run_dir / "config.json").write_text(json.dumps(record))
    elapsed = np.cumsum([1.0 + seed, 1.0, 1.0])
    pl.DataFrame(
        {
            "epoch": [1, 2, 3],
            "loss": [3.0, 2.0, 1.5],
            "train_seconds": [1.0] * 3,
            "eval_seconds": [0.1] * 3,
            "elapsed_seconds": elapsed,
            "peak_memory_mb": [100.0] * 3,
            "valid_ndcg@10": [0.1, 0.2 + seed / 100, 0.25],
        }
    ).write_csv(run_dir / "history.csv")
    pl.DataFrame(
        {
            "user": np.arange(1, N_USERS + 1, dtype=np.int32),
            "target": np.ones(N_USERS, dtype=np.int32),
            "rank": ranks.astype(np.int64),
        }
    ).write_parquet(run_dir / "test_ranks.parquet")
    metrics = {
        "valid": metrics_from_ranks(ranks, [10]),
        "test": metrics_from_ranks(ranks, [10]),
        "best_epoch": 3,
        "epochs": 3,
        "train_seconds": 3.0 + seed,
        "train_seconds_per_epoch": 1.0,
        "eval_seconds_per_epoch": 0.1,
        "peak_memory_mb": 100.0 if loss == "bce" else 300.0,
        "validation_metric": "ndcg@10",
        "loss": loss,
        "model": model,
        "dataset": dataset,
        "seed": seed,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


@pytest.fixture
def saved_runs(tmp_path: Path) -> Path:
    """bce (random ranks), improved (every rank halved: better), ce (identical to bce)."""
    rng = np.random.default_rng(0)
    for seed in (0, 1, 2):
        ranks = rng.integers(1, 40, N_USERS)
        write_fake_run(tmp_path, "bce", seed, ranks)
        write_fake_run(tmp_path, "improved", seed, np.maximum(ranks // 2, 1))
        write_fake_run(tmp_path, "ce", seed, ranks)
    return tmp_path


def test_summary_values_from_saved_runs(saved_runs: Path) -> None:
    runs = results_frame(sorted(p.parent for p in saved_runs.rglob("metrics.json")))
    assert runs.height == 9 and {"test_ndcg@10", "valid_hr@10", "positions"} <= set(runs.columns)
    summary = summarize(runs, {("toy", "sasrec"): "bce"}, OPTIONS, ["bce", "improved", "ce"])
    assert summary["loss"].to_list() == ["bce", "improved", "ce"]
    bce = runs.filter(pl.col("loss") == "bce")["test_ndcg@10"]
    improved = runs.filter(pl.col("loss") == "improved")["test_ndcg@10"]
    row = summary.row(1, named=True)
    assert row["ndcg@10_mean"] == pytest.approx(improved.mean())
    assert row["ndcg@10_std"] == pytest.approx(improved.std())
    assert row["ndcg@10_change"] == pytest.approx(100 * (improved.mean() / bce.mean() - 1))
    assert row["pairs"] == 3 * N_USERS
    assert row["p_value"] == pytest.approx(1 / 1000)  # never a sign flip as extreme
    assert row["p_holm"] == pytest.approx(2 / 1000) and row["mark"] == BETTER
    ce = summary.row(2, named=True)
    assert ce["p_value"] == 1.0 and ce["mark"] == "" and ce["ndcg@10_change"] == 0.0
    assert summary.row(0, named=True)["p_value"] is None  # the baseline row is not tested
    assert row["peak_memory_mb"] == 300.0 and row["train_seconds"] == pytest.approx(4.0)


def test_metrics_not_saved_are_recomputed_from_ranks(saved_runs: Path) -> None:
    runs = results_frame(sorted(p.parent for p in saved_runs.rglob("metrics.json")))
    assert "test_hr@5" not in runs.columns  # the fake runs saved @10 only
    summary = summarize(runs, {}, SummaryOptions(metrics=["hr@5", "mrr"], n_permutations=99))
    per_seed = [
        pl.read_parquet(saved_runs / f"toy/sasrec/bce/seed{seed}/test_ranks.parquet")["rank"]
        for seed in (0, 1, 2)
    ]
    expected = np.mean([float((ranks.to_numpy() <= 5).mean()) for ranks in per_seed])
    bce = summary.filter(pl.col("loss") == "bce")
    assert bce["hr@5_mean"].item() == pytest.approx(expected)
    assert bce["baseline"].item() == "bce"  # no baseline given: the first loss


def test_report_writes_tables_and_files(saved_runs: Path) -> None:
    written = render_report(saved_runs, OPTIONS, baseline="bce")
    names = {path.name for path in written}
    assert names == {
        "results.parquet",
        "results.csv",
        "summary.md",
        "quality_vs_time.png",
        "validation_curves.png",
        "frontier.png",
    }
    assert pl.read_parquet(saved_runs / "results.parquet").height == 9
    assert pl.read_csv(saved_runs / "results.csv").height == 9
    summary = (saved_runs / SUMMARY_FILE).read_text()
    assert "| bce (base) |" in summary and BETTER in summary and "Holm" in summary
    for name in ("quality_vs_time.png", "validation_curves.png"):
        data = (saved_runs / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5_000
    assert not list(saved_runs.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_report_command(saved_runs: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "report",
            str(saved_runs),
            "--permutations",
            "199",
            "--baseline",
            "bce",
            "--metrics",
            "hr@10,ndcg@10,mrr",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "improved" in result.output and "MRR" in result.output and BETTER in result.output


def test_report_errors_are_one_liners(tmp_path: Path, saved_runs: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LossbenchError, match="no finished runs"):
        render_report(empty, OPTIONS)
    result = CliRunner().invoke(app, ["report", str(saved_runs), "--baseline", "bpr"])
    assert isinstance(result.exception, LossbenchError) and "bpr" in str(result.exception)
    result = CliRunner().invoke(app, ["report", str(saved_runs), "--metrics", "ndcg@x"])
    assert isinstance(result.exception, LossbenchError)


def test_compare_rejects_bad_lists(tmp_path: Path) -> None:
    runner = CliRunner()
    cases = {
        "--losses=bce,nope": "unknown loss 'nope'; valid losses: bce",
        "--seeds=": "--seeds is empty",
        "--baseline=bpr": "not among",
    }
    for flag, words in cases.items():
        result = runner.invoke(app, ["compare", "--out", str(tmp_path), flag])
        assert isinstance(result.exception, LossbenchError), flag
        assert words in str(result.exception)


def test_tiny_real_compare_then_resume(tmp_path: Path) -> None:
    """Two losses, one seed, one epoch of a tiny SASRec; a second call trains nothing."""
    args = [
        "--data-dir",
        str(tmp_path / "data"),
        "compare",
        "--out",
        str(tmp_path / "out"),
        "--losses",
        "bce,improved",
        "--seeds",
        "0",
        "--max-epochs",
        "1",
        "--hidden-size",
        "8",
        "--num-layers",
        "1",
        "--num-heads",
        "1",
        "--max-len",
        "10",
        "--permutations",
        "99",
    ]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "improved" in first.output
    runs = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert sorted(runs["loss"].to_list()) == ["bce", "improved"]
    assert (runs["epochs"] == 1).all()
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "reusing 2 finished run(s) of 2" in second.output
    assert "seed 0 ->" not in second.output  # nothing trained again
    report = CliRunner().invoke(app, ["report", str(tmp_path / "out"), "--permutations", "99"])
    assert report.exit_code == 0, report.output
    assert "bce (base)" in report.output and "2 runs" in report.output

    # One flag changed: refused, naming the setting; nothing is touched.
    changed = [*args[:-2], "--lr", "0.002", "--permutations", "99"]
    third = CliRunner().invoke(app, changed)
    assert isinstance(third.exception, LossbenchError), third.output
    assert "2 run(s)" in str(third.exception) and "lr 0.001 -> 0.002" in str(third.exception)
    assert not list((tmp_path / "out").rglob("*.replaced-*"))
    # --retrain-changed retrains them, keeping the old folders aside.
    fourth = CliRunner().invoke(app, [*changed, "--retrain-changed"])
    assert fourth.exit_code == 0, fourth.output
    kept = sorted((tmp_path / "out").rglob("seed0.replaced-*"))
    assert len(kept) == 2 and all((run / "metrics.json").is_file() for run in kept)
    runs = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert runs.height == 2 and all('"lr": 0.002' in config for config in runs["config"])


def test_versus_compares_two_models_paired_by_seed(tmp_path: Path) -> None:
    """Run sets of two models: same numbers and test as compare's, over the shared seeds."""
    from lossbench.compare.report.stats import sign_flip_test
    from lossbench.compare.report.versus import versus_summary
    from lossbench.evaluation.metrics import per_user_metric

    rng = np.random.default_rng(1)
    base_ranks, better_ranks = [], []
    for seed in (0, 1, 2):
        ranks = rng.integers(1, 40, N_USERS)
        base_ranks.append(ranks)
        write_fake_run(tmp_path, "mlm", seed, ranks, model="bert4rec")
        if seed < 2:  # the treatment has seeds 0 and 1 only: pairs come from those
            better_ranks.append(np.maximum(ranks - 3, 1))
            write_fake_run(tmp_path, "improved", seed, better_ranks[-1])
    summary, treated, base, warning = versus_summary(
        tmp_path / "toy/sasrec/improved", tmp_path / "toy/bert4rec/mlm", OPTIONS, allow_mixed=True
    )
    assert warning is not None and "seeds (sasrec + improved 0,1; bert4rec + mlm 0,1,2)" in warning
    assert (treated, base) == ("sasrec + improved", "bert4rec + mlm")
    assert summary["loss"].to_list() == [base, treated]
    row = summary.row(1, named=True)
    assert row["seeds"] == 2 and row["pairs"] == 2 * N_USERS
    expected = sign_flip_test(
        np.concatenate([per_user_metric(r, "ndcg@10") for r in better_ranks]),
        np.concatenate([per_user_metric(r, "ndcg@10") for r in base_ranks[:2]]),
        OPTIONS.n_permutations,
    )
    assert row["mean_difference"] == pytest.approx(expected.mean_difference)
    assert row["p_value"] == pytest.approx(expected.p_value) and row["mark"] == BETTER
    base_mean = np.mean([per_user_metric(r, "ndcg@10").mean() for r in base_ranks])
    assert summary.row(0, named=True)["ndcg@10_mean"] == pytest.approx(base_mean)

    sets = [str(tmp_path / "toy/sasrec/improved"), str(tmp_path / "toy/bert4rec/mlm")]
    result = CliRunner().invoke(app, ["versus", *sets, "--allow-mixed"])
    assert result.exit_code == 0, result.output
    assert "runs compared on toy" in result.output and "bert4rec + mlm (base)" in result.output
    assert "warning: runs not trained alike" in result.output


def test_versus_labels_same_model_and_loss_by_folder(tmp_path: Path) -> None:
    from lossbench.compare.report.versus import versus_summary

    ranks = np.random.default_rng(2).integers(1, 40, N_USERS)
    write_fake_run(tmp_path / "old", "bce", 0, ranks)
    write_fake_run(tmp_path / "new", "bce", 0, ranks)
    new, old = tmp_path / "new/toy/sasrec/bce", tmp_path / "old/toy/sasrec/bce"
    summary, treated, base, _ = versus_summary(new, old, OPTIONS)
    assert (treated, base) == (str(new), str(old))
    assert summary.row(1, named=True)["p_value"] == 1.0  # identical runs


@pytest.mark.parametrize(
    ("treatment", "baseline", "words"),
    [
        ("toy", "toy/bert4rec/mlm", "several models"),
        ("missing", "toy/bert4rec/mlm", "is not a folder"),
        ("empty", "toy/bert4rec/mlm", "no finished runs"),
        ("other/sasrec/bce", "toy/bert4rec/mlm", "different datasets"),
        ("toy/sasrec/improved", "toy/bert4rec/mlm", "share no seed"),
        ("toy/bert4rec/mlm", "toy/bert4rec/mlm", "is both sets"),
    ],
)
def test_versus_errors_are_one_liners(
    tmp_path: Path, treatment: str, baseline: str, words: str
) -> None:
    ranks = np.random.default_rng(3).integers(1, 40, N_USERS)
    write_fake_run(tmp_path, "mlm", 0, ranks, model="bert4rec")
    write_fake_run(tmp_path, "improved", 1, ranks)
    write_fake_run(tmp_path, "bce", 0, ranks, dataset="other")
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(
        app, ["versus", str(tmp_path / treatment), str(tmp_path / baseline)]
    )
    assert result.exit_code != 0
    assert words in str(result.exception) + result.output


def test_report_refuses_to_pool_runs_trained_differently(saved_runs: Path) -> None:
    """bce's seed 2 stopped after 1 epoch where the others had 3: not averaged silently."""
    odd = saved_runs / "toy/sasrec/bce/seed2/config.json"
    record = json.loads(odd.read_text())
    record["config"]["max_epochs"] = 1
    odd.write_text(json.dumps(record))
    with pytest.raises(LossbenchError) as error:
        render_report(saved_runs, OPTIONS)
    message = str(error.value)
    assert "toy sasrec: max_epochs (1 in bce seed 2, 3 in 8 runs)" in message
    assert "--allow-mixed" in message and not (saved_runs / SUMMARY_FILE).exists()

    result = CliRunner().invoke(
        app, ["report", str(saved_runs), "--allow-mixed", "--permutations", "99"]
    )
    assert result.exit_code == 0, result.output
    assert "warning: runs not trained alike, shown side by side" in result.output
    written = render_report(saved_runs, OPTIONS, allow_mixed=True)
    assert written
    summary = (saved_runs / SUMMARY_FILE).read_text()
    assert summary.startswith("> warning: runs not trained alike")
    assert "| bce [max_epochs=1] |" in summary and "| bce [max_epochs=3] (base) |" in summary


def test_report_refuses_losses_with_different_seeds(saved_runs: Path) -> None:
    import shutil

    shutil.rmtree(saved_runs / "toy/sasrec/improved/seed2")
    with pytest.raises(LossbenchError, match=r"seeds \(bce 0,1,2; ce 0,1,2; improved 0,1\)"):
        render_report(saved_runs, OPTIONS)
    render_report(saved_runs, OPTIONS, allow_mixed=True)  # pairs over the shared seeds


def test_a_new_config_field_is_compared_without_code_for_it(tmp_path: Path) -> None:
    """A setting that does not exist today (`seen_targets`) still keeps runs apart."""
    ranks = np.random.default_rng(4).integers(1, 40, N_USERS)
    for seed in (0, 1):
        write_fake_run(tmp_path, "bce", seed, ranks, seen_targets="kept")
        write_fake_run(tmp_path, "ce", seed, ranks, seen_targets="removed" if seed else "kept")
    with pytest.raises(LossbenchError, match="seen_targets"):
        render_report(tmp_path, OPTIONS)


def test_versus_refuses_a_set_trained_differently(tmp_path: Path) -> None:
    from lossbench.compare.report.versus import versus_summary

    ranks = np.random.default_rng(5).integers(1, 40, N_USERS)
    for seed in (0, 1):
        write_fake_run(tmp_path, "mlm", seed, ranks, model="bert4rec")
        write_fake_run(tmp_path, "bce", seed, ranks, lr=0.01 if seed else 0.001)
    sets = (tmp_path / "toy/sasrec/bce", tmp_path / "toy/bert4rec/mlm")
    with pytest.raises(LossbenchError, match=r"lr \(0.001 in sasrec \+ bce seed 0"):
        versus_summary(*sets, OPTIONS)
    summary, _, _, warning = versus_summary(*sets, OPTIONS, allow_mixed=True)
    assert warning is not None
    assert summary["loss"].to_list() == [
        "bert4rec + mlm",
        "sasrec + bce [lr=0.001]",
        "sasrec + bce [lr=0.01]",
    ]


def test_a_comparison_refuses_to_mix_precisions_unless_asked(tmp_path: Path) -> None:
    """bf16 and fp32 runs of one comparison are not pooled or paired silently."""
    ranks = np.random.default_rng(6).integers(1, 40, N_USERS)
    for seed in (0, 1):
        write_fake_run(tmp_path, "bce", seed, ranks)
        write_fake_run(tmp_path, "improved", seed, ranks, precision="bf16" if seed else "fp32")
    with pytest.raises(LossbenchError, match=r"precision \(bf16 in improved seed 1"):
        render_report(tmp_path, OPTIONS)
    assert render_report(tmp_path, OPTIONS, allow_mixed=True)
