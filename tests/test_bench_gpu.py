"""bench/gpu.py on a machine without a GPU: the one-line exit, the parity check it runs on
the GPU (here on CPU), and the JSON it writes (a dry run of the same code paths)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu  # noqa: E402
import parity  # noqa: E402

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@no_cuda
def test_without_cuda_it_says_so_in_one_line_and_exits_0(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--out", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PATH": ""},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().count("\n") == 0 and "no CUDA device" in done.stdout
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("loss", ["improved", "ce"])
@pytest.mark.parametrize("item_chunks", [False, True])
def test_fast_path_parity_holds_on_cpu(loss: str, item_chunks: bool) -> None:
    result = parity.fast_path_parity(torch.device("cpu"), loss, item_chunks)
    assert result["passed"], result
    assert result["loss_relative_difference"] < 1e-6
    assert 0 < result["max_gradient_relative_difference"] < 1e-5  # float32, not identical


def test_parity_catches_a_wrong_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from lossbench.losses import full_softmax

    monkeypatch.setattr(full_softmax, "_LOG2_E", full_softmax._LOG2_E * 1.001)
    result = parity.fast_path_parity(torch.device("cpu"), "improved")
    assert not result["passed"]


def test_chunk_bits_on_cpu() -> None:
    assert parity.chunk_bits(torch.device("cpu"), n_items=3000)


def check_document(document: dict, compiled: str) -> None:
    assert document["schema"] == 1 and document["environment"]["cpu_dry_run"] is True
    assert [(e["loss"], e["softmax_path"]) for e in document["parity"]] == [
        ("improved", "fused"),
        ("improved", "item chunks"),
        ("ce", "fused"),
        ("ce", "item chunks"),
    ]
    assert all(e["passed"] for e in document["parity"])
    assert document["chunk_bits"]["one block vs two"]["same_bits"] is True
    epochs = document["epochs"]
    keys = [(e["dataset"], e["loss"], e["precision"], e["compile"]) for e in epochs]
    assert keys == [
        ("synthetic", loss, precision, compile)
        for compile in (False, True)
        for precision in ("fp32", "bf16")
        for loss in ("bce", "improved")
    ]
    for entry in epochs:
        assert "error" not in entry, entry
        if entry["precision"] == "fp32" and (compiled == "ran" or not entry["compile"]):
            assert entry["epochs"] == 2 and entry["train_seconds_fastest"] > 0
            assert entry["loss_backend"] == ("chunked" if entry["loss"] == "improved" else None)
            assert entry["train_seconds_median"] >= entry["train_seconds_fastest"]
            assert entry["peak_memory_mb"] > 0 and 0 <= entry["test_ndcg@10"] <= 1
        elif entry["compile"] and compiled == "skipped":
            assert entry["skipped"] == "--skip-compile"
    softmax = document["softmax"]
    assert [e["dataset"] for e in softmax] == ["synthetic"] and "error" not in softmax[0]
    assert softmax[0]["fp32_ms"] > 0 and softmax[0]["bf16_ms"] > 0
    assert softmax[0]["bf16_relative_difference"]["loss"] < 1e-2  # bf16 near fp32
    assert "needs CUDA" in softmax[0]["backends"]["skipped"]  # Cut Cross-Entropy: CUDA only
    assert [r["product"] for r in softmax[0]["matmul"]][1:] == [
        "logits N x D x V",
        "grad hidden N x V x D",
        "grad items D x N x V",
    ]
    steps = document["million_items"]
    assert [e["precision"] for e in steps] == ["fp32", "bf16"]
    assert steps[0]["n_items"] == 5_000 and steps[0]["seconds_per_step"] > 0
    assert document["total_seconds"] > 0


def test_dry_run_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    arguments = ["--cpu-dry-run", "--out", str(out), "--data-dir", str(tmp_path / "data")]
    sections = ["--sections", "parity,softmax,epochs,million_items", "--skip-compile"]
    assert gpu.main([*arguments, *sections]) == 0
    check_document(json.loads(out.read_text()), compiled="skipped")


@pytest.mark.slow
def test_dry_run_with_compile_and_compare(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    arguments = ["--cpu-dry-run", "--out", str(out), "--data-dir", str(tmp_path / "data")]
    assert gpu.main(arguments) == 0
    document = json.loads(out.read_text())
    check_document(document, compiled="ran")
    compiled = [e for e in document["epochs"] if e["compile"] and "skipped" not in e]
    assert compiled and compiled[0]["torch_compile"]["new_graphs"] > 0  # later ones reuse
    smoke = document["compare"]["smoke"]
    assert smoke["exit_code"] == 0, smoke["output_tail"]
    assert sorted(run["loss"] for run in smoke["runs"]) == ["bce", "ce", "improved"]


def test_a_failing_entry_is_recorded_and_the_rest_runs(tmp_path: Path) -> None:
    report = gpu.Report(tmp_path / "r.json", budget=100.0)

    def broken() -> dict:
        raise RuntimeError("no such kernel")

    entry = gpu.measured({"what": 1}, broken, report, 0.0)
    assert entry["error"] == "RuntimeError: no such kernel" and entry["what"] == 1
    assert gpu.measured({}, lambda: {"x": 2}, report, 0.0)["x"] == 2
    assert "skipped" in gpu.measured({}, lambda: {"x": 2}, report, reserve=1e6)
    report.add("section", entry)
    assert json.loads((tmp_path / "r.json").read_text())["section"] == [entry]


def test_backend_steps_time_each_backend_and_precision() -> None:
    """The backends' section on CPU, with the chunked softmax standing in for Cut
    Cross-Entropy (CUDA only) and a wrong softmax beside them: every backend in fp32 and bf16,
    its median time and its difference from the first backend."""
    from lossbench.losses.base import LossInputs, LossParams
    from lossbench.losses.full_softmax import full_softmax_ce

    def doubled(inputs: LossInputs, params: LossParams) -> torch.Tensor:
        return 2 * full_softmax_ce(inputs, params)

    backends = {"chunked": full_softmax_ce, "same": full_softmax_ce, "doubled": doubled}
    entries = gpu.backend_steps(64, 300, 2, torch.device("cpu"), backends)
    assert list(entries) == [f"{n} {p}" for n in backends for p in ("fp32", "bf16")]
    for name, entry in entries.items():
        assert entry["ms"] > 0 and "peak_memory_mb" not in entry  # memory: CUDA only
        difference = entry["relative_difference"]
        if name.startswith("doubled"):
            assert difference["loss"] == pytest.approx(1.0, rel=1e-3)
        else:
            assert difference == {"loss": 0.0, "grad_hidden": 0.0, "grad_table": 0.0}
