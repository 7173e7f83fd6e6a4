"""`lossbench reproduce`: the tables as data, their plans, pre-training as a reusable step, and
the report beside the published numbers (from constructed run folders with known ranks)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.compare.report.summary import SummaryOptions
from lossbench.data.prepared import PreparedDataset
from lossbench.data.store import make_synthetic_prepared
from lossbench.errors import LossbenchError
from lossbench.losses import LOSSES
from lossbench.models import MODELS
from lossbench.models.s3rec import S3RecConfig
from lossbench.reproduce.plan import (
    REPRODUCTION_FILE,
    build_reproduction,
    run_reproduction,
)
from lossbench.reproduce.pretraining import PRETRAIN_RECORD, step_state
from lossbench.reproduce.published import published_for, published_value
from lossbench.reproduce.report import render_reproduction
from lossbench.reproduce.tables import TABLES, arm_entry, get_table, pretrain_epochs
from lossbench.training.presets import PRESETS
from reproduce_fixture import save_fake_table2

OPTIONS = SummaryOptions(n_permutations=999)


def test_tables_name_known_models_losses_and_presets() -> None:
    for table in TABLES.values():
        assert table.preset in PRESETS
        for cell in table.cells:
            assert cell.model in MODELS and cell.loss in LOSSES
        for model in table.pretrained:
            assert MODELS[model].pretrainable
        for model in table.models:  # each model's first cell is its original loss
            assert table.baseline_of(model).loss == MODELS[model].default_loss


def test_every_published_cell_but_bce_with_1000_negatives_is_a_table_cell() -> None:
    for name, table in TABLES.items():
        keys = {cell.key for cell in table.cells}
        for row in published_for(name):
            if row.negatives != 1000:
                assert (row.model, row.loss, row.negatives) in keys, row
    table2 = get_table("table2")
    for dataset in table2.published_datasets:  # every cell of table 2 is published
        assert all(
            published_value("table2", dataset, c.model, c.loss, "hr@10") for c in table2.cells
        )


def test_a_cell_is_a_plain_loss_unless_it_names_other_negatives() -> None:
    sweep = get_table("loss-sweep")
    entries = [arm_entry(cell, LOSSES[cell.loss].negatives) for cell in sweep.cells]
    assert entries[:4] == [
        "bce",
        {"loss": "bce", "negatives": 10},
        {"loss": "bce", "negatives": 100},
        "bpr",
    ]
    assert pretrain_epochs("lastfm") == 150 and pretrain_epochs("yelp") == 100


def test_table2_plan_pretrains_s3rec_and_keeps_each_models_settings(tmp_path: Path) -> None:
    reproduction = build_reproduction(
        get_table("table2"), ["lastfm"], [0, 1], {"model_settings": {"num_heads": 1}}, tmp_path
    )
    entries = reproduction.plan.entries
    assert len(entries) == 16
    assert [(r.cell.model, r.label, r.baseline) for r in reproduction.rows][::2] == [
        ("gru4rec", "ce", "ce"),
        ("srgnn", "ce", "ce"),
        ("sasrec", "bce", "bce"),
        ("s3rec", "bce", "bce"),
    ]
    (step,) = reproduction.steps
    assert step.epochs == 150 and step.folder == tmp_path / "lastfm/s3rec/pretrain-150-epochs"
    for entry in entries:
        assert entry.config.preset == "study-s3rec"
        assert entry.config.init == (step.checkpoint if entry.config.model == "s3rec" else None)
    gru4rec = next(e for e in entries if e.config.model == "gru4rec")
    assert gru4rec.config.model_settings["hidden_size"] == 128  # the preset's own GRU
    assert "num_heads" not in gru4rec.config.model_settings  # a flag it does not have
    sasrec = next(e for e in entries if e.config.model == "sasrec")
    assert sasrec.config.model_settings["num_heads"] == 1
    assert reproduction.given == {"num_heads": 1}
    quick = build_reproduction(get_table("table2"), ["lastfm"], [0], {}, tmp_path, 2)
    assert quick.steps[0].folder.name == "pretrain-2-epochs"


def test_loss_sweep_names_each_bce_by_its_negatives(tmp_path: Path) -> None:
    reproduction = build_reproduction(get_table("loss-sweep"), ["beauty-s3rec"], [0], {}, tmp_path)
    assert [row.label for row in reproduction.rows] == [
        "bce",
        "bce 10 negatives",
        "bce 100 negatives",
        "bpr",
        "bpr-max",
        "top1",
        "top1-max",
        "ce",
        "improved",
    ]
    assert {row.baseline for row in reproduction.rows} == {"bce"}
    trained = {entry.label: entry.loss.negatives for entry in reproduction.plan.entries}
    assert trained["beauty-s3rec sasrec + bce, seed 0"] == 1
    assert trained["beauty-s3rec sasrec + bce 100 negatives, seed 0"] == 100
    assert trained["beauty-s3rec sasrec + top1, seed 0"] == 10
    folders = {entry.run_dir.parent.name for entry in reproduction.plan.entries}
    assert {"bce", "bce-10-negatives", "bce-100-negatives"} <= folders
    assert reproduction.plan.entries[0].config.preset == "study-s3rec"


def test_plan_errors_are_one_liners(tmp_path: Path) -> None:
    table2 = get_table("table2")
    with pytest.raises(LossbenchError, match="own preset"):
        build_reproduction(table2, ["lastfm"], [0], {"preset": "study-aprec"}, tmp_path)
    with pytest.raises(LossbenchError, match="has the setting 'gate'"):
        build_reproduction(table2, ["lastfm"], [0], {"model_settings": {"gate": 1}}, tmp_path)
    with pytest.raises(LossbenchError, match="unknown table 'table9'"):
        get_table("table9")


def tiny(name: str, split: object = None) -> PreparedDataset:
    return make_synthetic_prepared(n_users=40, n_items=30, mean_length=8, n_attributes=6, seed=0)


TINY = {"max_epochs": 1, "model_settings": {"hidden_size": 8, "num_layers": 1, "num_heads": 1}}


def test_tiny_table2_pretrains_once_then_reuses_everything(tmp_path: Path) -> None:
    reproduction = build_reproduction(get_table("table2"), ["synthetic"], [0], TINY, tmp_path, 1)
    first = io.StringIO()
    trained = run_reproduction(reproduction, tiny, Console(file=first, width=200))
    assert len(trained) == 8
    assert "synthetic s3rec pre-training, 1 epoch ->" in first.getvalue()
    (step,) = reproduction.steps
    assert step_state(step) == "finished"
    weights = step.checkpoint.stat().st_mtime_ns
    again = io.StringIO()
    assert run_reproduction(reproduction, tiny, Console(file=again, width=200)) == []
    assert "reusing 8 finished run(s) of 8" in again.getvalue()
    assert "pre-training" not in again.getvalue()
    # A lost fine-tuning run is trained again from the pre-training, which is reused.
    s3rec_run = next(e for e in reproduction.plan.entries if e.config.model == "s3rec").run_dir
    (s3rec_run / "metrics.json").unlink()
    third = io.StringIO()
    assert run_reproduction(reproduction, tiny, Console(file=third, width=200)) == [s3rec_run]
    assert f"reusing {step.label}" in third.getvalue()
    assert step.checkpoint.stat().st_mtime_ns == weights
    record = json.loads((tmp_path / REPRODUCTION_FILE).read_text())
    assert record["table"] == "table2" and len(record["rows"]) == 8
    report = render_reproduction(tmp_path, OPTIONS, Console(file=io.StringIO()))
    runs = pl.read_parquet(tmp_path / "results.parquet")
    collapsed = dict(  # tiny one-epoch runs may be no better than popularity: not averaged
        runs.group_by("model", "loss")
        .agg(pl.col("collapsed").sum())
        .select(pl.concat_str("model", "loss", separator="/"), "collapsed")
        .rows()
    )
    assert [r.seeds + collapsed[f"{r.model}/{r.label}"] for r in report.results] == [1] * 8
    assert report.far == []  # nothing is published for synthetic
    assert "The study published no table2 numbers for synthetic" in " ".join(report.notes)
    assert "pre-trained for 1 epoch; the study pre-trained for 150 epochs" in " ".join(report.notes)


def test_pretraining_continues_a_partial_step(tmp_path: Path) -> None:
    from lossbench.reproduce.pretraining import run_step
    from lossbench.training.pretrain import pretrain_s3rec

    reproduction = build_reproduction(get_table("table2"), ["synthetic"], [0], TINY, tmp_path, 2)
    (step,) = reproduction.steps
    step.folder.mkdir(parents=True)
    (step.folder / PRETRAIN_RECORD).write_text(json.dumps(step.record()))
    assert isinstance(step.model_settings, S3RecConfig)
    pretrain_s3rec(tiny("synthetic"), step.model_settings, step.folder, 1, 1, step.seed)
    step.checkpoint.unlink()  # as if stopped after the first epoch's checkpoint
    assert step_state(step) == "partial"
    output = io.StringIO()
    run_step(step, tiny, "cpu", Console(file=output, width=200))
    assert "continuing synthetic s3rec pre-training, 2 epochs from pretrain-epoch1.pt" in (
        output.getvalue()
    )
    history = json.loads((step.folder / "pretrain-history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2] and step_state(step) == "finished"


def test_pretraining_with_other_settings_is_refused_or_moved_aside(tmp_path: Path) -> None:
    reproduction = build_reproduction(get_table("table2"), ["synthetic"], [0], TINY, tmp_path, 1)
    (step,) = reproduction.steps
    step.folder.mkdir(parents=True)
    (step.folder / PRETRAIN_RECORD).write_text(json.dumps({**step.record(), "epochs": 9}))
    with pytest.raises(LossbenchError, match="hold another pre-training; add --retrain-changed"):
        run_reproduction(reproduction, tiny)
    assert not (tmp_path / "synthetic" / "gru4rec").exists()  # refused before anything trained
    output = io.StringIO()
    run_reproduction(reproduction, tiny, Console(file=output, width=200), retrain_changed=True)
    assert "held another pre-training: moved to" in output.getvalue()
    assert step_state(step) == "finished"
    assert len(list(step.folder.parent.glob("pretrain-1-epochs.replaced-*"))) == 1


@pytest.fixture
def saved_table2(tmp_path: Path) -> Path:
    return save_fake_table2(tmp_path / "out")


def test_report_puts_each_cell_beside_the_study(saved_table2: Path) -> None:
    report = render_reproduction(saved_table2, OPTIONS, Console(file=io.StringIO()))
    cells = {(r.model, r.label): r for r in report.results}
    sasrec_bce = cells[("sasrec", "bce")]
    assert sasrec_bce.means["hr@10"] == pytest.approx(0.020)
    assert sasrec_bce.stds["hr@10"] == pytest.approx(0.0)
    assert sasrec_bce.published == {"hr@10": 0.0404, "ndcg@10": 0.0223}
    assert sasrec_bce.difference("hr@10") == pytest.approx(100 * (0.020 - 0.0404) / 0.0404)
    assert sasrec_bce.direction == "—" and sasrec_bce.original
    assert cells[("sasrec", "improved")].direction.startswith("yes ▲ (+193.1%, p = ")
    assert cells[("s3rec", "improved")].direction.startswith("opposite ▼ (-5")
    assert [line.split(":")[0] for line in report.far] == [
        "lastfm sasrec + bce",
        "lastfm s3rec + improved",
    ]
    assert "HR@10 0.0200 against 0.0404 (-50.5%)" in report.far[0]
    markdown = (saved_table2 / "reproduction.md").read_text()
    assert "| sasrec | bce (original) | 2 | 0.0200 ± 0.0000 | 0.0404 | -50.5% |" in markdown


def test_reproduce_command_reuses_the_runs_and_expects_published(saved_table2: Path) -> None:
    base = ["reproduce", "table2", "--dataset", "lastfm", "--seeds", "0,1"]
    base += ["--out", str(saved_table2), "--permutations", "99"]
    runner = CliRunner()
    result = runner.invoke(app, [*base, "--markdown", str(saved_table2.parent / "t2.md")])
    assert result.exit_code == 0, result.output
    assert "reusing 16 finished run(s) of 16" in result.output
    assert "0.0404" in result.output and "far from the study" in result.output
    assert (saved_table2.parent / "t2.md").read_text().startswith("# Table 2")
    failing = runner.invoke(app, [*base, "--expect-published"])
    assert failing.exit_code == 1, failing.output
    loose = runner.invoke(app, [*base, "--expect-published", "--tolerance", "10"])
    assert loose.exit_code == 0, loose.output
    assert "far from the study" not in loose.output


def test_list_names_every_table_and_dataset_with_published_numbers() -> None:
    result = CliRunner().invoke(app, ["reproduce", "--list"])
    assert result.exit_code == 0, result.output
    for name, table in TABLES.items():
        assert f"{name}:" in result.output
        for dataset in table.published_datasets:
            assert dataset in result.output
    assert "s3rec pre-trained first" in result.output


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        (["reproduce"], "give a table: table2, table3, loss-sweep"),
        (["reproduce", "table9", "--dataset", "lastfm"], "unknown table 'table9'"),
        (["reproduce", "table3"], "give --dataset; table3 has published numbers for ml-1m"),
        (
            ["reproduce", "table2", "--dataset", "synthetic", "--expect-published"],
            "published no table2 numbers for synthetic",
        ),
    ],
)
def test_reproduce_usage_errors_are_one_liners(arguments: list[str], words: str) -> None:
    result = CliRunner().invoke(app, arguments)
    assert isinstance(result.exception, LossbenchError)
    assert words in str(result.exception)


def test_cells_not_run_yet_say_so(saved_table2: Path) -> None:
    for seed in (0, 1):
        (saved_table2 / f"lastfm/sasrec/bce/seed{seed}/metrics.json").unlink()
    report = render_reproduction(saved_table2, OPTIONS, Console(file=io.StringIO()))
    cells = {(r.model, r.label): r for r in report.results}
    assert cells[("sasrec", "bce")].seeds == 0
    assert cells[("sasrec", "bce")].means["hr@10"] is None
    assert cells[("sasrec", "improved")].direction == "original not run yet"
    assert "lastfm sasrec + bce" not in " ".join(report.far)  # nothing to be far with
    markdown = (saved_table2 / "reproduction.md").read_text()
    assert "| sasrec | bce (original) | not run yet | — | 0.0404 | — |" in markdown


def test_reproduce_json_holds_each_cell_beside_the_study(saved_table2: Path) -> None:
    args = ["reproduce", "table2", "--dataset", "lastfm", "--seeds", "0,1", "--json"]
    result = CliRunner().invoke(app, [*args, "--out", str(saved_table2), "--permutations", "99"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # the tables went to standard error
    assert document["table"] == "table2" and document["failed_runs"] == 0
    cells = {(cell["model"], cell["loss"]): cell for cell in document["cells"]}
    hr = cells[("sasrec", "bce")]["metrics"]["hr@10"]
    assert hr["mean"] == pytest.approx(0.020) and hr["study"] == 0.0404
    assert hr["difference_percent"] == pytest.approx(100 * (0.020 - 0.0404) / 0.0404)
    assert cells[("sasrec", "improved")]["direction"].startswith("yes ▲ (+193.1%, p = ")
    assert [line.split(":")[0] for line in document["far"]] == [
        "lastfm sasrec + bce",
        "lastfm s3rec + improved",
    ]
    assert f"{hr['difference_percent']:+.1f}%" in result.stderr and "0.0404" in result.stderr
