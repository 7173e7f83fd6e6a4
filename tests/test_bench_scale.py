"""bench/scale.py end to end on a small file: every phase's row, the epoch extrapolated from
the steps run, the validation sample, progress on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "scale.py"


def test_the_scale_bench_trains_steps_and_extrapolates_the_epoch(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPT), "--rows", "80000", "--steps", "2"]
    command += ["--losses", "improved,sce", "--eval-users", "40", "--json", "--work", str(tmp_path)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    prepared = results["prepare"][0]
    assert prepared["path"] == "streamed" and prepared["interactions"] <= 80_000
    assert [row["loss"] for row in results["train"]] == ["improved", "sce"]
    for row in results["train"]:
        assert row["steps"] == 2 and row["epoch_steps"] >= 1
        assert row["extrapolated"] and row["epoch_steps"] == 3  # 554 users, 256 a batch
        assert row["epoch_seconds"] == row["step_seconds"] * row["epoch_steps"]
        assert 0 < row["tokens"] <= row["epoch_tokens"] and row["tokens_per_second"] > 0
        assert row["peak_gib"] >= row["train_peak_gib"] >= row["setup_peak_gib"] > 0
    first, second = results["train"]
    # the validation pass after the first loss only, on a sample of 40 of its users
    assert (first["eval_users"], first["eval_extrapolated"]) == (40, True)
    assert first["valid_users"] == prepared["users"] and 0 <= first["valid_ndcg@10"] <= 1
    assert "eval_seconds" not in second
    assert "training sasrec + improved" in done.stderr
    assert "improved: step 2/2" in done.stderr and "validation part 8/8 (40 users)" in done.stderr
