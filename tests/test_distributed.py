"""One run over several processes: each rank's share of a batch, sharded evaluation, and
`torchrun` runs of the installed console script against one process (2 gloo processes on CPU).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lossbench.data.sequences import build_sequence_tensors
from lossbench.data.store import make_synthetic_prepared
from lossbench.training.batches import TrainBatch, TrainBatcher
from lossbench.training.distributed import ProcessGroup, positions_in, rank_share
from lossbench.training.evaluate import Evaluator


def _triplets(parts: list[TrainBatch]) -> list[tuple[int, int, int]]:
    """(user, column from the right, target) of every training position: what it trains."""
    found = []
    for part in parts:
        width = part.inputs.shape[1]
        rows = torch.div(part.positions, width, rounding_mode="floor")
        columns = width - part.positions % width
        for row, column, target in zip(rows, columns, part.targets, strict=True):
            found.append((int(part.users[row]), int(column), int(target)))
    return sorted(found)


@pytest.fixture(scope="module")
def sequences():  # type: ignore[no-untyped-def]
    dataset = make_synthetic_prepared(n_users=150, n_items=60, mean_length=10.0, seed=3)
    return build_sequence_tensors(dataset, max_len=20)


@pytest.mark.parametrize("positions", ["all", "last", "masked"])
@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_shares_split_every_batch_exactly(sequences, positions: str, world_size: int) -> None:  # type: ignore[no-untyped-def]
    batcher = TrainBatcher(
        sequences,
        100,
        positions,
        "random",
        seed=0,
        mask_token=61,  # type: ignore[arg-type]
    )
    for parts in batcher.epoch():
        shares = [rank_share(parts, ProcessGroup(rank, world_size, "gloo")) for rank in range(3)]
        shares = shares[:world_size]
        assert sum(positions_in(share) for share in shares) == positions_in(parts)
        assert sorted(t for share in shares for t in _triplets(share)) == _triplets(parts)
        rows = [set(part.users.tolist()) for share in shares for part in share]
        assert sum(len(r) for r in rows) == len(set().union(*rows))  # no user on two ranks


def test_sharded_evaluation_sums_to_the_whole(sequences) -> None:  # type: ignore[no-untyped-def]
    from lossbench.models.sasrec import SASRec

    torch.manual_seed(0)
    model = SASRec(
        60, hidden_size=16, num_layers=1, num_heads=1, inner_size=None, dropout=0.0,
        attention_dropout=0.0, max_len=20, init_std=0.02,
    )  # fmt: skip
    evaluator = Evaluator(sequences.test, 16, True, torch.device("cpu"))
    whole = evaluator.evaluate(model, topk=5)
    halves = [evaluator.evaluate(model, topk=5, shard=(rank, 2)) for rank in range(2)]
    assert torch.equal(halves[0].ranks + halves[1].ranks, whole.ranks)
    assert halves[0].topk is not None and halves[1].topk is not None
    assert torch.equal(halves[0].topk + halves[1].topk, whole.topk)
    assert (halves[0].ranks > 0).sum() not in (0, len(whole.ranks))  # both ranks did work


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _train(
    script: Path, tmp_path: Path, out: str, processes: int, *flags: str
) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LOSSBENCH_DATA_DIR": str(tmp_path / "data")}
    launcher: list[str] = [str(script)]
    if processes > 1:
        port = str(_free_port())
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                    str(processes), "--master-port", port, "-m", "lossbench"]  # fmt: skip
    command = [*launcher, "train", "--dataset", "synthetic", "--model", "sasrec", "--loss",
               "improved", "--threads", "1", "--out", str(tmp_path / out), *flags]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=400)


def test_two_processes_reach_the_one_process_parameters_in_float64(
    script: Path, tmp_path: Path
) -> None:
    """Dropout off, float64: two gloo ranks train to one process's weights after an epoch."""
    flags = ("--max-epochs", "1", "--dropout", "0", "--attention-dropout", "0",
             "--precision", "fp64", "--sample-users", "400", "--batch-size", "64")  # fmt: skip
    alone = _train(script, tmp_path, "one", 1, *flags)
    assert alone.returncode == 0, alone.stderr
    together = _train(script, tmp_path, "two", 2, *flags)
    assert together.returncode == 0, together.stdout + together.stderr
    one = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "model.pt", weights_only=True)
    assert all(value.dtype == torch.float64 for value in one.values())
    assert max(float((one[k] - two[k]).abs().max()) for k in one) < 1e-6
    import json

    record = json.loads((tmp_path / "two" / "config.json").read_text())
    assert record["environment"]["distributed"] == {
        "world_size": 2,
        "backend": "gloo",
        "devices": ["cpu", "cpu"],
    }
    assert not list((tmp_path / "two").glob("*.replaced-*"))  # one folder, written by rank 0


def test_an_unreachable_rendezvous_is_one_line(script: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "LOSSBENCH_DATA_DIR": str(tmp_path / "data"),
        "WORLD_SIZE": "2",
        "RANK": "1",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),  # nobody listens there
        "LOSSBENCH_DIST_TIMEOUT": "2",
    }
    done = subprocess.run(
        [str(script), "train", "--dataset", "synthetic", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 2, output
    assert output.startswith("error: could not join the process group at 127.0.0.1:")
    assert len(output.splitlines()) == 1, output
    assert not (tmp_path / "run").exists()


def test_workers_per_run_is_a_ray_option(script: Path, tmp_path: Path) -> None:
    env = {**os.environ, "LOSSBENCH_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run(
        [str(script), "compare", "--smoke", "--workers-per-run", "2", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 2, output
    assert output == (
        "error: --workers-per-run apply to --executor ray; the local executor trains one run "
        "at a time, with --threads torch threads"
    )


# --- slow: whole runs over two processes (a few minutes on 2 cores) -------------------------

TWO_EPOCHS = ("--max-epochs", "2", "--dropout", "0")


def _test_metrics(run_dir: Path) -> dict[str, float]:
    import json

    return dict(json.loads((run_dir / "metrics.json").read_text())["test"])


@pytest.mark.slow
def test_two_processes_test_within_5_percent_of_one(script: Path, tmp_path: Path) -> None:
    for out, processes in (("one", 1), ("two", 2)):
        done = _train(script, tmp_path, out, processes, *TWO_EPOCHS)
        assert done.returncode == 0, done.stdout + done.stderr
    one, two = _test_metrics(tmp_path / "one"), _test_metrics(tmp_path / "two")
    for name in ("hr@10", "ndcg@10"):
        assert abs(two[name] - one[name]) <= 0.05 * one[name], (name, one[name], two[name])


@pytest.mark.slow
def test_a_killed_rank_stops_the_other_and_the_rerun_resumes(script: Path, tmp_path: Path) -> None:
    import signal
    import time

    flags = ("--max-epochs", "8", "--checkpoint-every", "1", "--sample-users", "600")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LOSSBENCH_DATA_DIR": str(tmp_path / "data")}
    port = str(_free_port())
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", port, "-m", "lossbench", "train", "--dataset", "synthetic",
               "--threads", "1", "--out", str(tmp_path / "run"), *flags]  # fmt: skip
    launcher = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert checkpoint.exists(), "no checkpoint after the first epoch"
    rank_1 = _rank_process(1)
    killed_at = time.monotonic()
    os.kill(rank_1, signal.SIGKILL)
    output, _ = launcher.communicate(timeout=120)
    assert time.monotonic() - killed_at < 60
    assert launcher.returncode != 0
    assert "run the same command again to resume" in output  # interrupted, or lost its peers
    assert not (tmp_path / "run" / "metrics.json").exists()
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    resumed = re.search(r"resuming \S+ after epoch (\d)", " ".join(rerun.stdout.split()))
    assert resumed is not None and 1 <= int(resumed.group(1)) < 8, rerun.stdout
    assert (tmp_path / "run" / "metrics.json").exists()


def _rank_process(rank: int) -> int:
    """The pid of the lossbench process of `rank` (from its environment)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"lossbench" in cmdline:
            if b"torch.distributed.run" not in cmdline:
                return int(entry.name)
    raise AssertionError(f"no process of rank {rank}")


@pytest.mark.slow
def test_ray_train_workers_give_torchruns_metrics(script: Path, tmp_path: Path) -> None:
    """compare --executor ray --workers-per-run 2: the metrics of torchrun with 2 processes."""
    pytest.importorskip("ray.train.torch")
    torchrun = _train(script, tmp_path, "torchrun", 2, *TWO_EPOCHS)
    assert torchrun.returncode == 0, torchrun.stdout + torchrun.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LOSSBENCH_DATA_DIR": str(tmp_path / "data")}
    out = str(tmp_path / "ray")
    command = [str(script), "compare", "--dataset", "synthetic", "--model", "sasrec",
               "--losses", "improved", "--seeds", "0", *TWO_EPOCHS, "--executor", "ray",
               "--workers-per-run", "2", "--cpus-per-run", "1", "--out", out]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=580)
    assert done.returncode == 0, done.stdout + done.stderr
    (run_dir,) = {path.parent for path in (tmp_path / "ray").rglob("metrics.json")}
    assert _test_metrics(run_dir) == _test_metrics(tmp_path / "torchrun")


@pytest.mark.parametrize("command", ["compare", "tune", "reproduce", "pretrain"])
def test_only_train_runs_under_torchrun(script: Path, tmp_path: Path, command: str) -> None:
    env = {**os.environ, "LOSSBENCH_DATA_DIR": str(tmp_path / "data"), "WORLD_SIZE": "2"}
    done = subprocess.run(
        [str(script), command, "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 2, output
    assert output.startswith(f"error: `lossbench {command}` does not run under torchrun")
    assert len(output.splitlines()) == 1


def test_a_diverged_run_stops_every_rank_and_rank_0_reports_it(
    script: Path, tmp_path: Path
) -> None:
    """The ranks read the non-finite flag together at the epoch's end: both stop (none waits
    in an all-reduce), one FAIL line from rank 0, its traceback in failure.txt."""
    flags = ("--max-epochs", "2", "--hidden-size", "8", "--lr", "inf")
    failed = _train(script, tmp_path, "run", 2, *flags)
    assert failed.returncode != 0, failed.stdout + failed.stderr
    lines = [line for line in failed.stderr.splitlines() if "FAIL training" in line]
    assert len(lines) == 1 and "the training loss is nan at step 2 of " in lines[0], lines
    assert "in epoch 1, the run diverged" in lines[0]
    assert (tmp_path / "run" / "failure.txt").is_file()
    assert not (tmp_path / "run" / "metrics.json").exists()
