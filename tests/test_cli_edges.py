"""The command line's edges: usage errors, --version, Ctrl-C, --data-dir after the command,
operating-system errors, `report --print-only`, checkpoints lossbench cannot read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

import lossbench
from lossbench.cli import app, main
from lossbench.errors import LossbenchError

INTERRUPTED = "interrupted; run the same command again to resume"

USAGE_ERRORS = [
    [],
    ["trian"],
    ["--bogus"],
    ["train", "--threads", "0"],
    ["train", "--seed", "x"],
    ["download"],
]


def run_main(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the console entry point."""
    monkeypatch.setattr(sys, "argv", ["lossbench", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=lambda args: " ".join(args) or "no-args")
def test_usage_errors_exit_2_without_click(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """typer vendors its own click: a `pip install` brings no `click` to import."""
    monkeypatch.setitem(sys.modules, "click", None)  # `import click` now fails
    code, out, err = run_main(args, monkeypatch, capsys)
    assert code == 2, out + err
    assert "Traceback" not in out + err
    assert "Usage: lossbench" in out + err


def test_version_and_short_help(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "click", None)
    code, out, _ = run_main(["--version"], monkeypatch, capsys)
    assert (code, out.strip()) == (0, f"lossbench {lossbench.__version__}")
    code, out, _ = run_main(["-h"], monkeypatch, capsys)
    assert code == 0 and "download" in out and "--install-completion" in out
    code, out, _ = run_main(["train", "-h"], monkeypatch, capsys)
    assert code == 0 and "--max-epochs" in out and "--data-dir" in out


def test_help_imports_no_heavy_module() -> None:
    """`--help` and usage errors answer without torch, polars or matplotlib (seconds each)."""
    probe = (
        "import sys\n"
        "from lossbench.cli import main\n"
        "sys.argv = ['lossbench', '--help']\n"
        "try:\n    main()\n"
        "except SystemExit:\n"
        "    heavy = [m for m in ('torch', 'polars', 'matplotlib', 'numpy', 'pydantic')"
        " if m in sys.modules]\n"
        "    print('HEAVY', heavy)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert "HEAVY []" in completed.stdout, completed.stdout + completed.stderr


def test_data_dir_before_or_after_the_command(tmp_path: Path) -> None:
    for args in (
        ["--data-dir", str(tmp_path / "a"), "preprocess", "synthetic"],
        ["preprocess", "synthetic", "--data-dir", str(tmp_path / "b")],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / "synthetic" / "prepared" / "meta.json").is_file()
    assert (tmp_path / "b" / "synthetic" / "prepared" / "meta.json").is_file()
    listed = CliRunner().invoke(app, ["datasets", "--data-dir", str(tmp_path / "b")])
    assert listed.exit_code == 0 and "prepared" in listed.output


# --- Ctrl-C --------------------------------------------------------------------------------


def interrupt(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("module", "function", "args"),
    [
        ("lossbench.data.download", "download_dataset", ["download", "lastfm"]),
        ("lossbench.training.loop", "train_entry", ["train", "--max-epochs", "1"]),
        ("lossbench.compare.ci.step", "run_plan", ["compare", "--seeds", "0"]),
    ],
)
def test_ctrl_c_prints_one_line_and_exits_130(
    module: str,
    function: str,
    args: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(f"{module}.{function}", interrupt)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(["--data-dir", str(tmp_path), *args], monkeypatch, capsys)
    assert code == 130
    assert [line for line in err.splitlines() if line.strip()] == [INTERRUPTED]
    assert "Traceback" not in out + err


BODY = b"".join(f"{u} {u} {u + 1} {u + 2}\n".encode() for u in range(1, 120_000))  # ~3 MB
HEAD = 1_500_000  # sent at once; the client writes all of it, then waits


class SlowServer:
    """Sends the first HEAD bytes of BODY, the rest only once released; honours Range."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                header = self.headers.get("Range")
                server.ranges.append(header)
                start = int(header.removeprefix("bytes=").split("-")[0]) if header else 0
                self.send_response(206 if header else 200)
                if header:
                    self.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
                self.send_header("Content-Length", str(len(BODY) - start))
                self.end_headers()
                body = BODY[start:]
                try:
                    self.wfile.write(body[:HEAD])
                    self.wfile.flush()
                    if server.release.wait(timeout=30):
                        self.wfile.write(body[HEAD:])
                except OSError:
                    pass  # the client went away

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def slow_server() -> Iterator[SlowServer]:
    server = SlowServer()
    thread = threading.Thread(target=server.httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.httpd.shutdown()
    server.httpd.server_close()


def test_sigint_during_a_download_exits_130_and_the_rerun_resumes(
    slow_server: SlowServer, tmp_path: Path
) -> None:
    import hashlib

    registry = tmp_path / "datasets.toml"
    registry.write_text(
        f'[toy]\nsource = "test"\nformat = "s3rec"\n[toy.file]\nurl = "{slow_server.url}/t.txt"\n'
        f'size = {len(BODY)}\nsha256 = "{hashlib.sha256(BODY).hexdigest()}"\n'
    )
    env = {**os.environ, "LOSSBENCH_DATASETS": str(registry)}
    command = [sys.executable, "-m", "lossbench", "--data-dir", str(tmp_path / "d"), "download"]
    process = subprocess.Popen(
        [*command, "toy"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    part = tmp_path / "d" / "toy" / "raw" / "t.txt.part"
    for _ in range(600):  # up to 60 s for the first bytes to land
        if part.is_file() and part.stat().st_size >= HEAD:
            break
        threading.Event().wait(0.1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, out + err
    assert INTERRUPTED in err and "Traceback" not in out + err
    assert part.stat().st_size == HEAD  # every byte received is kept for the rerun
    slow_server.release.set()
    again = subprocess.run(
        [*command, "toy"], env=env, capture_output=True, text=True, check=False, timeout=60
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert slow_server.ranges[-1] == f"bytes={HEAD}-"
    assert (tmp_path / "d" / "toy" / "raw" / "t.txt").read_bytes() == BODY


# --- operating-system errors -----------------------------------------------------------------


def error_of(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, LossbenchError), result.output
    return str(result.exception)


def test_out_naming_an_existing_file(tmp_path: Path) -> None:
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    for command in (["train"], ["compare", "--seeds", "0"], ["pretrain", "--dataset", "lastfm"]):
        message = error_of(["--data-dir", str(tmp_path), *command, "--out", str(existing)])
        assert f"--out {existing} is a file, not a folder" in message
    below = error_of(["train", "--out", str(existing / "run")])
    assert f"{existing} is a file, not a folder" in below
    assert existing.read_text() == "keep me"


def refuse_writes(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make `folder` read-only: by its mode, or (root writes anyway) by failing file creation."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real = tempfile.mkstemp

        def mkstemp(*args: object, dir: object = None, **kwargs: object) -> tuple[int, str]:
            if dir is not None and Path(str(dir)).resolve().is_relative_to(folder.resolve()):
                raise PermissionError(13, "Permission denied", str(dir))
            return real(*args, dir=dir, **kwargs)  # type: ignore[call-overload]

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_read_only_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    refuse_writes(monkeypatch, locked)
    try:
        message = error_of(["train", "--out", str(locked / "run")])
    finally:
        locked.chmod(0o755)
    assert f"--out {locked / 'run'}: cannot write in {locked} (permission denied)" in message


def test_an_os_error_inside_a_command_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", "/data/lastfm/raw")

    monkeypatch.setattr("lossbench.data.download.download_dataset", fail)
    code, out, err = run_main(
        ["--data-dir", str(tmp_path), "download", "lastfm"], monkeypatch, capsys
    )
    assert code == 2 and "Traceback" not in out + err
    assert (
        err.strip()
        == "error: /data/lastfm/raw: permission denied; check the path and its permissions"
    )


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `compare` output folder: synthetic sasrec with bce and ce, one epoch each."""
    folder = tmp_path_factory.mktemp("comparison")
    result = CliRunner().invoke(
        app,
        ["--data-dir", str(folder / "data"), "compare", "--out", str(folder / "out"),
         "--losses", "bce,ce", "--seeds", "0", "--max-epochs", "1", "--hidden-size", "8",
         "--max-len", "10", "--batch-size", "256", "--threads", "1", "--permutations", "9"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return folder / "out"


def test_report_print_only_and_a_read_only_folder(
    comparison: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(comparison, out)
    (out / "summary.md").unlink()
    before = sorted(path.name for path in out.iterdir())
    printed = CliRunner().invoke(app, ["report", str(out), "--print-only", "--permutations", "9"])
    assert printed.exit_code == 0, printed.output
    assert "bce" in printed.output and "ce" in printed.output
    assert sorted(path.name for path in out.iterdir()) == before  # nothing written
    refuse_writes(monkeypatch, out)
    try:
        message = error_of(["report", str(out), "--permutations", "9"])
        printed = CliRunner().invoke(app, ["report", str(out), "--print-only"])
    finally:
        out.chmod(0o755)
    assert f"report {out}: cannot write in {out} (permission denied)" in message
    assert "--print-only" in message
    assert printed.exit_code == 0, printed.output


# --- checkpoints, messages, run records --------------------------------------------------------


class NotATensor:
    pass


def test_a_checkpoint_with_objects_never_suggests_weights_only_false(tmp_path: Path) -> None:
    import torch

    from lossbench.models import MODELS

    path = tmp_path / "pickled.pt"
    torch.save({"kind": "anything", "object": NotATensor()}, path)
    model = MODELS["s3rec"].build(MODELS["s3rec"].config_class(hidden_size=8, max_len=5), 10)
    with pytest.raises(LossbenchError) as error:
        model.load_pretrained(path)
    message = str(error.value)
    assert str(path) in message and "not a readable checkpoint" in message
    assert "weights_only" not in message and "\n" not in message


def test_run_record_names_the_lossbench_version(comparison: Path) -> None:
    records = list(comparison.rglob("config.json"))
    assert records
    for record in records:
        environment = json.loads(record.read_text())["environment"]
        assert environment["lossbench"] == lossbench.__version__


def test_plural_of_loss_in_messages(comparison: Path, tmp_path: Path) -> None:
    from lossbench.compare.plan.grid import read_grid_file

    grid = tmp_path / "grid.toml"
    grid.write_text('[settings]\nloss = "bce"\n')
    with pytest.raises(LossbenchError) as error:
        read_grid_file(grid)
    assert "as losses = [...]" in str(error.value) and "losss" not in str(error.value)
    message = error_of(["versus", str(comparison), str(comparison / "synthetic/sasrec/bce")])
    assert "several losses (bce, ce)" in message
