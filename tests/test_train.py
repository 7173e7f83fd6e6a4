"""`train_run` and `lossbench train` end to end on small synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.data.prepared import PreparedDataset
from lossbench.data.sequences import build_sequence_tensors
from lossbench.data.store import make_synthetic_prepared
from lossbench.errors import LossbenchError
from lossbench.evaluation.metrics import metrics_from_ranks
from lossbench.evaluation.ranking import full_ranking_ranks
from lossbench.losses import LOSSES
from lossbench.training.config import build_config
from lossbench.training.loop import train_run
from lossbench.training.memory import peak_memory_mb, reset_peak_memory

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny() -> PreparedDataset:
    return make_synthetic_prepared(n_users=150, n_items=60, mean_length=12.0, seed=1)


@pytest.fixture(scope="module")
def small() -> PreparedDataset:
    return make_synthetic_prepared(n_users=600, n_items=120, mean_length=20.0, seed=2)


def quick(**overrides: object) -> dict[str, object]:
    return {
        "dataset": "synthetic",
        "max_epochs": 1,
        "batch_size": 64,
        "model_settings": {"hidden_size": 16, "max_len": 20},
        **overrides,
    }


@pytest.fixture(scope="module")
def catalogue() -> PreparedDataset:
    """More items than any loss's default negatives (scaled-ce: 500)."""
    return make_synthetic_prepared(n_users=150, n_items=1200, mean_length=12.0, seed=1)


@pytest.mark.parametrize("loss", sorted(set(LOSSES) - {"mlm"}))
def test_every_loss_trains_sasrec(loss: str, catalogue: PreparedDataset, tmp_path: Path) -> None:
    config = build_config(overrides=quick(loss=loss))
    result = train_run(config, catalogue, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["loss"] == loss
    assert 0.0 <= metrics["test"]["ndcg@10"] <= metrics["test"]["hr@10"] <= 1.0
    assert np.isfinite(result.history[0]["loss"])
    recorded = json.loads((tmp_path / "config.json").read_text())["loss_settings"]
    assert recorded["positions"] == LOSSES[loss].positions
    assert recorded["negatives"] == LOSSES[loss].negatives


def test_bert4rec_trains_with_mlm(tiny: PreparedDataset, tmp_path: Path) -> None:
    config = build_config(overrides=quick(model="bert4rec"))
    result = train_run(config, tiny, tmp_path)
    assert result.metrics["loss"] == "mlm"
    assert result.metrics["test"]["hr@20"] > 0.0


def popularity_ndcg10(dataset: PreparedDataset) -> float:
    tensors = build_sequence_tensors(dataset, max_len=50)
    counts = tensors.item_counts.double()[:, None]  # (n_items + 1, 1): score = popularity
    test = tensors.test
    rows = torch.repeat_interleave(torch.arange(dataset.n_users), torch.diff(test.seen_offsets))
    ranks = full_ranking_ranks(
        torch.ones(dataset.n_users, 1, dtype=torch.float64),
        counts,
        test.targets,
        rows,
        test.seen_items,
    )
    return metrics_from_ranks(ranks)["ndcg@10"]


def test_improved_sasrec_beats_popularity(small: PreparedDataset, tmp_path: Path) -> None:
    config = build_config(
        overrides=quick(
            loss="improved",
            max_epochs=6,
            lr=3e-3,
            model_settings={"hidden_size": 32, "max_len": 30, "dropout": 0.2},
        )
    )
    result = train_run(config, small, tmp_path)
    assert result.metrics["test"]["ndcg@10"] > 1.5 * popularity_ndcg10(small)


def test_same_seed_same_result(tiny: PreparedDataset, tmp_path: Path) -> None:
    config = build_config(overrides=quick(loss="bce", max_epochs=2))
    first = train_run(config, tiny, tmp_path / "a").metrics["test"]
    second = train_run(config, tiny, tmp_path / "b").metrics["test"]
    assert first == second


def test_metrics_recomputed_from_topk_match(tiny: PreparedDataset, tmp_path: Path) -> None:
    config = build_config(overrides=quick(loss="improved", max_epochs=2, save_topk=20))
    result = train_run(config, tiny, tmp_path)
    topk = pl.read_parquet(tmp_path / "topk.parquet")
    assert topk.columns[:3] == ["user", "target", "topk"]  # then the same in original ids
    lists = np.stack(topk["topk"].to_numpy())  # (U, 20)
    hits = lists == topk["target"].to_numpy()[:, None]
    rank = np.where(hits.any(1), hits.argmax(1) + 1, 10**9)
    for k in (1, 5, 10, 20):
        assert np.mean(rank <= k) == pytest.approx(result.metrics["test"][f"hr@{k}"])
        ndcg = np.where(rank <= k, 1 / np.log2(rank + 1), 0.0).mean()
        assert ndcg == pytest.approx(result.metrics["test"][f"ndcg@{k}"])


def test_run_folder_holds_everything(tiny: PreparedDataset, tmp_path: Path) -> None:
    config = build_config(overrides=quick(loss="ce", max_epochs=2))
    train_run(config, tiny, tmp_path)
    names = {path.name for path in tmp_path.iterdir()}
    assert {"config.json", "metrics.json", "history.csv", "model.pt", "test_ranks.parquet"} <= names
    assert not [name for name in names if name.endswith(".tmp")]
    history = pl.read_csv(tmp_path / "history.csv")
    assert history["epoch"].to_list() == [1, 2]
    assert {"loss", "train_seconds", "eval_seconds", "peak_memory_mb", "valid_ndcg@10"} <= set(
        history.columns
    )
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert state["item_embedding.weight"].shape[0] == tiny.n_items + 1


def test_cli_train_on_synthetic(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "--data-dir",
            str(tmp_path / "data"),
            "train",
            "--max-epochs",
            "1",
            "--hidden-size",
            "16",
            "--loss",
            "improved",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "sasrec + improved on synthetic" in result.output
    assert "NDCG" in result.output
    assert (tmp_path / "run" / "metrics.json").is_file()
    # The run names the data it trained on: the prepared dataset's fingerprint.
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["dataset"]["fingerprint"]
    meta = json.loads((tmp_path / "data" / "synthetic" / "prepared" / "meta.json").read_text())
    assert saved == meta["dataset_fingerprint"]
    assert (saved["users"], saved["items"]) == (2000, 500)
    assert saved["interactions"] == meta["n_interactions"] and len(saved["split_sha256"]) == 64


def test_cli_train_threads_sets_and_records_the_thread_count(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    try:
        result = runner.invoke(
            app,
            ["--data-dir", str(tmp_path / "data"), "train", "--max-epochs", "1"]
            + ["--hidden-size", "16", "--threads", "1", "--out", str(tmp_path / "run")],
        )
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["threads"] == 1
    assert saved["environment"]["threads"] == 1


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--loss", "softmax"], "unknown loss 'softmax'"),
        (["--model", "bert4rec", "--loss", "bce"], "can only train with the masked-item loss"),
        (["--model", "gru4rec", "--num-heads", "2"], "has no setting 'num_heads'"),
        (["--dropout", "1.5"], "dropout"),
        (["--validation-metric", "auc"], "unknown metric 'auc'"),
        (["--loss", "mlm"], "needs a bidirectional model"),
        (["--seed", "-1"], "invalid seed"),
        (["--threads", "0"], "--threads"),
    ],
)
def test_cli_train_rejects_bad_settings(args: list[str], words: str, tmp_path: Path) -> None:
    from lossbench.cli import main  # noqa: F401  (main turns errors into messages)

    result = runner.invoke(app, ["--data-dir", str(tmp_path), "train", "--max-epochs", "1", *args])
    assert result.exit_code != 0
    assert words in str(result.exception) + result.output
    assert "training " not in result.output  # refused before the run's header


def test_bad_input_is_one_line_without_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    completed = subprocess.run(
        [sys.executable, "-m", "lossbench", "--data-dir", str(tmp_path), "train", "--loss", "nope"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown loss 'nope'" in lines[0], completed.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["train", "--threads", "0"], "--threads"),
        (["train", "--max-epochs", "many"], "--max-epochs"),
        (["train", "--bogus"], "--bogus"),
        (["pretrain", "--dataset", "lastfm", "--epochs", "0"], "--epochs"),
    ],
)
def test_usage_errors_exit_2_without_traceback(args: list[str], words: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    completed = subprocess.run(
        [sys.executable, "-m", "lossbench", "--data-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr
    assert words in completed.stderr


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc/self/clear_refs"
)
def test_cpu_peak_memory_is_reset_per_run() -> None:
    """A later run must not report an earlier run's peak (runs share one process)."""
    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    big = torch.ones(64 * 2**20)  # 256 MiB, touched
    with_big = peak_memory_mb(cpu)
    del big
    reset_peak_memory(cpu)
    assert peak_memory_mb(cpu) < with_big - 200


def test_negatives_unseen_needs_the_uniform_sampler(tmp_path: Path) -> None:
    assert build_config(overrides={"loss": "bce"}).negatives_unseen  # the study preset's
    assert not build_config(overrides={"loss": "bce", "negatives_unseen": False}).negatives_unseen
    with pytest.raises(LossbenchError, match="drop --negatives-unseen"):
        build_config(overrides={"sampler": "popularity", "negatives_unseen": True})
    grid_file = tmp_path / "unseen.toml"
    grid_file.write_text('sampler = "mixed"\nnegatives_unseen = true\n')
    with pytest.raises(LossbenchError, match="drop --negatives-unseen"):
        build_config(toml_file=grid_file)
    # The preset's unseen negatives are the uniform sampler's: an explicit sampler wins, and
    # the config (so the run's record) says negatives come from anywhere.
    for sampler in ("popularity", "in-batch", "mixed"):
        config = build_config(overrides={"loss": "bce", "sampler": sampler})
        assert (config.sampler, config.negatives_unseen) == (sampler, False)
    config = build_config(overrides={"sampler": "popularity", "negatives_unseen": False})
    assert config.sampler == "popularity"


def test_training_step_draws_negatives_outside_the_users_history() -> None:
    """The loop hands the loss negatives from `UnseenSampler` when `negatives_unseen` is on:
    none of them is an item of its position's user's training history."""
    import dataclasses

    from lossbench.losses.negatives import UnseenSampler
    from lossbench.losses.samplers import build_sampler
    from lossbench.models import MODELS
    from lossbench.training.batches import TrainBatcher
    from lossbench.training.setup import make_model, resolve_loss
    from lossbench.training.step import TrainingStep

    dataset = make_synthetic_prepared(n_users=60, n_items=40, mean_length=25.0, seed=1)
    config = build_config(overrides={"loss": "bce", "negatives": 30, "model": "sasrec"})
    loss = resolve_loss(config)
    bce, captured = loss.spec.fn, []

    def recording(inputs, params):  # type: ignore[no-untyped-def]
        captured.append(inputs.negatives)
        return bce(inputs, params)

    loss = dataclasses.replace(loss, spec=dataclasses.replace(loss.spec, fn=recording))
    model, settings = make_model(config, dataset.n_items)
    tensors = build_sequence_tensors(dataset, max_len=settings["max_len"])
    history = tensors.valid
    sampler = UnseenSampler(history.seen_offsets, history.seen_items, dataset.n_items, "cpu")
    batcher = TrainBatcher(tensors, batch_size=16, positions="all", batching="random", seed=0)
    parts = next(iter(batcher.epoch()))
    counts = tensors.item_counts
    negative_sampler = build_sampler(
        "uniform", 30, counts, counts, torch.device("cpu"), unseen=sampler
    )
    step = TrainingStep(
        model, MODELS["sasrec"], loss, negative_sampler, torch.Generator().manual_seed(0)
    )
    step(parts)
    users = torch.cat([part.position_users() for part in parts])
    negatives = captured[0]
    assert negatives.shape == (len(users), 30)
    offsets, items = history.seen_offsets, history.seen_items
    for user, row in zip(users.tolist(), negatives.tolist(), strict=True):
        seen = set(items[offsets[user] : offsets[user + 1]].tolist())
        assert not seen & set(row)


def test_bf16_runs_on_a_cpu_without_bf16_arithmetic_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without AVX-512 BF16 or AMX, bf16 is emulated (slower than fp32): it still trains, with
    one line saying so, and `auto` picks fp32."""
    from lossbench.training import setup

    monkeypatch.setattr(setup, "cpu_has_bf16_matmul", lambda: False)
    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        monkeypatch.setenv(name, "32")  # what the run sets; restored afterwards
    cpu = torch.device("cpu")
    assert setup.run_precision("auto", cpu) == "fp32"
    assert setup.run_precision("bf16", cpu) == "bf16"
    args = ["--data-dir", str(tmp_path / "data"), "train", "--max-epochs", "1", "--hidden-size"]
    args += ["16", "--device", "cpu", "--precision", "bf16", "--out", str(tmp_path / "run")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (
        " ".join(result.output.split()).count(
            "this CPU has no bf16 arithmetic (AVX-512 BF16 or AMX): --precision bf16 runs "
            "emulated, slower than fp32 (--precision auto picks fp32 here)"
        )
        == 1
    )
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["precision"] == "bf16"


def test_auto_precision_follows_the_cpu_and_is_recorded_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lossbench.training import setup
    from lossbench.training.entry import plan_entry

    config = build_config(overrides={"device": "cpu", "precision": "auto"})
    assert build_config(overrides={}).precision == "fp32"  # the default stays fp32
    for has_bf16, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(setup, "cpu_has_bf16_matmul", lambda has=has_bf16: has)
        entry = plan_entry(config, tmp_path)
        assert entry.config.precision == expected
        assert setup.precision_notice(expected, entry.device) is None
    assert setup.precision_notice("fp32", torch.device("cpu")) is None


def test_a_log_file_gets_one_line_per_epoch(tiny: PreparedDataset, tmp_path: Path) -> None:
    """Off a terminal a live bar shows only its last frame, cut to 80 columns: the log gets
    one complete line per epoch instead."""
    import io

    from rich.console import Console

    log = io.StringIO()
    config = build_config(overrides=quick(loss="bce", max_epochs=3, patience=5))
    train_run(config, tiny, tmp_path, Console(file=log, width=80))
    lines = [line for line in log.getvalue().splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all(config.validation_metric in line and "(best " in line for line in lines)
    assert "━" not in log.getvalue()  # no bar frames in a log


def test_shuffled_training_is_recorded_and_labelled(tiny: PreparedDataset, tmp_path: Path) -> None:
    from lossbench.compare.report.results import run_row

    ordered = train_run(build_config(overrides=quick(loss="improved")), tiny, tmp_path / "a")
    shuffled_config = build_config(overrides=quick(loss="improved", shuffle_train=True))
    shuffled = train_run(shuffled_config, tiny, tmp_path / "b")
    assert shuffled.config["config"]["shuffle_train"] is True
    assert shuffled.history[0]["loss"] != ordered.history[0]["loss"]  # other training data
    assert run_row(tmp_path / "a")["loss"] == "improved"
    row = run_row(tmp_path / "b")
    assert (row["loss"], row["loss_name"], row["shuffle_train"]) == (
        "improved shuffled",
        "improved",
        True,
    )


def test_bf16_on_cpu_bounds_onednn_kernel_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    """oneDNN caches a kernel per bf16 matmul shape (1,024 by default); the packed encoder's
    shapes change every batch, so unbounded caches doubled a bf16 epoch's memory."""
    import os

    from lossbench.training import setup

    names = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    setup.bound_onednn_caches("fp32", torch.device("cpu"))
    assert not any(name in os.environ for name in names)  # fp32 runs as before
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "7")  # the user's own setting wins
    setup.bound_onednn_caches("bf16", torch.device("cpu"))
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == setup.ONEDNN_CACHE_ENTRIES
    assert os.environ["LRU_CACHE_CAPACITY"] == "7"
