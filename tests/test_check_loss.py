"""`lossbench check-loss`: every registered loss meets the contract; broken losses fail it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lossbench.cli import app
from lossbench.losses import LOSSES, SAMPLED, LossSpec
from lossbench.losses.contract import check_loss

BROKEN = '''
import torch
import torch.nn.functional as F


def logits(inputs):
    return inputs.hidden @ inputs.item_embeddings[1:].T


def nan_loss(inputs, params):
    return F.cross_entropy(logits(inputs), inputs.targets - 1) * float("nan")


def padding_leak(inputs, params):
    """Scores the padding row 0 too: the classes are rows 0..n_items."""
    return F.cross_entropy(inputs.hidden @ inputs.item_embeddings.T, inputs.targets)


def per_position(inputs, params):
    return F.cross_entropy(logits(inputs), inputs.targets - 1, reduction="none")


def noisy(inputs, params):
    scores = logits(inputs)
    return F.cross_entropy(scores + torch.rand_like(scores), inputs.targets - 1)


def first_position_twice(inputs, params):
    per = F.cross_entropy(logits(inputs), inputs.targets - 1, reduction="none")
    return (per.sum() + per[0]) / len(per)


def needs_negatives(inputs, params):
    count = inputs.negatives.shape[1]
    return logits(inputs).logsumexp(-1).mean() / count


def touches_every_row(inputs, params):
    """A sampled loss that also regularizes rows it never scores."""
    table = inputs.item_embeddings
    positive = (inputs.hidden * table[inputs.targets]).sum(-1, keepdim=True)
    negative = (table[inputs.negatives] * inputs.hidden.unsqueeze(1)).sum(-1)
    return F.softplus(negative - positive).mean() + 1e-3 * table[1:].square().sum()
'''


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_meets_the_contract(name: str) -> None:
    results = check_loss(LOSSES[name])
    assert len(results) == 7
    assert [result.passed for result in results] == [True] * 7, results


@pytest.fixture()
def broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.py").write_text(textwrap.dedent(BROKEN))
    return tmp_path


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("nan_loss", "FAIL finite scalar: returns nan (positions x items = 1x3)"),
        (
            "padding_leak",
            "FAIL no gradient to padding or unscored items: the padding row 0 gets gradient",
        ),
        (
            "per_position",
            "FAIL finite scalar: returns a tensor of shape (1,), not a scalar",
        ),
        ("noisy", "FAIL deterministic: the same inputs gave"),
        ("first_position_twice", "FAIL independent of position order: reordering the positions"),
    ],
)
def test_a_broken_loss_fails_with_one_clear_line(broken: Path, name: str, line: str) -> None:
    result = CliRunner().invoke(app, ["check-loss", f"./broken.py:{name}"])
    assert result.exit_code == 1, result.output
    failures = [text for text in result.output.splitlines() if text.startswith("FAIL ")]
    assert any(text.startswith(line) for text in failures), result.output
    assert "Traceback" not in result.output


def test_checks_that_need_a_scalar_are_not_run_without_one(broken: Path) -> None:
    result = CliRunner().invoke(app, ["check-loss", "./broken.py:per_position"])
    failures = [text for text in result.output.splitlines() if text.startswith("FAIL ")]
    assert len(failures) == 1  # the later checks show "not run", they are not failures
    assert "not run" in result.output


def test_a_sampled_loss_that_updates_unscored_rows_fails(broken: Path) -> None:
    result = CliRunner().invoke(
        app, ["check-loss", "./broken.py:touches_every_row", "--negatives", "4"]
    )
    assert result.exit_code == 1
    assert "neither a target nor a negative" in result.output


def test_a_sampled_function_checked_without_negatives_gets_a_hint(broken: Path) -> None:
    result = CliRunner().invoke(app, ["check-loss", "./broken.py:needs_negatives"])
    assert result.exit_code == 1
    failures = [text for text in result.output.splitlines() if text.startswith("FAIL ")]
    assert failures == [
        "FAIL finite scalar: raised AttributeError: 'NoneType' object has no attribute 'shape' "
        "(broken.py:34) (it was fed no negatives: give --negatives K to a sampled loss)"
    ]


def test_a_passing_loss_exits_0_and_says_so(broken: Path) -> None:
    result = CliRunner().invoke(app, ["check-loss", "sampled-ce"])
    assert result.exit_code == 0, result.output
    assert "sampled-ce meets the loss contract" in result.output
    assert "FAIL" not in result.output


def test_the_check_is_fed_the_loss_s_own_negatives() -> None:
    seen: list[int] = []

    def recording(inputs, params):  # type: ignore[no-untyped-def]
        seen.append(0 if inputs.negatives is None else inputs.negatives.shape[1])
        return LOSSES["bce"].fn(inputs, params)

    spec = LossSpec(fn=recording, positions="all", negatives=3, description="bce", needs=SAMPLED)
    assert all(result.passed for result in check_loss(spec))
    assert set(seen) == {3}
    check_loss(spec, negatives=7)
    assert set(seen) == {3, 7}


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("./broken.py:needs_negatives", "(it was fed no negatives: give --negatives K"),
        ("./broken.py:raises", None),  # raises whatever it is fed: no hint
        ("os:system", "(a loss is called as fn(inputs: LossInputs, params: LossParams))"),
        ("./broken.py:detached", "(the value is detached from the inputs"),
    ],
)
def test_the_hint_names_the_actual_cause(broken: Path, name: str, hint: str | None) -> None:
    (broken / "broken.py").write_text(
        textwrap.dedent(BROKEN)
        + textwrap.dedent(
            """
            def raises(inputs, params):
                raise ValueError("broken whatever it is fed")


            def detached(inputs, params):
                return logits(inputs).logsumexp(-1).mean().detach()
            """
        )
    )
    result = CliRunner().invoke(app, ["check-loss", name])
    assert result.exit_code == 1, result.output
    first = next(text for text in result.output.splitlines() if text.startswith("FAIL "))
    if hint is None:
        assert first.endswith("raised ValueError: broken whatever it is fed (broken.py:46)")
        assert "--negatives" not in result.output
    else:
        assert first.endswith(")") and hint in first, first
