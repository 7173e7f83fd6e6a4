"""`lossbench reproduce table2` on the real LastFM file, one epoch per cell and one epoch of
S3Rec pre-training (a few minutes on 2 cores: marker `slow`, `make test-slow`).

It needs the local mirror `../shared/data/mirror` and skips with a reason without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lossbench.cli import app

MIRROR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mirror"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (MIRROR / "lastfm").is_dir(),
        reason=f"real data mirror {MIRROR} is absent (../shared/data/mirror)",
    ),
]


def test_table2_on_lastfm_runs_end_to_end_then_reuses_everything(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    runner = CliRunner()
    for step in (["download", "lastfm", "--mirror", str(MIRROR)], ["preprocess", "lastfm"]):
        result = runner.invoke(app, [*data, *step])
        assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    command = [*data, "reproduce", "table2", "--dataset", "lastfm", "--seeds", "0"]
    command += ["--max-epochs", "1", "--pretrain-epochs", "1", "--out", str(out)]
    first = runner.invoke(app, command)
    assert first.exit_code == 0, first.output
    assert "lastfm s3rec pre-training, 1 epoch ->" in first.output
    for study in ("0.0312", "0.0404", "0.0688", "0.0381"):  # published cells beside
        assert study in first.output
    assert "s3rec on lastfm was pre-trained for 1 epoch" in first.output
    record = json.loads((out / "reproduction.json").read_text())
    assert len(record["rows"]) == 8
    s3rec = json.loads((out / "lastfm/s3rec/bce/seed0/config.json").read_text())["config"]
    assert s3rec["init"] == str(out / "lastfm/s3rec/pretrain-1-epochs/pretrained.pt")
    again = runner.invoke(app, command)
    assert again.exit_code == 0, again.output
    assert "reusing 8 finished run(s) of 8" in again.output
    assert "pre-training" not in again.output and "seed 0 ->" not in again.output
    expect = runner.invoke(app, [*command, "--expect-published"])
    assert expect.exit_code == 1  # one epoch is far from the study's numbers
