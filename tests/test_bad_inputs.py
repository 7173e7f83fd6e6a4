"""Bad input, by command: one line saying what is wrong and what to do, the right exit code,
never a traceback. Each case runs the console entry point in this process on tiny synthetic
data (shared fixtures) and asserts the exit code, exactly one line of message (standard error,
or the standard output of a check that prints nothing else), and a phrase of that line."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lossbench.cli import app, main

TINY = ["--max-epochs", "1", "--hidden-size", "8", "--max-len", "10", "--threads", "1"]

OWN_LOSSES = """
import torch.nn.functional as F


def _logits(inputs):
    return inputs.hidden @ inputs.item_embeddings[1:].T


def cross_entropy(inputs, params):
    return F.cross_entropy(_logits(inputs), inputs.targets - 1)


def raises(inputs, params):
    raise RuntimeError("broken on purpose")


def per_position(inputs, params):
    return F.cross_entropy(_logits(inputs), inputs.targets - 1, reduction="none")


def detached(inputs, params):
    return cross_entropy(inputs, params).detach()


def as_float(inputs, params):
    return cross_entropy(inputs, params).item()


def nan(inputs, params):
    return cross_entropy(inputs, params) * float("nan")
"""


@dataclass(frozen=True)
class Shared:
    """What the cases build on: a data dir with synthetic and a one-user dataset prepared, a
    finished bce run, a finished comparison, own losses, and a port that never answers."""

    data: Path
    run: Path
    comparison: Path
    losses: Path
    silent_url: str


@dataclass(frozen=True)
class Case:
    """`args(shared, tmp)` gives the command line (it may write files into `tmp` first)."""

    name: str
    args: Callable[[Shared, Path], list[str]]
    code: int
    phrase: str
    patch: dict[str, Any] = field(default_factory=dict)
    fixed_on: str | None = None  # the branch whose fix this case waits for


def _invoke(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    root = tmp_path_factory.mktemp("bad-inputs")
    data = root / "data"
    one_user = root / "one.csv"
    one_user.write_text("user,item,timestamp\n" + "".join(f"u1,i{i},{i}\n" for i in range(30)))
    _invoke(["--data-dir", str(data), "add-dataset", "one", "--file", str(one_user)])
    _invoke(["--data-dir", str(data), "train", *TINY, "--out", str(root / "run")])
    _invoke(
        ["--data-dir", str(data), "compare", *TINY, "--losses", "bce,ce", "--seeds", "0",
         "--permutations", "9", "--out", str(root / "comparison")]
    )  # fmt: skip
    losses = root / "own_losses.py"
    losses.write_text(OWN_LOSSES)
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        yield Shared(data, root / "run", root / "comparison", losses, url)


def copy_of(folder: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(folder, tmp / folder.name))


def damaged(shared: Shared, tmp: Path, file_name: str, garbage: bool) -> Path:
    """A copy of the comparison whose first run's `file_name` is cut in half, or garbage."""
    comparison = copy_of(shared.comparison, tmp)
    (target,) = sorted(comparison.rglob(file_name))[:1]
    data = target.read_bytes()
    target.write_bytes(b"\x00garbage\xff" * 8 if garbage else data[: len(data) // 2])
    return comparison


def train(shared: Shared, *args: str) -> list[str]:
    return ["--data-dir", str(shared.data), "train", *TINY, *args]


def written(tmp: Path, name: str, data: bytes) -> str:
    (tmp / name).write_bytes(data)
    return str(tmp / name)


def interrupt(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


T31A, T31B = "t31a", "t31b"
SETTINGS = b"max_epochs = 1\n"
GRID = b'losses = ["bce", "ce"]\nseeds = [0]\n'

CASES = [
    # 1. train over a finished run with other settings
    Case("train over a finished run, other loss",
         lambda s, t: train(s, "--loss", "improved", "--out", str(copy_of(s.run, t))),
         2, "--retrain-changed", fixed_on=T31A),
    Case("train over a finished run, other --lr",
         lambda s, t: train(s, "--lr", "0.002", "--out", str(copy_of(s.run, t))),
         2, "--retrain-changed", fixed_on=T31A),
    # 2. diverged runs
    Case("train --lr inf", lambda s, t: train(s, "--lr", "inf", "--out", str(t / "r")),
         1, "", fixed_on=T31A),
    Case("train --lr 1e30", lambda s, t: train(s, "--lr", "1e30", "--out", str(t / "r")),
         1, "", fixed_on=T31A),
    Case("train with an own loss giving NaN",
         lambda s, t: train(s, "--loss", f"{s.losses}:nan", "--out", str(t / "r")),
         1, "", fixed_on=T31A),
    # 3. damaged run files
    Case("report, metrics.json cut",
         lambda s, t: ["report", str(damaged(s, t, "metrics.json", garbage=False))],
         2, "metrics.json", fixed_on=T31B),
    Case("report, test_ranks.parquet garbage",
         lambda s, t: ["report", str(damaged(s, t, "test_ranks.parquet", garbage=True))],
         2, "test_ranks.parquet", fixed_on=T31B),
    Case("versus, metrics.json garbage",
         lambda s, t: ["versus", str(damaged(s, t, "metrics.json", garbage=True) / "synthetic"
                                     / "sasrec" / "bce"), str(s.comparison / "synthetic" /
                                                              "sasrec" / "ce")],
         2, "metrics.json", fixed_on=T31B),
    Case("versus, test_ranks.parquet cut",
         lambda s, t: ["versus", str(damaged(s, t, "test_ranks.parquet", garbage=False)
                                     / "synthetic" / "sasrec" / "bce"),
                       str(s.comparison / "synthetic" / "sasrec" / "ce")],
         2, "test_ranks.parquet", fixed_on=T31B),
    # 4. impossible --save-topk
    Case("train --save-topk 100000",
         lambda s, t: train(s, "--save-topk", "100000", "--out", str(t / "r")),
         2, "--save-topk", fixed_on=T31A),
    # 5. broken own losses in train
    Case("train, own loss raises",
         lambda s, t: train(s, "--loss", f"{s.losses}:raises", "--out", str(t / "r")),
         1, "broken on purpose", fixed_on=T31A),
    Case("train, own loss of the wrong shape",
         lambda s, t: train(s, "--loss", f"{s.losses}:per_position", "--out", str(t / "r")),
         1, "", fixed_on=T31A),
    Case("train, own loss detached",
         lambda s, t: train(s, "--loss", f"{s.losses}:detached", "--out", str(t / "r")),
         1, "", fixed_on=T31A),
    Case("train, own loss returns a float",
         lambda s, t: train(s, "--loss", f"{s.losses}:as_float", "--out", str(t / "r")),
         1, "", fixed_on=T31A),
    Case("train --loss os:system",
         lambda s, t: train(s, "--loss", "os:system", "--out", str(t / "r")),
         1, "", fixed_on=T31A),
    # 6. encodings, preprocess flags, run folders
    Case("train --config in UTF-16 without a byte-order mark",
         lambda s, t: train(s, "--config", written(t, "c.toml", SETTINGS.decode().encode(
             "utf-16-le")), "--out", str(t / "r")),
         2, "save it as UTF-8"),
    Case("train --config in Latin-1",
         lambda s, t: train(s, "--config", written(t, "c.toml", "# café\n".encode("latin-1")
                                                   + SETTINGS), "--out", str(t / "r")),
         2, "is not UTF-8 text"),
    Case("compare --config grid in UTF-16 without a byte-order mark",
         lambda s, t: ["--data-dir", str(s.data), "compare", "--config", written(
             t, "g.toml", GRID.decode().encode("utf-16-be")), "--out", str(t / "c")],
         2, "save it as UTF-8"),
    Case("preprocess --user-core -1",
         lambda s, t: ["--data-dir", str(s.data), "preprocess", "lastfm", "--user-core", "-1"],
         2, "--user-core -1: must be greater than or equal to 0"),
    Case("train --out ''", lambda s, t: train(s, "--out", ""), 2, "a run needs a folder"),
    Case("train --out .", lambda s, t: train(s, "--out", "."), 2, "a run needs a folder"),
    # 7. Ctrl-C in tune
    Case("tune, Ctrl-C in a trial",
         lambda s, t: ["--data-dir", str(s.data), "tune", *TINY, "--trials", "1",
                       "--losses", "bce", "--out", str(t / "tune")],
         130, "interrupted; run the same command again to resume",
         patch={"lossbench.training.loop.train_run": interrupt}),
    # 8. a mirror that never answers
    Case("download --mirror that hangs",
         lambda s, t: ["--data-dir", str(t / "d"), "download", "lastfm", "--mirror", s.silent_url],
         2, "is up, or drop --mirror",
         patch={"lossbench.data.download.TIMEOUT_SECONDS": 0.2}),
    # 9. junk values
    Case("tune --timeout nan",
         lambda s, t: ["--data-dir", str(s.data), "tune", "--timeout", "nan", "--out", str(t)],
         2, "--timeout must be a positive number of seconds, not nan"),
    Case("train --ks 100000",
         lambda s, t: train(s, "--ks", "100000", "--out", str(t / "r")),
         2, "more than the 500 items of synthetic"),
    Case("compare --ks 100000",
         lambda s, t: ["--data-dir", str(s.data), "compare", *TINY, "--losses", "bce",
                       "--seeds", "0", "--ks", "5,100000", "--out", str(t / "c")],
         2, "--ks 100000: more than the 500 items"),
    Case("train --sample-users 1000000",
         lambda s, t: train(s, "--sample-users", "1000000", "--out", str(t / "r")),
         2, "--sample-users 1,000,000 is more than the 2,000 users of synthetic"),
    Case("train on a one-user dataset",
         lambda s, t: train(s, "--dataset", "one", "--out", str(t / "r")),
         2, "one has 1 test user"),
    # 10. memory refusal names the setting that dominates
    Case("train --hidden-size 100000000",
         lambda s, t: train(s, "--hidden-size", "100000000", "--out", str(t / "r")),
         2, "--hidden-size", fixed_on=T31A),
    # 11. verify agrees with train about a broken meta.json
    Case("verify with a broken prepared/meta.json",
         lambda s, t: ["--data-dir", str(_broken_meta(s, t)), "verify", "synthetic"],
         1, "synthetic: DAMAGED"),
    # 15. a registered dataset that is not downloaded
    Case("compare --dataset ml-1m, not downloaded",
         lambda s, t: ["--data-dir", str(s.data), "compare", "--dataset", "ml-1m", "--losses",
                       "ce,bce,improved", "--out", str(t / "c")],
         2, "run `lossbench download ml-1m`"),
    # 16. an explicit sampler with explicitly unseen negatives
    Case("train --sampler in-batch --negatives-unseen",
         lambda s, t: train(s, "--loss", "sampled-ce", "--sampler", "in-batch",
                            "--negatives-unseen", "--out", str(t / "r")),
         2, "drop --negatives-unseen to use --sampler in-batch"),
]  # fmt: skip


def _broken_meta(shared: Shared, tmp: Path) -> Path:
    data = tmp / "data"
    shutil.copytree(shared.data / "synthetic", data / "synthetic")
    (data / "synthetic" / "prepared" / "meta.json").write_text('{"n_users": ')
    return data


def _marks(case: Case) -> list[pytest.MarkDecorator]:
    if case.fixed_on is None or case.name not in FAILING_HERE:
        return []
    return [pytest.mark.xfail(strict=True, reason=f"fixed on branch {case.fixed_on}")]


# The cases another branch fixes that still fail on this one.
FAILING_HERE: set[str] = set()


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.name, marks=_marks(c)) for c in CASES]
)  # fmt: skip
def test_bad_input_gets_one_line_and_its_exit_code(
    case: Case,
    shared: Shared,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for target, value in case.patch.items():
        monkeypatch.setattr(target, value)
    monkeypatch.chdir(tmp_path)  # default output folders land here
    args = case.args(shared, tmp_path)
    monkeypatch.setattr(sys, "argv", ["lossbench", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    # The message is on standard error; a check's verdict (`verify`) is its standard output.
    lines = [line for line in (err or out).splitlines() if line.strip()]
    assert (exit_info.value.code, len(lines)) == (case.code, 1), out + err
    assert case.phrase in lines[0]


def test_the_table_holds_the_cases_the_report_names() -> None:
    assert len(CASES) >= 27
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-32"])
def test_a_config_file_with_a_byte_order_mark_is_read(encoding: str, tmp_path: Path) -> None:
    """Editors on Windows write a byte-order mark (PowerShell's `>` writes UTF-16)."""
    from lossbench.training.config import build_config

    config_file = tmp_path / "settings.toml"
    config_file.write_text('max_epochs = 3\nvalidation_metric = "hr@5"  # é\n', encoding=encoding)
    config = build_config(toml_file=config_file)
    assert (config.max_epochs, config.validation_metric) == (3, "hr@5")


def test_ctrl_c_in_a_tune_trial_prints_one_line(tmp_path: Path) -> None:
    """In a fresh process, so that Optuna's log handler writes to the captured stream."""
    probe = (
        "import sys\n"
        "import lossbench.training.loop as loop\n"
        "def interrupt(*args, **kwargs):\n    raise KeyboardInterrupt\n"
        "loop.train_run = interrupt\n"
        "from lossbench.cli import main\n"
        f"sys.argv = ['lossbench', '--data-dir', {str(tmp_path / 'data')!r}, 'tune', "
        f"'--trials', '1', '--losses', 'bce', '--out', {str(tmp_path / 'tune')!r}]\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 130, done.stdout + done.stderr
    assert done.stderr.strip() == "interrupted; run the same command again to resume"


def test_a_preset_s_user_sample_is_at_most_and_an_explicit_one_is_checked() -> None:
    """`--smoke` samples at most 1,000 users: a smaller dataset is used whole, while an
    explicit `--sample-users` above the dataset's users is refused."""
    from dataclasses import replace

    import numpy as np

    from lossbench.data.prepared import PreparedDataset
    from lossbench.errors import LossbenchError
    from lossbench.training.config import build_config
    from lossbench.training.data_fit import check_data_fit

    users = 300
    dataset = PreparedDataset(
        name="small",
        n_items=50,
        train_offsets=np.arange(0, 3 * users + 1, 3),
        train_items=np.arange(3 * users) % 50 + 1,
        valid_items=np.full(users, 7),
        test_items=np.full(users, 8),
    )
    check_data_fit(build_config(overrides={"preset": "smoke"}), dataset)
    check_data_fit(build_config(overrides={"sample_users": 300, "ks": [1, 50]}), dataset)
    tiny = replace(dataset, n_items=12)  # the default cut-offs (up to 20) are not refused
    check_data_fit(build_config(), tiny)
    for overrides, message in [
        ({"sample_users": 301}, "--sample-users 301 is more than the 300 users of small"),
        ({"sample_users": 1}, "small with --sample-users 1 has 1 test user"),
        ({"ks": [10, 51, 100]}, "--ks 51,100: more than the 50 items of small"),
    ]:
        with pytest.raises(LossbenchError, match=message):
            check_data_fit(build_config(overrides=overrides), dataset)
