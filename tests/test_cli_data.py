"""`lossbench datasets / download / preprocess` through Typer's CliRunner."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from lossbench.cli import app, main
from lossbench.errors import LossbenchError

MIRROR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mirror"
needs_mirror = pytest.mark.skipif(
    not MIRROR.is_dir(), reason=f"real data mirror {MIRROR} is absent (../shared/data/mirror)"
)


def run(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["--data-dir", str(data_dir), *args])


def error_of(result: Result) -> str:
    """The message `main` would print (the runner hands back the raised LossbenchError)."""
    assert isinstance(result.exception, LossbenchError), result.output
    return str(result.exception)


def test_datasets_table_lists_names_and_status(tmp_path: Path) -> None:
    result = run(tmp_path, "datasets")
    assert result.exit_code == 0
    for word in ("ml-1m", "beauty-s3rec", "steam", "synthetic", "not downloaded", "generated"):
        assert word in result.output


def test_preprocess_synthetic_shows_the_summary_and_is_idempotent(tmp_path: Path) -> None:
    result = run(tmp_path, "preprocess", "synthetic")
    assert result.exit_code == 0, result.output
    assert "2,000" in result.output and "users" in result.output and "density" in result.output
    again = run(tmp_path, "preprocess", "synthetic")
    assert again.exit_code == 0 and "already prepared" in again.output
    assert "prepared" in run(tmp_path, "datasets").output


def test_a_folder_of_another_version_is_named_as_such_not_as_damaged(tmp_path: Path) -> None:
    assert run(tmp_path, "preprocess", "synthetic").exit_code == 0
    meta_file = tmp_path / "synthetic" / "prepared" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "format_version": 1}))
    status = run(tmp_path, "datasets").output
    assert "stale" in status and "damaged" not in status
    assert "2,000" in run(tmp_path, "preprocess", "synthetic").output  # generated again


def test_protocol_flags_override_the_defaults(tmp_path: Path) -> None:
    result = run(tmp_path, "preprocess", "synthetic", "--user-core", "60", "--no-dedup")
    assert result.exit_code == 0, result.output
    assert "2,000" not in result.output
    result = run(tmp_path, "preprocess", "synthetic", "--user-core", "100000")
    assert "nothing is left after filtering" in error_of(result)


def test_unknown_name_suggests_the_closest(tmp_path: Path) -> None:
    assert "did you mean 'lastfm'" in error_of(run(tmp_path, "download", "lastfn"))
    assert "did you mean 'beauty-s3rec'" in error_of(run(tmp_path, "preprocess", "beauty-s3re"))


def test_main_prints_one_line_and_exits_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["lossbench", "--data-dir", str(tmp_path), "download", "ml1m"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "error:" in err and "did you mean 'ml-1m'" in err and "Traceback" not in err


def test_unwritable_data_dir(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    for args in (("download", "lastfm", "--mirror", str(tmp_path)), ("preprocess", "synthetic")):
        message = error_of(run(not_a_folder, *args))
        assert "writable folder" in message


def test_malformed_row_names_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = b"1 1 2 3\n2 2 3 4\n3 x\n4\n"
    (tmp_path / "mirror" / "toy").mkdir(parents=True)
    (tmp_path / "mirror" / "toy" / "Toy.txt").write_bytes(content)
    registry = tmp_path / "datasets.toml"
    registry.write_text(
        '[toy]\nsource = "test"\nformat = "s3rec"\n[toy.file]\n'
        f'url = "https://example.invalid/Toy.txt"\nsize = {len(content)}\n'
        f'sha256 = "{hashlib.sha256(content).hexdigest()}"\n'
    )
    monkeypatch.setenv("LOSSBENCH_DATASETS", str(registry))
    data_dir = tmp_path / "data"
    assert run(data_dir, "download", "toy", "--mirror", str(tmp_path / "mirror")).exit_code == 0
    message = error_of(run(data_dir, "preprocess", "toy"))
    assert "Toy.txt line 4" in message and "malformed" in message
    assert not (data_dir / "toy" / "prepared").exists()


@needs_mirror
def test_download_and_preprocess_real_files_from_the_mirror(tmp_path: Path) -> None:
    result = run(tmp_path, "download", "lastfm", "beauty-s3rec", "--mirror", str(MIRROR))
    assert result.exit_code == 0, result.output
    assert result.output.count("verified") == 2
    again = run(tmp_path, "download", "lastfm", "beauty-s3rec", "--mirror", str(MIRROR))
    assert again.output.count("already downloaded") == 2
    result = run(tmp_path, "preprocess", "lastfm", "beauty-s3rec")
    assert result.exit_code == 0, result.output
    for number in ("1,090", "3,646", "52,551", "22,363", "12,101", "198,502"):
        assert number in result.output


@needs_mirror
def test_altered_mirror_file_leaves_nothing(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    shutil.copytree(MIRROR / "lastfm", mirror / "lastfm")
    original = (MIRROR / "lastfm" / "LastFM.txt").read_bytes()
    altered = bytearray(original)
    altered[100] = ord("7") if altered[100] != ord("7") else ord("8")
    target = mirror / "lastfm" / "LastFM.txt"
    target.chmod(0o644)
    target.write_bytes(bytes(altered))
    data_dir = tmp_path / "data"
    message = error_of(run(data_dir, "download", "lastfm", "--mirror", str(mirror)))
    assert hashlib.sha256(original).hexdigest() in message
    assert hashlib.sha256(bytes(altered)).hexdigest() in message
    assert not (data_dir / "lastfm").exists()


def test_temporal_split_of_an_untimed_dataset_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["lossbench", "--data-dir", str(tmp_path), "preprocess", "lastfm", "--split", "temporal"]
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "lastfm has no timestamps" in err and "--split loo" in err
    result = run(tmp_path, "preprocess", "ml-latest-small", "--split", "temporal")
    assert "--valid-quantile" not in error_of(result)  # not downloaded: says what to run
    bad = run(tmp_path, "preprocess", "synthetic", "--split", "temporal", "--test-quantile", "0.5")
    assert "must be below --test-quantile" in error_of(bad)


@needs_mirror
def test_temporal_preprocess_of_ml_latest_small_prints_its_counts(tmp_path: Path) -> None:
    assert run(tmp_path, "download", "ml-latest-small", "--mirror", str(MIRROR)).exit_code == 0
    result = run(tmp_path, "preprocess", "ml-latest-small", "--split", "temporal")
    assert result.exit_code == 0, result.output
    lines = {
        line.rsplit(maxsplit=1)[0].strip(): line.split()[-1]
        for line in result.output.splitlines()
        if line.strip()
    }
    assert lines["validation after time"] == "1458635171"
    assert lines["test after time"] == "1498029445"
    assert lines["training interactions"] == "80,669"
    assert (lines["validation users"], lines["test users"]) == ("21", "27")
    assert (lines["validation users with no history"], lines["test users with no history"]) == (
        "41",
        "47",
    )
    loo = run(tmp_path, "preprocess", "ml-latest-small")  # the other split: its own folder
    assert loo.exit_code == 0 and "already prepared" not in loo.output
    prepared = sorted(p.name for p in (tmp_path / "ml-latest-small").glob("prepared*"))
    assert prepared == ["prepared", "prepared-temporal-v0.8-t0.9"]
