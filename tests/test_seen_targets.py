"""`--seen-targets miss|rank`: a validation or test target the user already has.

Hand-computed ranks and metrics for each rule (full and sampled ranking), `rank` against the
evaluation's outputs from before the rule existed, and end to end on synthetic data whose
users re-consume items.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.data.prepared import PreparedDataset
from lossbench.data.repeats import in_history, repeated_target_users, repeated_targets
from lossbench.data.sequences import EvaluationSet, build_sequence_tensors
from lossbench.data.store import make_synthetic_prepared
from lossbench.evaluation.metrics import NOT_FOUND_RANK, metrics_from_ranks, per_user_metric
from lossbench.evaluation.ranking import sample_eval_candidates
from lossbench.evaluation.seen import SeenTargets
from lossbench.training.config import build_config
from lossbench.training.evaluate import Evaluator
from lossbench.training.loop import train_run
from repeat_fixture import MAX_LEN, N_EVAL_NEGATIVES, N_ITEMS, LastItemsModel, repeat_dataset

CPU = torch.device("cpu")
BEFORE = Path(__file__).parent / "data" / "seen_targets_rank.json"
NF = NOT_FOUND_RANK


class OneDimensional(nn.Module):
    """Every user's hidden state is 1, so item i scores its embedding: 5, 1, 3, 3, 0."""

    n_items = 5
    bidirectional = False

    def __init__(self) -> None:
        super().__init__()
        self.item_embedding = nn.Embedding(6, 1)
        with torch.no_grad():
            self.item_embedding.weight.copy_(torch.tensor([[9.0], [5], [1], [3], [3], [0]]))

    def predict_hidden(self, item_ids: Tensor) -> Tensor:
        return torch.ones(len(item_ids), 1)


def hand_set() -> EvaluationSet:
    """User 1 had [1, 2] and wants 3 (new); user 2 had [3, 1] and wants 1 again; user 3 had
    [4] and wants 4 again."""
    return EvaluationSet(
        lengths=torch.tensor([2, 2, 1]),
        targets=torch.tensor([3, 1, 4]),
        seen_offsets=torch.tensor([0, 2, 4, 5]),
        seen_items=torch.tensor([1, 2, 3, 1, 4]),
    )


def hand_ranks(
    seen_targets: SeenTargets, exclude_seen: bool = True, sampled: bool = False, topk: int = 0
) -> tuple[list[int], list[list[int]] | None]:
    # candidates: unseen and never the target (user 1: 4, 5; user 2: 2, 5; user 3: 2, 3)
    candidates = torch.tensor([[4, 5], [2, 5], [2, 3]]) if sampled else None
    evaluator = Evaluator(hand_set(), 2, exclude_seen, CPU, candidates, seen_targets)
    result = evaluator.evaluate(OneDimensional(), topk=topk)
    return result.ranks.tolist(), None if result.topk is None else result.topk.tolist()


def test_hand_computed_full_ranking_under_each_rule() -> None:
    # rank: user 1 ranks 3 (3) among unseen 3, 4 (3, a tie: against), 5 -> 2; user 2's
    # target 1 (5) beats the unseen 2, 4, 5 -> 1; user 3's 4 ties with 3, below 1 -> 3.
    assert hand_ranks("rank") == ([2, 1, 3], None)
    assert hand_ranks("miss") == ([2, NF, NF], None)
    for rule in ("miss", "rank"):  # --keep-seen masks nothing: user 1's 3 is below 1 and 4
        assert hand_ranks(rule, exclude_seen=False)[0] == [3, 1, 3]
    # the recommended lists: a seen target is never recommended under miss
    assert hand_ranks("rank", topk=2)[1] == [[4, 3], [1, 4], [1, 3]]
    assert hand_ranks("miss", topk=2)[1] == [[4, 3], [4, 2], [1, 3]]


def test_hand_computed_sampled_ranking_under_each_rule() -> None:
    # user 1: 3 (3) vs 4 (3, tie), 5 -> 2; user 2: 1 (5) vs 2, 5 -> 1; user 3: 4 vs 2, 3 (tie) -> 2
    assert hand_ranks("rank", sampled=True)[0] == [2, 1, 2]
    assert hand_ranks("miss", sampled=True)[0] == [2, NF, NF]
    assert hand_ranks("miss", exclude_seen=False, sampled=True)[0] == [2, 1, 2]


def test_hand_computed_metrics_count_a_miss_as_zero() -> None:
    ranked = metrics_from_ranks(np.array([2, 1, 3]), ks=(1, 5, 10))
    missed = metrics_from_ranks(np.array([2, NF, NF]), ks=(1, 5, 10))
    assert ranked["hr@1"] == pytest.approx(1 / 3) and missed["hr@1"] == 0.0
    assert ranked["hr@10"] == 1.0 and missed["hr@10"] == pytest.approx(1 / 3)
    assert ranked["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1 + 0.5) / 3, rel=1e-15)
    assert missed["ndcg@10"] == pytest.approx((1 / math.log2(3)) / 3, rel=1e-15)
    assert ranked["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 3) / 3, rel=1e-15)
    assert missed["mrr"] == pytest.approx((1 / 2) / 3, rel=1e-15)  # exactly 0 from the misses
    assert per_user_metric(np.array([NF]), "mrr").tolist() == [0.0]


def evaluate_fixture(
    split: str, mode: str, exclude_seen: bool, seen_targets: SeenTargets
) -> tuple[list[int], list[list[int]] | None, np.ndarray]:
    """Ranks and top 5 on the repeat fixture, and which users' targets are in the history."""
    evaluation_set = getattr(build_sequence_tensors(repeat_dataset(), MAX_LEN), split)
    candidates = None
    if mode == "sampled":
        candidates = sample_eval_candidates(
            N_EVAL_NEGATIVES,
            N_ITEMS,
            evaluation_set.seen_offsets,
            evaluation_set.seen_items,
            evaluation_set.targets,
            seed=1 if split == "valid" else 2,
        )
    evaluator = Evaluator(evaluation_set, 7, exclude_seen, CPU, candidates, seen_targets)
    result = evaluator.evaluate(LastItemsModel(), topk=5 if mode == "full" else 0)
    repeated = in_history(
        evaluation_set.seen_offsets.numpy(),
        evaluation_set.seen_items.numpy(),
        evaluation_set.targets.numpy(),
    )
    topk = None if result.topk is None else result.topk.tolist()
    return result.ranks.tolist(), topk, repeated


@pytest.mark.parametrize("split", ["valid", "test"])
@pytest.mark.parametrize("mode", ["full", "sampled"])
def test_rank_reproduces_the_evaluation_before_the_rule(split: str, mode: str) -> None:
    before = json.loads(BEFORE.read_text())
    for exclude_seen, kept in ((True, "exclude"), (False, "keep")):
        expected = before[f"{split}/{mode}/{kept}"]
        rules: tuple[SeenTargets, ...] = ("rank",) if exclude_seen else ("rank", "miss")
        for rule in rules:
            ranks, topk, repeated = evaluate_fixture(split, mode, exclude_seen, rule)
            assert ranks == expected["ranks"]
            assert topk == expected.get("topk")
            assert metrics_from_ranks(np.array(ranks)) == expected["metrics"]  # exactly
    assert 0.3 < repeated.mean() < 0.7  # the fixture does repeat targets


@pytest.mark.parametrize("split", ["valid", "test"])
@pytest.mark.parametrize("mode", ["full", "sampled"])
def test_miss_equals_counting_repeated_users_as_misses(split: str, mode: str) -> None:
    ranked, ranked_topk, repeated = evaluate_fixture(split, mode, True, "rank")
    missed, missed_topk, _ = evaluate_fixture(split, mode, True, "miss")
    expected = np.where(repeated, NF, np.array(ranked))
    assert missed == expected.tolist()
    per_user = per_user_metric(np.array(ranked), "ndcg@10")
    by_hand = per_user[~repeated].sum() / len(per_user)
    assert metrics_from_ranks(np.array(missed))["ndcg@10"] == pytest.approx(by_hand, rel=1e-12)
    if missed_topk is not None and ranked_topk is not None:
        targets = getattr(build_sequence_tensors(repeat_dataset(), MAX_LEN), split).targets
        for user, top in enumerate(missed_topk):
            assert int(targets[user]) not in top or not repeated[user]


def test_repeated_target_shares_by_hand() -> None:
    # user 1: [1, 2 | 1]: test repeats; user 2: [3 | 4 | 4]: test repeats the valid item;
    # user 3: [5 | 5 | 6]: valid repeats; user 4: nothing repeats.
    dataset = PreparedDataset(
        name="hand",
        n_items=9,
        train_offsets=np.array([0, 1, 2, 3, 5]),
        train_items=np.array([1, 3, 5, 7, 8]),
        valid_items=np.array([2, 4, 5, 9]),
        test_items=np.array([1, 4, 6, 2]),
    )
    masks = repeated_target_users(dataset)
    assert masks["valid"].tolist() == [False, False, True, False]
    assert masks["test"].tolist() == [True, True, False, False]
    assert repeated_targets(dataset) == {
        "valid": {"users": 1, "share": 0.25},
        "test": {"users": 2, "share": 0.5},
    }


def test_synthetic_repeats_recent_items_only_when_asked() -> None:
    plain = make_synthetic_prepared(n_users=300, n_items=80, mean_length=12.0, seed=4)
    assert repeated_targets(plain)["test"]["users"] == 0
    repeating = make_synthetic_prepared(
        n_users=300, n_items=80, mean_length=12.0, repeat_prob=0.4, seed=4
    )
    shares = repeated_targets(repeating)
    assert 0.3 < shares["valid"]["share"] < 0.5 and 0.3 < shares["test"]["share"] < 0.5
    # a repeated valid target is one of the last 3 training items
    ends = repeating.train_offsets[1:]
    last_three = np.stack([repeating.train_items[ends - back] for back in (1, 2, 3)], axis=1)
    repeated = repeated_target_users(repeating)["valid"]
    assert (last_three[repeated] == repeating.valid_items[repeated, None]).any(axis=1).all()


@pytest.fixture(scope="module")
def repeating() -> PreparedDataset:
    return make_synthetic_prepared(
        n_users=400, n_items=100, mean_length=15.0, repeat_prob=0.3, seed=3
    )


def one_epoch(
    dataset: PreparedDataset, tmp_path: Path, **overrides: object
) -> tuple[dict[str, Any], np.ndarray]:
    """One epoch of a small SASRec (the weights are the same whatever the evaluation rule)."""
    config = build_config(
        overrides={
            "dataset": "synthetic",
            "loss": "improved",
            "max_epochs": 1,
            "batch_size": 64,
            "model_settings": {"hidden_size": 16, "max_len": 20},
            **overrides,
        }
    )
    result = train_run(config, dataset, tmp_path)
    ranks = pl.read_parquet(tmp_path / "test_ranks.parquet")["rank"].to_numpy()
    return result.metrics, ranks


@pytest.mark.parametrize("eval_negatives", [0, 20])
def test_rank_inflates_the_metric_on_repeat_consumption_and_miss_does_not(
    repeating: PreparedDataset, tmp_path: Path, eval_negatives: int
) -> None:
    ranked, ranked_ranks = one_epoch(
        repeating, tmp_path / "rank", seen_targets="rank", eval_negatives=eval_negatives
    )
    missed, missed_ranks = one_epoch(
        repeating, tmp_path / "miss", eval_negatives=eval_negatives
    )  # the default rule
    repeated = repeated_target_users(repeating)["test"]
    assert 0.25 < repeated.mean() < 0.35
    ndcg = per_user_metric(ranked_ranks, "ndcg@10")
    # the model learned to score recent items: their targets look far easier under rank
    assert ndcg[repeated].mean() > 1.5 * ndcg[~repeated].mean()
    assert ranked["test"]["ndcg@10"] > 1.2 * missed["test"]["ndcg@10"]
    assert ranked["valid"]["ndcg@10"] > missed["valid"]["ndcg@10"]
    # miss: the same ranks for fresh targets, repeated ones not found
    assert (missed_ranks == np.where(repeated, NF, ranked_ranks)).all()
    assert missed["test"]["ndcg@10"] == pytest.approx(ndcg[~repeated].sum() / len(ndcg))
    assert missed["seen_targets"] == "miss" and ranked["seen_targets"] == "rank"
    recorded = json.loads((tmp_path / "rank" / "config.json").read_text())["config"]
    assert recorded["seen_targets"] == "rank" and recorded["exclude_seen"] is True


def synthetic_with_repeats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry whose synthetic dataset re-consumes items; returns the data folder."""
    registry = tmp_path / "datasets.toml"
    registry.write_text(
        '[synthetic]\nsource = "test"\nformat = "synthetic"\n'
        "[synthetic.generator]\nn_users = 200\nn_items = 60\nmean_length = 10\n"
        "repeat_prob = 0.3\nseed = 1\n[synthetic.protocol]\ndedup = false\n"
    )
    monkeypatch.setenv("LOSSBENCH_DATASETS", str(registry))
    return tmp_path / "data"


def test_preprocess_and_datasets_show_the_repeat_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = synthetic_with_repeats(tmp_path, monkeypatch)
    runner = CliRunner()
    result = runner.invoke(app, ["--data-dir", str(data_dir), "preprocess", "synthetic"])
    assert result.exit_code == 0, result.output
    meta = json.loads((data_dir / "synthetic" / "prepared" / "meta.json").read_text())
    shares = meta["repeated_targets"]
    assert 0.2 < shares["test"]["share"] < 0.4 and shares["test"]["users"] > 40
    assert "targets already in the user's history" in result.output
    assert f"{shares['test']['users']:,}" in result.output
    assert f"{shares['test']['share']:.1%}" in result.output
    assert f"{shares['valid']['share']:.1%}" in result.output
    listing = runner.invoke(app, ["--data-dir", str(data_dir), "datasets"], terminal_width=200)
    assert f"test {shares['test']['share']:.1%}" in listing.output


def test_compare_names_the_rule_and_the_users_it_concerns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = synthetic_with_repeats(tmp_path, monkeypatch)
    args = ["--data-dir", str(data_dir), "compare", "--out", str(tmp_path / "out")]
    args += ["--losses", "improved", "--seeds", "0", "--max-epochs", "1", "--hidden-size", "8"]
    args += ["--num-layers", "1", "--num-heads", "1", "--max-len", "10", "--permutations", "9"]
    result = CliRunner().invoke(app, [*args, "--seen-targets", "rank"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # rich wraps the line at the console's width
    assert output.count("already in their history") == 1
    meta = json.loads((data_dir / "synthetic" / "prepared" / "meta.json").read_text())
    test, valid = meta["repeated_targets"]["test"], meta["repeated_targets"]["valid"]
    assert (
        f"synthetic: {test['users']:,} test users ({test['share']:.1%}) and {valid['users']:,} "
        "validation users" in output
    )
    assert "history; --seen-targets rank still ranks them" in output
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "which is still ranked (--seen-targets rank" in summary
    runs = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert runs["seen_targets"].to_list() == ["rank"]
    refused = CliRunner().invoke(app, args)  # the default rule: trained with another one
    assert "seen_targets rank -> miss" in str(refused.exception)
    again = CliRunner().invoke(app, [*args, "--retrain-changed"])
    assert again.exit_code == 0, again.output
    output = " ".join(again.output.split())
    assert "retraining it" in output and "--seen-targets miss counts them as not found" in output
    assert (
        "a target among them counts as not found" in (tmp_path / "out" / "summary.md").read_text()
    )


def test_seen_targets_is_validated_and_read_from_toml(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('seen_targets = "rank"\n')
    assert build_config(toml_file=toml).seen_targets == "rank"
    assert build_config(toml_file=toml, overrides={"exclude_seen": False}).seen_rule == "keep"
    assert build_config().seen_rule == "miss"
    result = CliRunner().invoke(
        app, ["--data-dir", str(tmp_path), "train", "--seen-targets", "sometimes"]
    )
    assert result.exit_code != 0 and "training " not in result.output
    assert "invalid seen_targets" in str(result.exception) and "'miss' or 'rank'" in str(
        result.exception
    )


MIRROR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mirror"


@pytest.mark.skipif(
    not MIRROR.is_dir(), reason=f"real data mirror {MIRROR} is absent (../shared/data/mirror)"
)
def test_the_published_datasets_have_no_repeated_targets(tmp_path: Path) -> None:
    """So `miss` and `rank` agree on them: numbers measured before the rule stay valid."""
    names = ["lastfm", "beauty-s3rec", "beauty", "ml-latest-small"]
    runner = CliRunner()
    downloaded = runner.invoke(
        app, ["--data-dir", str(tmp_path), "download", *names, "--mirror", str(MIRROR)]
    )
    assert downloaded.exit_code == 0, downloaded.output
    prepared = runner.invoke(app, ["--data-dir", str(tmp_path), "preprocess", *names])
    assert prepared.exit_code == 0, prepared.output
    for name in names:
        meta = json.loads((tmp_path / name / "prepared" / "meta.json").read_text())
        assert meta["repeated_targets"] == {
            "valid": {"users": 0, "share": 0.0},
            "test": {"users": 0, "share": 0.0},
        }


def test_footnote_names_the_rule_of_older_and_mixed_runs(tmp_path: Path) -> None:
    from lossbench.compare.report.results import results_frame
    from lossbench.compare.report.summary import SummaryOptions, summarize
    from lossbench.compare.report.tables import legend
    from test_compare_report import write_fake_run

    ranks = np.arange(1, 301) % 40 + 1
    older = write_fake_run(tmp_path, "bce", 0, ranks)  # recorded before the rule existed
    record = json.loads((older / "config.json").read_text())
    del record["config"]["seen_targets"]
    (older / "config.json").write_text(json.dumps(record))
    newer = write_fake_run(tmp_path, "improved", 0, ranks)
    metrics = json.loads((newer / "metrics.json").read_text())
    (newer / "metrics.json").write_text(json.dumps({**metrics, "seen_targets": "miss"}))
    runs = results_frame([older, newer])
    assert runs["seen_targets"].to_list() == ["rank", "miss"]  # sorted by loss: bce first
    options = SummaryOptions(n_permutations=9)
    both = summarize(runs, {}, options)
    assert "Runs differ in their seen-items rule (miss, rank)" in legend(options, both)
    only_older = summarize(runs.filter(pl.col("loss") == "bce"), {}, options)
    assert legend(options, only_older).endswith(
        "which is still ranked (--seen-targets rank: rewards repeating the history)."
    )


def test_score_blocks_follow_available_memory_and_change_no_rank(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lossbench.training import evaluate as evaluate_module

    # 1M items: a block's scores take 8 MB a user (two fp32 copies), 1/8 of memory for them.
    assert evaluate_module.score_block_rows(1_000_000, 256, None) == 256
    assert evaluate_module.score_block_rows(1_000_000, 256, 64 * 8_000_000) == 8
    assert evaluate_module.score_block_rows(1_000_000, 256, 1) == 1  # never below one user
    assert evaluate_module.score_block_rows(100, 256, 8 << 30) == 256  # never above the batch
    real = evaluate_module.score_block_rows
    blocks: list[int] = []

    def tiny_memory(n_items: int, batch_size: int, available: int | None) -> int:
        blocks.append(real(n_items, batch_size, 8 * 8 * (n_items + 1) * 2))
        return blocks[-1]

    for mode in ("full", "sampled"):
        wide = evaluate_fixture("test", mode, True, "miss")
        monkeypatch.setattr(evaluate_module, "score_block_rows", tiny_memory)
        narrow = evaluate_fixture("test", mode, True, "miss")
        monkeypatch.undo()
        assert narrow[0] == wide[0] and narrow[1] == wide[1]
    assert blocks == [2, 2]  # two users a block instead of 7


def test_blocks_bound_the_seen_pairs_and_change_no_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    from lossbench.training import evaluate as evaluate_module

    counts = torch.tensor([1, 2, 3, 10, 1, 1])  # seen pairs of each row, in length order
    assert evaluate_module.block_bounds(counts, 4, None) == [(0, 4), (4, 6)]
    # at most 4 rows and 6 pairs a block; the row of 10 is a block alone
    assert evaluate_module.block_bounds(counts, 4, 6) == [(0, 3), (3, 4), (4, 6)]
    assert evaluate_module.block_bounds(counts[:0], 4, 6) == []
    # 1/8 of the memory available, 64 bytes a pair
    assert evaluate_module.seen_pair_budget(64 * 8 * 1000) == 1000
    assert evaluate_module.seen_pair_budget(1) == 1  # never below one pair
    assert evaluate_module.seen_pair_budget(None) is None
    pair_bounds: list[int] = []
    real = evaluate_module.seen_pair_budget

    def few_pairs(available: int | None) -> int | None:
        pair_bounds.append(5)
        return 5 if available is not None else real(available)

    for mode in ("full", "sampled"):
        wide = evaluate_fixture("test", mode, True, "miss")
        monkeypatch.setattr(evaluate_module, "seen_pair_budget", few_pairs)
        narrow = evaluate_fixture("test", mode, True, "miss")
        monkeypatch.undo()
        assert narrow[0] == wide[0] and narrow[1] == wide[1]
    assert pair_bounds == [5, 5]
    evaluator = Evaluator(
        build_sequence_tensors(repeat_dataset(), MAX_LEN).test, 7, True, CPU, None, "miss"
    )
    monkeypatch.setattr(evaluate_module, "seen_pair_budget", lambda available: 5)
    blocks = evaluator.blocks(N_ITEMS)
    assert len(blocks) > -(-len(evaluator.targets) // 7)  # more blocks than the rows alone ask
    for start, stop in blocks:
        assert stop - start == 1 or int(evaluator.seen_counts[start:stop].sum()) <= 5
