"""Option groups (`lossbench.cli.groups`): a group's fields become the command's options where
the group's parameter stands, and the command receives the group rebuilt from their values."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from lossbench.cli.groups import option_groups
from lossbench.cli.options import TrainingOptions

Name = Annotated[str, typer.Option(help="A required option.")]
Count = Annotated[int, typer.Option(min=1, help="An option with a default.")]
First = Annotated[bool, typer.Option("--first/--no-first", help="A switch.")]
Last = Annotated[bool, typer.Option("--last/--no-last", help="Another switch.")]


@dataclass(frozen=True)
class Sample:
    name: Name
    count: Count = 2


def test_a_group_becomes_its_options_in_place_and_comes_back_whole() -> None:
    received: list[Sample | bool] = []

    @option_groups
    def command(*, first: First = False, sample: Sample, last: Last = True) -> None:
        received.extend([first, sample, last])

    parameters = inspect.signature(command).parameters
    assert list(parameters) == ["first", "name", "count", "last"]
    assert parameters["name"].default is inspect.Parameter.empty  # stays required
    assert parameters["count"].default == 2

    app = typer.Typer()
    app.command()(command)
    app.command("other")(lambda: None)  # two commands: the command is named on the line
    result = CliRunner().invoke(app, ["command", "--name", "x", "--first"])
    assert result.exit_code == 0, result.output
    assert received == [True, Sample("x", 2), True]
    missing = CliRunner().invoke(app, ["command"])
    assert missing.exit_code == 2 and "--name" in missing.output
    too_few = CliRunner().invoke(app, ["command", "--name", "x", "--count", "0"])
    assert too_few.exit_code == 2  # the option's own validation still applies


def test_a_field_named_like_another_parameter_is_refused() -> None:
    def command(*, name: Name, sample: Sample) -> None: ...

    with pytest.raises(ValueError, match="duplicate parameter name"):
        option_groups(command)


def test_training_options_give_only_the_options_given() -> None:
    settings = TrainingOptions(lr=0.01, keep_seen=True, hidden_size=32).settings(preset="smoke")
    assert settings["lr"] == 0.01 and settings["exclude_seen"] is False
    assert settings["preset"] == "smoke" and settings["batch_size"] is None
    assert settings["model_settings"] == {"hidden_size": 32}
