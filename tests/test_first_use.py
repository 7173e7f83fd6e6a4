"""The flow `lossbench download D`, then `lossbench train|compare --dataset D`: a downloaded
dataset is prepared on first use with its registered protocol (one line says so), the split
asked for included; a registered dataset not downloaded names the command that fetches it."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lossbench.cli import main
from lossbench.data.prepared import is_prepared, read_meta
from lossbench.data.splits import LOO, split_spec

TINY = ["--max-epochs", "1", "--hidden-size", "8", "--max-len", "10", "--threads", "1"]


def interactions() -> bytes:
    """ml-100k's `u.data` layout: 80 users x 12 items of 40, every user one a day."""
    rng = np.random.default_rng(0)
    rows = [
        f"{user}\t{item}\t4\t{day * 1000 + user}\n"
        for user in range(1, 81)
        for day, item in enumerate(rng.choice(np.arange(1, 41), size=12, replace=False))
    ]
    return "".join(rows).encode()


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(data dir, mirror folder) of a registered dataset `toy` with 4-core filtering."""
    data = interactions()
    mirror = tmp_path / "mirror"
    (mirror / "toy").mkdir(parents=True)
    (mirror / "toy" / "u.data").write_bytes(data)
    registry = tmp_path / "datasets.toml"
    registry.write_text(
        '[toy]\nsource = "test"\nformat = "movielens-tsv"\n[toy.protocol]\nuser_core = 4\n'
        f'[toy.file]\nurl = "https://example.invalid/toy/u.data"\nsize = {len(data)}\n'
        f'sha256 = "{hashlib.sha256(data).hexdigest()}"\n'
    )
    monkeypatch.setenv("LOSSBENCH_DATASETS", str(registry))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "data", mirror


Lossbench = Callable[..., tuple[int, str, str]]


@pytest.fixture
def lossbench(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Lossbench:
    """(exit code, stdout, stderr) of the console entry point given these arguments."""

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["lossbench", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        out, err = capsys.readouterr()
        code = exit_info.value.code
        return (code if isinstance(code, int) else 0), out, err

    return run


def test_train_prepares_a_downloaded_dataset_once(
    toy: tuple[Path, Path], lossbench: Lossbench
) -> None:
    data, mirror = toy
    code, _, err = lossbench("--data-dir", str(data), "train", "--dataset", "toy", *TINY)
    assert code == 2
    assert err.strip() == (
        "error: dataset toy is not downloaded: run `lossbench download toy` (it is prepared "
        "on first use)"
    )
    assert lossbench("--data-dir", str(data), "download", "toy", "--mirror", str(mirror))[0] == 0
    assert not is_prepared(data, "toy")
    code, out, err = lossbench("--data-dir", str(data), "train", "--dataset", "toy", *TINY)
    assert code == 0, out + err
    assert err.strip() == (
        "preparing toy (loo split) with its registered protocol, once (as `lossbench "
        "preprocess toy` does)"
    )
    meta = read_meta(data / "toy" / "prepared")
    assert meta is not None and meta["protocol"]["user_core"] == 4 and meta["n_users"] == 80
    assert "training sasrec with bce on toy (80 users, 40 items, loo split)" in out
    code, out, err = lossbench("--data-dir", str(data), "train", "--dataset", "toy", *TINY)
    assert (code, err) == (0, "")  # prepared already: nothing to say


def test_compare_prepares_the_temporal_split_asked_for(
    toy: tuple[Path, Path], lossbench: Lossbench
) -> None:
    data, mirror = toy
    assert lossbench("--data-dir", str(data), "download", "toy", "--mirror", str(mirror))[0] == 0
    code, out, err = lossbench(
        "--data-dir", str(data), "compare", "--dataset", "toy", "--losses", "bce,ce", "--seeds",
        "0", "--split", "temporal", "--permutations", "9", *TINY,
    )  # fmt: skip
    assert code == 0, out + err
    assert "preparing toy (temporal" in err
    temporal = split_spec("temporal", 0.8, 0.9)
    assert is_prepared(data, "toy", temporal) and not is_prepared(data, "toy", LOO)
