"""What losses cost and the floor they must beat: per-run cost, the `pop` row, collapsed runs
(shown, never averaged, failing --expect), the frontier figure's data and --memory-budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.compare.ci.expectations import evaluate_expectations, parse_expectations
from lossbench.compare.report.figures import frontier, frontier_points
from lossbench.compare.report.outputs import comparison_document
from lossbench.compare.report.render import render_report
from lossbench.compare.report.results import results_frame
from lossbench.compare.report.summary import POPULARITY, summarize
from lossbench.compare.report.tables import markdown
from lossbench.data.sequences import EvaluationSet
from lossbench.errors import LossbenchError
from lossbench.evaluation.metrics import metrics_from_ranks
from lossbench.losses import CATALOGUE, LOSSES
from lossbench.losses.base import LossInputs, LossParams, LossSpec
from lossbench.training import fit_check
from lossbench.training.cost import LossClock, cost_metrics
from lossbench.training.evaluate import Evaluator
from lossbench.training.memory import parse_memory_size
from lossbench.training.popularity import PopularityScorer, is_collapsed, popularity_metrics
from test_compare_report import N_USERS, OPTIONS, write_fake_run

CPU = torch.device("cpu")


# --- per-run cost ---------------------------------------------------------------------------


def test_cost_metrics_from_the_epochs() -> None:
    history = [
        {"train_seconds": 2.0, "loss_seconds": 0.5, "tokens": 1000.0},
        {"train_seconds": 3.0, "loss_seconds": 1.5, "tokens": 1000.0},
    ]
    cost = cost_metrics(history)
    assert cost["train_seconds"] == 5.0
    assert cost["train_seconds_per_epoch"] == 2.5
    assert cost["loss_seconds_per_epoch"] == 1.0
    assert cost["loss_share"] == pytest.approx(0.4)
    assert cost["tokens_per_second"] == pytest.approx(400.0)
    older = cost_metrics([{"train_seconds": 2.0}])  # resumed from a run recorded before
    assert older["loss_share"] is None and older["tokens_per_second"] is None


def test_the_loss_clock_counts_forward_and_backward_to_the_hidden_states() -> None:
    clock = LossClock(CPU)
    hidden = torch.randn(64, 8, requires_grad=True)
    table = torch.randn(5000, 8, requires_grad=True)
    with clock.forward(hidden):
        loss = torch.logsumexp(hidden @ table.T, dim=1).mean()
    forward_only = clock._seconds
    clock.backward_starts()
    loss.backward()
    seconds = clock.take()
    assert forward_only > 0 and seconds > forward_only  # the backward was added
    assert clock.take() == 0.0  # `take` starts the next epoch at zero


# --- the popularity floor -------------------------------------------------------------------


def three_users() -> EvaluationSet:
    """Histories [3], [1], [4]; targets 1, 2, 2."""
    return EvaluationSet(
        lengths=torch.tensor([1, 1, 1]),
        targets=torch.tensor([1, 2, 2]),
        seen_offsets=torch.tensor([0, 1, 2, 3]),
        seen_items=torch.tensor([3, 1, 4]),
    )


def test_popularity_ranks_by_training_counts_with_the_seen_rule_and_pessimistic_ties() -> None:
    counts = torch.tensor([0, 5, 5, 9, 1])  # item 3 first, then 1 and 2 tied, then 4
    evaluator = Evaluator(three_users(), 2, exclude_seen=True, device=CPU, seen_targets="miss")
    ranks = evaluator.evaluate(PopularityScorer(counts, CPU)).ranks
    # user 1: item 3 seen, so item 1 (tied with 2: a tie counts against it) ranks 2;
    # user 2: item 1 seen, item 2 after item 3; user 3: 3, then 1 and 2 tied -> 3.
    assert ranks.tolist() == [2, 2, 3]
    metrics = popularity_metrics(counts, CPU, {"valid": evaluator}, [1, 5])
    assert metrics["valid"] == metrics_from_ranks(ranks, [1, 5])
    assert metrics["valid"]["hr@1"] == 0.0 and metrics["valid"]["hr@5"] == 1.0


def test_a_run_collapses_below_the_floor_or_with_a_non_finite_loss() -> None:
    floor = {"ndcg@10": 0.05}
    assert not is_collapsed({"ndcg@10": 0.06}, floor, "ndcg@10", [2.0, 1.0])
    assert is_collapsed({"ndcg@10": 0.05}, floor, "ndcg@10", [2.0, 1.0])  # equal: no better
    assert is_collapsed({"ndcg@10": 0.30}, floor, "ndcg@10", [2.0, float("nan")])
    assert is_collapsed({"ndcg@10": float("nan")}, floor, "ndcg@10", [1.0])
    assert not is_collapsed({"ndcg@10": 0.01}, None, "ndcg@10", [1.0])  # no floor recorded


# --- collapsed runs in a comparison ---------------------------------------------------------


def with_floor(run_dir: Path, floor: float, collapsed: bool) -> None:
    """Add what a run now records: the popularity floor's metrics and the collapsed flag."""
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text())
    popularity = {"hr@10": floor * 2, "ndcg@10": floor}
    metrics |= {
        "popularity": {"valid": popularity, "test": popularity},
        "collapsed": collapsed,
        "loss_seconds_per_epoch": 0.25,
        "loss_share": 0.25,
        "tokens_per_second": 5000.0,
    }
    path.write_text(json.dumps(metrics))


@pytest.fixture
def one_collapsed(tmp_path: Path) -> Path:
    """bce and improved over 3 seeds; improved's seed 2 collapsed (its ranks are the worst)."""
    rng = np.random.default_rng(0)
    for seed in (0, 1, 2):
        ranks = rng.integers(1, 40, N_USERS)
        with_floor(write_fake_run(tmp_path, "bce", seed, ranks), 0.01, False)
        improved = np.full(N_USERS, 1000) if seed == 2 else np.maximum(ranks // 2, 1)
        with_floor(write_fake_run(tmp_path, "improved", seed, improved), 0.01, seed == 2)
    return tmp_path


def test_collapsed_runs_are_shown_but_left_out_of_the_mean_and_the_test(
    one_collapsed: Path,
) -> None:
    runs = results_frame(sorted(one_collapsed.glob("toy/sasrec/*/seed*")))
    assert runs.filter(pl.col("collapsed"))["run_dir"].to_list() == [
        str(one_collapsed / "toy/sasrec/improved/seed2")
    ]
    summary = summarize(runs, {("toy", "sasrec"): "bce"}, OPTIONS, ["bce", "improved"])
    improved = summary.filter(pl.col("loss") == "improved").row(0, named=True)
    kept = runs.filter((pl.col("loss") == "improved") & ~pl.col("collapsed"))
    assert improved["seeds"] == 2 and improved["collapsed"] == 1
    assert improved["ndcg@10_mean"] == pytest.approx(kept["test_ndcg@10"].mean())
    assert improved["pairs"] == 2 * N_USERS  # seeds 0 and 1 only
    assert improved["mark"] == "▲"
    floor = summary.filter(pl.col("loss") == POPULARITY).row(0, named=True)
    assert floor["reference"] and floor["ndcg@10_mean"] == pytest.approx(0.01)
    assert floor["p_value"] is None and floor["mark"] == ""
    text = markdown(summary, OPTIONS)
    assert "| pop (floor) | — |" in text and "| 2 (+1 collapsed) |" in text
    assert "sasrec + improved on toy: 1 of 3 runs collapsed" in text
    assert "left out of the mean and the test" in text


def test_expectations_on_a_collapsed_loss_fail_unless_allowed(one_collapsed: Path) -> None:
    runs = results_frame(sorted(one_collapsed.glob("toy/sasrec/*/seed*")))
    summary = summarize(runs, {("toy", "sasrec"): "bce"}, OPTIONS)
    expectations = parse_expectations(["improved > bce", "ndcg@10(bce) >= 0"])
    groups = [("toy", "sasrec")]
    strict = evaluate_expectations(expectations, summary, groups, "ndcg@10", 0.05)
    assert [verdict.passed for verdict in strict] == [False, True]
    assert "1 run of improved collapsed" in strict[0].line
    assert "--allow-collapsed" in strict[0].line
    allowed = evaluate_expectations(expectations, summary, groups, "ndcg@10", 0.05, True)
    assert [verdict.passed for verdict in allowed] == [True, True]


def test_the_json_document_has_the_floor_the_flags_and_the_cost(one_collapsed: Path) -> None:
    run_dirs = sorted(one_collapsed.glob("toy/sasrec/*/seed*"))
    summary = summarize(results_frame(run_dirs), {("toy", "sasrec"): "bce"}, OPTIONS)
    document = comparison_document(run_dirs, summary, ["ndcg@10"], "ndcg@10", [], [])
    assert [run["collapsed"] for run in document["runs"]] == [False] * 5 + [True]
    assert all(run["peak_memory_mb"] and run["train_seconds_per_epoch"] for run in document["runs"])
    assert document["runs"][0]["tokens_per_second"] == 5000.0
    assert document["runs"][0]["popularity"]["test"]["ndcg@10"] == 0.01
    rows = {row["loss"]: row for row in document["comparison"]}
    assert rows["pop"]["reference"] is True and rows["pop"]["seeds"] is None
    assert rows["improved"]["collapsed"] == 1 and rows["improved"]["loss_share"] == 0.25


# --- the frontier ---------------------------------------------------------------------------


def frontier_summary() -> pl.DataFrame:
    """Four losses of one model: a (cheap, weak), b (dear, strong), c (dominated by b: dearer
    and weaker), d (every run collapsed: no mean), and the pop floor."""
    rows = [
        ("a", 1.0, 100.0, 0.10, "", False),
        ("b", 2.0, 300.0, 0.20, "▲", False),
        ("c", 3.0, 200.0, 0.15, "", False),
        ("d", 0.5, 50.0, None, "", False),
        ("pop", None, None, 0.02, "", True),
    ]
    return pl.DataFrame(
        {
            "dataset": ["toy"] * 5,
            "model": ["sasrec"] * 5,
            "loss": [row[0] for row in rows],
            "baseline": ["a"] * 5,
            "mark": [row[4] for row in rows],
            "ndcg@10_mean": [row[3] for row in rows],
            "ndcg@10_std": [0.01] * 5,
            "train_seconds_per_epoch": [row[1] for row in rows],
            "peak_memory_mb": [row[2] for row in rows],
            "reference": [row[5] for row in rows],
        }
    )


def test_frontier_points_are_the_pareto_optimal_losses(tmp_path: Path) -> None:
    points = frontier_points(frontier_summary())
    assert points["loss"].to_list() == ["a", "b", "c"]  # no floor, no loss without a mean
    assert points["pareto_train_seconds_per_epoch"].to_list() == [True, True, False]
    # by memory c (200 MB, 0.15) sits between a and b: nothing beats it at its cost
    assert points["pareto_peak_memory_mb"].to_list() == [True, True, True]
    assert points["mark"].to_list() == ["", "▲", ""]
    written = frontier(frontier_summary(), tmp_path / "frontier.png")
    assert written.read_bytes().startswith(b"\x89PNG")


def test_report_writes_the_frontier(one_collapsed: Path) -> None:
    written = {path.name for path in render_report(one_collapsed, OPTIONS, baseline="bce")}
    assert "frontier.png" in written


# --- the memory budget ----------------------------------------------------------------------


def test_memory_sizes_parse_in_binary_units() -> None:
    assert parse_memory_size("8GB") == 8 * 2**30
    assert parse_memory_size("512 MiB") == 512 * 2**20
    assert parse_memory_size("1.5g") == int(1.5 * 2**30)
    for bad in ("eight", "0GB", "-1GB", "8PB", ""):
        with pytest.raises(LossbenchError, match="is not a memory size; give a positive"):
            parse_memory_size(bad)


def test_a_run_over_the_budget_is_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting a step's tensors only (the process's own memory varies by machine): with the
    smoke settings bce's step is about 11 MB, improved's about 23 MB (a 2^20-logit chunk)."""
    monkeypatch.setattr(fit_check, "resident_bytes", lambda device: 0)
    args = ["--data-dir", str(tmp_path / "data"), "compare", "--smoke", "--seeds", "0"]
    args += ["--losses", "bce,improved", "--out", str(tmp_path / "out")]
    refused = CliRunner().invoke(app, [*args, "--memory-budget", "15MB"])
    assert isinstance(refused.exception, LossbenchError), refused.output
    output = " ".join(refused.output.split())
    assert "plan: synthetic sasrec + bce: peak about 11 MB of a 15 MB budget" in output
    assert "plan: synthetic sasrec + improved: peak about 23 MB of a 15 MB budget" in output
    assert str(refused.exception) == (
        "synthetic sasrec + improved, seed 0: its peak would be about 23 MB (23 MB a training "
        "step, mostly 1,048,576 softmax logits at once), over the --memory-budget of 15 MB; "
        "lower --softmax-chunk (1,048,576)"
    )
    assert not (tmp_path / "out" / "synthetic").exists()  # nothing trained
    bad = CliRunner().invoke(app, [*args, "--memory-budget", "lots"])
    assert "--memory-budget 'lots' is not a memory size" in str(bad.exception)


def frozen_loss(inputs: LossInputs, params: LossParams) -> torch.Tensor:
    """Finite, and no gradient at all: the model keeps its random weights."""
    return (inputs.hidden * 0.0).sum()


def test_a_collapsed_run_is_flagged_excluded_and_fails_its_expectation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        LOSSES, "frozen", LossSpec(frozen_loss, "all", 0, "learns nothing", needs=CATALOGUE)
    )
    args = ["--data-dir", str(tmp_path / "data"), "compare", "--smoke", "--seeds", "0"]
    args += ["--losses", "bce,frozen", "--max-epochs", "2", "--out", str(tmp_path / "out")]
    args += ["--expect", "bce > frozen", "--expect", "ndcg@10(bce) > 0.05", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "FAIL bce > frozen [synthetic/sasrec]: 1 run of frozen collapsed" in result.stderr
    assert "PASS ndcg@10(bce) > 0.05" in result.stderr
    document = json.loads(result.stdout)
    runs = {run["loss"]: run for run in document["runs"]}
    assert runs["frozen"]["collapsed"] and not runs["bce"]["collapsed"]
    floor = runs["frozen"]["popularity"]["valid"]["ndcg@20"]  # the smoke's validation metric
    assert runs["frozen"]["valid"]["ndcg@20"] <= floor < runs["bce"]["valid"]["ndcg@20"]
    for run in runs.values():  # the cost of every run
        assert run["peak_memory_mb"] > 0 and run["train_seconds_per_epoch"] > 0
        assert 0 < run["loss_share"] < 1 and run["tokens_per_second"] > 0
    rows = {row["loss"]: row for row in document["comparison"]}
    assert rows["frozen"]["seeds"] == 0 and rows["frozen"]["collapsed"] == 1
    assert rows["frozen"]["metrics"]["ndcg@10"]["mean"] is None  # never averaged
    assert rows["pop"]["reference"] and rows["pop"]["metrics"]["ndcg@10"]["mean"] > 0
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| frozen | 0 (+1 collapsed) |" in summary and "| pop (floor) |" in summary
    flagged = pl.read_csv(tmp_path / "out" / "results.csv")
    assert dict(zip(flagged["loss"], flagged["collapsed"], strict=True)) == {
        "bce": False,
        "frozen": True,
    }
    allowed = CliRunner().invoke(app, [*args, "--allow-collapsed"])  # reuses the runs
    assert allowed.exit_code == 1  # judged on frozen's other runs: there are none
    assert "FAIL bce > frozen [synthetic/sasrec]: ndcg@10(bce)" in allowed.stderr
