"""The tuning space: parsing `[tune.space]`, its checks, and bad input before any training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lossbench.errors import LossbenchError
from lossbench.training.config import TrainConfig
from lossbench.tuning.space import (
    DEFAULT_SPACE,
    TUNABLE_TRAINING,
    parse_space,
    read_tune_file,
)

pytest.importorskip("optuna")

from lossbench.tuning.study import TuneRequest, check_request, trial_config  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def request(tmp_path: Path, space: dict[str, Any] | None = None, **changes: Any) -> TuneRequest:
    values: dict[str, Any] = {
        "dataset": "synthetic",
        "model": "sasrec",
        "losses": ["bce", "improved"],
        "space": parse_space(space, "sasrec", "test"),
        "settings": {"max_epochs": 2},
        "seed": 0,
        "trials": 3,
        "timeout": None,
        "prune": True,
        "out_dir": tmp_path,
    }
    return TuneRequest(**(values | changes))


def test_tunable_training_settings_are_train_config_fields() -> None:
    assert set(TUNABLE_TRAINING) <= set(TrainConfig.model_fields)
    for untunable in ("validation_metric", "ks", "eval_negatives", "seed", "max_epochs"):
        assert untunable not in TUNABLE_TRAINING


def test_the_default_space_and_its_settings_layer() -> None:
    space = parse_space(None, "gru4rec", "test")
    assert space.names == sorted(DEFAULT_SPACE) == ["dropout", "lr"]
    lr = space.params[1]
    assert (lr.low, lr.high, lr.log, lr.integer) == (1e-4, 1e-2, True, False)
    assert space.settings_layer({"lr": 0.003, "dropout": 0.2}) == {
        "lr": 0.003,
        "model_settings": {"dropout": 0.2},
    }


def test_ranges_choices_and_integers(tmp_path: Path) -> None:
    space = parse_space(
        {
            "num_layers": {"low": 1, "high": 3},
            "gbce_t": {"low": 0.0, "high": 1.0, "step": 0.25},
            "sampler": ["uniform", "popularity"],
        },
        "sasrec",
        "test",
    )
    by_name = {param.name: param for param in space.params}
    assert by_name["num_layers"].integer and by_name["num_layers"].probes() == [1, 3]
    assert not by_name["gbce_t"].integer and by_name["gbce_t"].probes() == [0.0, 1.0]
    assert by_name["sampler"].choices == ("uniform", "popularity")
    config = trial_config(
        request(tmp_path, {"num_layers": {"low": 1, "high": 3}}),
        "improved",
        {"num_layers": 2},
    )
    assert config.model_settings["num_layers"] == 2 and config.loss == "improved"


def test_the_fingerprint_follows_the_space() -> None:
    one = parse_space({"lr": {"low": 1e-4, "high": 1e-2}}, "sasrec", "t")
    two = parse_space({"lr": {"low": 1e-4, "high": 1e-3}}, "sasrec", "t")
    assert one.fingerprint() != two.fingerprint()
    assert (
        one.fingerprint()
        == parse_space({"lr": {"high": 1e-2, "low": 1e-4}}, "sasrec", "t").fingerprint()
    )


@pytest.mark.parametrize(
    ("space", "words"),
    [
        ({"colour": [1, 2]}, ["'colour' cannot be tuned", "lr", "hidden_size", "gbce_t"]),
        ({"ks": [[5], [10]]}, ["'ks' cannot be tuned"]),
        ({"lr": {"low": 0.01, "high": 0.001}}, ["lr", "range is empty", "0.01"]),
        ({"lr": {"low": 0.01, "high": 0.01}}, ["range is empty"]),
        ({"dropout": []}, ["dropout", "list of choices is empty"]),
        ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, ["log range needs low > 0"]),
        ({"lr": {"low": 0.001, "hihg": 0.1}}, ["lr", "hihg"]),
        ({"lr": 0.001}, ["lr", "a range", "[settings]"]),
        ({"dropout": [0.1, 0.1]}, ["listed twice"]),
        ({"gbce_t": {"low": 0.0, "high": 1.0, "step": 2.0}}, ["step"]),
        ({}, ["empty"]),
    ],
)
def test_bad_spaces_are_one_line(space: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(LossbenchError) as error:
        parse_space(space, "sasrec", "tune.toml")
    message = str(error.value)
    assert all(word in message for word in words), message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("space", "changes", "words"),
    [
        ({"dropout": {"low": 0.1, "high": 1.0}}, {}, ["dropout = 1.0", "bce"]),
        ({"num_layers": {"low": 1.0, "high": 3.0}}, {}, ["num_layers", "integer"]),
        ({"lr": {"low": 1e-4, "high": 1e-2}}, {"settings": {"lr": 0.1}}, ["lr is both fixed"]),
        ({"dropout": [0.1]}, {"settings": {"model_settings": {"dropout": 0.2}}}, ["both"]),
        ({"positions": ["masked"]}, {}, ["positions = 'masked'", "bidirectional"]),
        (None, {"trials": None}, ["--trials N or --timeout SECONDS"]),
    ],
)
def test_values_that_cannot_train_fail_before_any_training(
    tmp_path: Path, space: dict[str, Any] | None, changes: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(LossbenchError) as error:
        check_request(request(tmp_path, space, **changes))
    message = str(error.value)
    assert all(word in message for word in words), message
    assert not list(tmp_path.iterdir())  # nothing written


def test_study_names_follow_the_fixed_settings_not_the_thread_count(tmp_path: Path) -> None:
    base = check_request(request(tmp_path))
    assert base["bce"].startswith("synthetic-sasrec-bce-") and base["bce"] != base["improved"]
    assert check_request(request(tmp_path, settings={"max_epochs": 2, "threads": 3})) == base
    other = check_request(request(tmp_path, settings={"max_epochs": 4}))
    assert other["bce"] != base["bce"]
    wider = check_request(request(tmp_path, {"lr": {"low": 1e-5, "high": 1e-2, "log": True}}))
    assert wider["bce"] != base["bce"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[grid]\nlosses = ['bce']\n", ["invalid grid", "[tune.space] and [settings]"]),
        ("[tune]\ntrials = 3\n", ["tune.trials"]),
        ("[settings]\nseed = 3\n", ["settings.seed", "--seed"]),
        ("[settings.per_loss.bce]\nlr = 0.1\n", ["settings.per_loss", "same [tune.space]"]),
        ("[tune]\nspace = 3\n", ["tune.space", "table"]),
    ],
)
def test_bad_tuning_files(tmp_path: Path, text: str, words: list[str]) -> None:
    path = tmp_path / "tune.toml"
    path.write_text(text)
    with pytest.raises(LossbenchError) as error:
        read_tune_file(path)
    assert all(word in str(error.value) for word in words), str(error.value)


def test_the_example_tuning_file_parses(tmp_path: Path) -> None:
    space_table, settings = read_tune_file(EXAMPLES / "tuning" / "lastfm-sasrec.toml")
    space = parse_space(space_table, "sasrec", "example")
    assert space.names == ["dropout", "lr"]
    check_request(request(tmp_path, space_table, dataset="lastfm", settings=settings))


PLAIN_CE = """
import torch.nn.functional as F


def plain_ce(inputs, params):
    logits = inputs.hidden @ inputs.item_embeddings[1:].T
    return F.cross_entropy(logits, inputs.targets - 1)
"""


def test_a_loss_from_a_file_is_tuned_in_a_study_named_by_its_source(tmp_path: Path) -> None:
    loss_file = tmp_path / "my_loss.py"
    loss_file.write_text(PLAIN_CE)
    reference = f"{loss_file}:plain_ce"
    out = tmp_path / "out"
    (name,) = check_request(request(out, losses=[reference])).values()
    assert name.startswith("synthetic-sasrec-") and "my_loss.py-plain_ce" in name
    assert trial_config(request(out, losses=[reference]), reference, {"lr": 0.01}).lr == 0.01
    loss_file.write_text(PLAIN_CE + "\n# changed\n")
    (changed,) = check_request(request(out, losses=[reference])).values()
    assert changed != name  # other code: a new study, as a comparison would retrain it
