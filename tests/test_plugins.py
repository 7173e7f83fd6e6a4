"""Losses and models from outside the package: files, modules and entry points."""

from __future__ import annotations

import hashlib
import json
import re
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.compare.execute.resume import run_status
from lossbench.compare.execute.runner import execute_plan
from lossbench.compare.plan.build import build_plan
from lossbench.compare.plan.grid import Grid, make_grid
from lossbench.data.prepared import PreparedDataset
from lossbench.data.store import make_synthetic_prepared
from lossbench.errors import LossbenchError
from lossbench.losses import LOSSES, LossInputs, LossParams, find_loss
from lossbench.models import find_model
from lossbench.plugins import changed_sources, folder_name
from lossbench.training.config import build_config
from lossbench.training.setup import code_sources, resolve_loss

PLAIN_CE = '''
import torch.nn.functional as F

from lossbench.losses import CATALOGUE, LossSpec


def plain_ce(inputs, params):
    """Softmax CE over items 1..n at every position."""
    return F.cross_entropy(inputs.hidden @ inputs.item_embeddings[1:].T, inputs.targets - 1)


def pairwise(inputs, params):
    """A sampled loss: the positive against each given negative."""
    table = inputs.item_embeddings
    positive = (inputs.hidden * table[inputs.targets]).sum(-1, keepdim=True)
    negative = (table[inputs.negatives] * inputs.hidden.unsqueeze(1)).sum(-1)
    return F.softplus(negative - positive).mean()


LAST_CE = LossSpec(
    fn=plain_ce, positions="last", negatives=0, description="last only", needs=CATALOGUE
)
NOT_A_LOSS = 3
'''


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "my_loss.py", PLAIN_CE)
    return tmp_path


def test_a_bare_function_from_a_file_equals_improved(in_tmp: Path) -> None:
    found = find_loss("./my_loss.py:plain_ce")
    assert found.value.negatives_from_flags and found.value.positions == "all"
    assert found.value.description == "Softmax CE over items 1..n at every position."
    assert found.source.origin == "file"
    assert found.source.path == str(in_tmp / "my_loss.py")
    assert found.source.sha256 == sha256(in_tmp / "my_loss.py")
    generator = torch.Generator().manual_seed(0)
    inputs = LossInputs(
        torch.randn(9, 4, generator=generator),
        torch.randint(1, 13, (9,), generator=generator),
        torch.randn(13, 4, generator=generator),
    )
    improved = LOSSES["improved"].fn(inputs, LossParams())
    torch.testing.assert_close(found.value.fn(inputs, LossParams()), improved)


def test_a_loss_spec_from_a_module_keeps_its_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "lb_plugin_module.py", PLAIN_CE)
    monkeypatch.syspath_prepend(str(tmp_path))
    found = find_loss("lb_plugin_module:LAST_CE")
    assert found.value.positions == "last" and not found.value.negatives_from_flags
    assert found.source.origin == "module"
    assert found.source.target == "lb_plugin_module:LAST_CE"
    assert found.source.sha256 == sha256(tmp_path / "lb_plugin_module.py")


def test_flags_decide_a_bare_function_s_positions_and_negatives(in_tmp: Path) -> None:
    plain = resolve_loss(build_config(overrides={"loss": "./my_loss.py:plain_ce"}))
    assert (plain.positions, plain.negatives) == ("all", 0)
    given = {"loss": "./my_loss.py:pairwise", "negatives": 5, "positions": "last"}
    sampled = resolve_loss(build_config(overrides=given))
    assert (sampled.positions, sampled.negatives) == ("last", 5)
    # A built-in full-catalogue loss still ignores --negatives.
    assert resolve_loss(build_config(overrides={"loss": "improved", "negatives": 5})).negatives == 0


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("./missing.py:plain_ce", "loss file ./missing.py does not exist"),
        ("./my_loss.py:plain", "defines no 'plain' (its losses: LAST_CE, pairwise, plain_ce)"),
        ("./my_loss.py:NOT_A_LOSS", "is a int, not a LossSpec or a loss function"),
        ("./my_loss.py", "name the object in the file: ./my_loss.py:NAME"),
        ("no_such_package_xyz.losses:ce", "no module named 'no_such_package_xyz'"),
        ("my_loss:plain_ce", "for the file in this folder write ./my_loss.py:plain_ce"),
        ("softmax", "valid losses: bce, ce, improved"),
    ],
)
def test_bad_loss_references_fail_in_one_line(in_tmp: Path, name: str, words: str) -> None:
    with pytest.raises(LossbenchError) as caught:
        build_config(overrides={"loss": name})
    message = str(caught.value)
    assert message.startswith("invalid loss in options: ") and words in message
    assert "\n" not in message


def test_a_module_that_fails_to_load_names_the_error_and_line(in_tmp: Path) -> None:
    write(in_tmp, "broken.py", "import torch\n\nvalue = 1 / 0\n")
    with pytest.raises(
        LossbenchError, match=r"ZeroDivisionError: division by zero \(broken.py:3\)"
    ):
        find_loss("./broken.py:value")


def test_grid_losses_accept_import_strings_and_name_bad_ones(in_tmp: Path) -> None:
    grid = make_grid({"losses": ["improved", "./my_loss.py:plain_ce"]}, "g.toml")
    assert grid.losses_for("sasrec") == ["improved", "./my_loss.py:plain_ce"]
    with pytest.raises(LossbenchError, match="invalid grid.losses in g.toml: unknown loss 'nope'"):
        make_grid({"losses": ["improved", "nope"]}, "g.toml")


def test_folder_names_of_references() -> None:
    assert folder_name("improved") == "improved"
    assert folder_name("./my_loss.py:plain_ce") == "my_loss.py-plain_ce"
    assert folder_name("/abs/dir/x.py:f") == "abs-dir-x.py-f"
    assert folder_name("pkg.mod:FOCAL") == "pkg.mod-FOCAL"


@pytest.fixture(scope="module")
def tiny() -> PreparedDataset:
    return make_synthetic_prepared(n_users=120, n_items=50, mean_length=10.0, seed=3)


QUICK = {"max_epochs": 1, "batch_size": 64, "model_settings": {"hidden_size": 8, "max_len": 15}}


def test_a_run_records_the_source_and_a_changed_source_is_retrained(
    in_tmp: Path, tiny: PreparedDataset
) -> None:
    grid = Grid(losses=["./my_loss.py:plain_ce"], seeds=[0])
    plan = build_plan(grid, QUICK, in_tmp / "out")
    runs = plan.entries
    assert runs[0].run_dir == in_tmp / "out/synthetic/sasrec/my_loss.py-plain_ce/seed0"
    assert execute_plan(plan, lambda name, split: tiny) == [runs[0].run_dir]
    record = json.loads((runs[0].run_dir / "config.json").read_text())
    loss_source = record["sources"]["loss"]
    assert loss_source["name"] == record["config"]["loss"] == "./my_loss.py:plain_ce"
    assert loss_source["target"] == f"{in_tmp / 'my_loss.py'}:plain_ce"
    assert loss_source["sha256"] == sha256(in_tmp / "my_loss.py")
    assert record["sources"]["model"] == {
        "name": "sasrec",
        "origin": "built-in",
        "target": None,
        "path": None,
        "sha256": None,
        "distribution": None,
    }
    assert run_status(runs[0]).state == "finished"
    assert execute_plan(plan, lambda name, split: tiny) == []  # resumed: nothing to do

    with (in_tmp / "my_loss.py").open("a") as stream:
        stream.write("\n# a comment changes the file, so its sha256\n")
    plan = build_plan(grid, QUICK, in_tmp / "out")  # the comparison again: the code is read
    assert run_status(plan.entries[0]).state == "stale"
    assert execute_plan(plan, lambda name, split: tiny) == [runs[0].run_dir]
    again = json.loads((runs[0].run_dir / "config.json").read_text())
    assert again["sources"]["loss"]["sha256"] == sha256(in_tmp / "my_loss.py")
    (kept,) = runs[0].run_dir.parent.glob("seed0.replaced-*")  # the old code's run, kept
    assert json.loads((kept / "config.json").read_text())["sources"] == record["sources"]


def test_changed_sources_compares_sha256_only() -> None:
    built_in = {"loss": {"sha256": None}, "model": {"sha256": None}}
    assert changed_sources(None, built_in) == []  # a record from before sources existed
    plugin = {"loss": {"sha256": "a"}, "model": {"sha256": None}}
    assert changed_sources(plugin, plugin) == []
    assert changed_sources(plugin, {**plugin, "loss": {"sha256": "b"}}) == ["loss"]
    assert changed_sources(None, plugin) == ["loss"]


MEAN_POOL = '''
"""A baseline outside lossbench: the running mean of the item embeddings seen so far."""

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from lossbench.models import ModelSpec, from_config


class MeanPoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden_size: int = Field(default=32, ge=1)
    max_len: int = Field(default=50, ge=1)


class MeanPool(nn.Module):
    bidirectional = False

    def __init__(self, n_items: int, *, hidden_size: int, max_len: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.item_embedding = nn.Embedding(n_items + 1, hidden_size, padding_idx=0)

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded ids -> (B, L, D): the mean of the real items up to each t."""
        real = (item_ids > 0).unsqueeze(-1).float()  # (B, L, 1)
        total = (self.item_embedding(item_ids) * real).cumsum(1)
        return total / real.cumsum(1).clamp(min=1.0)

    def predict_hidden(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self(item_ids)[:, -1]


MEAN_POOL = ModelSpec(
    config_class=MeanPoolConfig,
    build=from_config(MeanPool),
    default_loss="improved",
    bidirectional=False,
    description="running mean of the item embeddings",
)
'''


def test_a_model_from_a_file_trains_and_is_compared_with_built_in_models(
    in_tmp: Path, tiny: PreparedDataset
) -> None:
    from lossbench.compare.pipeline import compare_losses
    from lossbench.compare.report.summary import SummaryOptions

    write(in_tmp, "mean_pool.py", MEAN_POOL)
    reference = "./mean_pool.py:MEAN_POOL"
    assert find_model(reference).value.default_loss == "improved"
    grid = make_grid(
        {"models": ["sasrec", reference], "losses": ["improved"], "seeds": [0, 1]}, "options"
    )
    options = SummaryOptions(["hr@10", "ndcg@10"], "ndcg@10", 0.05, 200)
    out = in_tmp / "out"
    compare_losses(grid, QUICK, out, lambda name, split: tiny, options)
    summary = (out / "summary.md").read_text()
    for model in ("sasrec", reference):  # two runs each, averaged unless collapsed (tiny runs)
        assert re.search(
            rf"\| {re.escape(model)} \| improved \(base\) \| (2|1 \(\+1 collapsed\)|0 \(\+2 "
            r"collapsed\)) \|",
            summary,
        ), summary
    metrics = json.loads(
        (out / "synthetic/mean_pool.py-MEAN_POOL/improved/seed0/metrics.json").read_text()
    )
    assert metrics["model"] == reference and metrics["test"]["hr@10"] > 0.0
    record = json.loads(
        (out / "synthetic/mean_pool.py-MEAN_POOL/improved/seed0/config.json").read_text()
    )
    assert record["model_settings"] == {"hidden_size": 8, "max_len": 15}
    assert record["sources"]["model"]["sha256"] == sha256(in_tmp / "mean_pool.py")
    assert code_sources(build_config(overrides={"model": reference}))["model"]["origin"] == "file"


def test_a_non_model_object_is_refused(in_tmp: Path) -> None:
    with pytest.raises(LossbenchError, match="is a int, not a lossbench.models.ModelSpec"):
        build_config(overrides={"model": "./my_loss.py:NOT_A_LOSS"})


ENTRY_POINTS = """
[lossbench.losses]
fake-ce = lb_fake_plugin:plain_ce
improved = lb_fake_plugin:plain_ce
broken-ce = lb_fake_plugin:missing

[lossbench.models]
fake-pool = lb_fake_plugin:MEAN_POOL
"""


@pytest.fixture()
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed distribution as importlib.metadata sees one: a dist-info on sys.path."""
    site = tmp_path / "site"
    info = site / "lb_fake_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lb-fake-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    write(site, "lb_fake_plugin.py", PLAIN_CE + MEAN_POOL)
    monkeypatch.syspath_prepend(str(site))
    return site


def test_entry_points_resolve_and_are_listed(
    installed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = find_loss("fake-ce")
    assert found.source.origin == "entry point"
    assert found.source.distribution == "lb-fake-plugin 1.0"
    assert found.source.sha256 == sha256(installed / "lb_fake_plugin.py")
    assert find_loss("improved").value is LOSSES["improved"]  # a built-in name wins
    assert find_model("fake-pool").value.description == "running mean of the item embeddings"
    assert build_config(overrides={"model": "fake-pool", "loss": "fake-ce"}).loss_name == "fake-ce"

    from lossbench.cli.app import console

    monkeypatch.setattr(console, "width", 200)
    listing = CliRunner().invoke(app, ["losses"])
    assert listing.exit_code == 0, listing.output
    line = next(line for line in listing.output.splitlines() if "fake-ce" in line)
    assert "--negatives" in line and "lb-fake-plugin 1.0 (lb_fake_plugin:plain_ce)" in line
    broken = next(line for line in listing.output.splitlines() if "broken-ce" in line)
    assert "failed to load" in broken
    hidden = [line for line in listing.output.splitlines() if "ignored: lossbench has" in line]
    assert len(hidden) == 1 and hidden[0].split()[1] == "improved"
    models = CliRunner().invoke(app, ["models"])
    assert "fake-pool" in models.output and "lb-fake-plugin 1.0" in models.output
