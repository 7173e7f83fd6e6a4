"""The GPU path, checked and timed on a CUDA machine in under ten minutes, into one JSON file.

    python bench/gpu.py                                   # writes gpu-bench.json
    python bench/gpu.py --out h200.json --mirror DIR      # datasets from a local mirror
    python bench/gpu.py --sections epochs --skip-compile  # part of it again
    python bench/gpu.py --cpu-dry-run --out dry.json      # the same code paths, tiny, on CPU

On a machine without CUDA it says so in one line and exits 0. Sections, in this order:

1. `parity`: the fast path against the plain computation (padded, logits materialized) on
   one batch, loss and every gradient, float32 without TF32, for `improved` and `ce`, on
   the fused and the item-chunked softmax; whether two chunk sizes give the same bits; and
   Cut Cross-Entropy's kernels (needs CUDA and `lossbench[cce]`) against the chunked path in
   float64, loss and both gradients.
2. `softmax`: the full softmax's loss step, fp32 against bf16 (the bf16 path: bf16 logits and
   gradient products, fp32 sums), on one training batch of beauty-s3rec and lastfm: median
   milliseconds, GFLOP/s beside the device's matmul rates for the same shapes, peak memory,
   and bf16's relative difference from fp32 in the loss and both gradients; then the same
   step on each backend (`chunked` and `cut-cross-entropy`), fp32 and bf16, interleaved:
   median milliseconds, peak memory, and Cut Cross-Entropy's difference from `chunked`.
3. `epochs`: SASRec epochs of bce and improved on lastfm and beauty-s3rec, fp32 and bf16,
   eager then `--compile`: seconds (each epoch ends on a device sync), validation seconds,
   peak GPU memory (`torch.cuda.max_memory_allocated`), torch.compile's graph counts, and
   the softmax backend the run used (`cut-cross-entropy` on CUDA when installed).
4. `million_items`: sasrec + improved steps on a 1,000,000-item catalogue, fp32 and bf16.
5. `compare`: one whole `lossbench compare --smoke` in a fresh process (`compare_smoke`).

Every entry is isolated: one that fails records its error and the rest still run, and the
file is rewritten after each, so a run cut short keeps what it measured. Entries that would
start past `--budget` seconds are recorded as skipped; the compiled epochs come last. Exit
status 1 only when the parity check fails. Datasets are downloaded (from `--mirror` when it
exists) and preprocessed with lossbench's own functions into `--data-dir`.
`--cpu-dry-run` runs every section on CPU at toy sizes (the synthetic dataset, a 5,000-item
catalogue, torch.compile with dynamo's eager backend: tracing, graph breaks and recompiles as
on the GPU, no code generation), to check the script itself.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import torch

import lossbench
from bf16_profile import autocast, matmul_rates, softmax_step, synchronize
from harness import (
    MILLION,
    catalogue_step_config,
    prepared_dataset,
    random_catalogue,
    run_config,
    timed_run,
)
from lossbench.atomic import write_json
from lossbench.errors import LossbenchError
from lossbench.losses import resolve_loss
from lossbench.losses.base import LossFn, LossInputs, LossParams
from lossbench.losses.full_softmax import full_softmax_ce
from lossbench.losses.softmax_backend import cce_installed, cce_softmax_ce, softmax_backend
from lossbench.paths import default_data_dir
from lossbench.training.softmax_chunk import cpu_model_name
from parity import cce_parity, chunk_bits, fast_path_parity

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("parity", "softmax", "epochs", "million_items", "compare")
COMPILE_RESERVE = 90.0  # seconds a compiled entry needs at least (compilation included)
EAGER_RESERVE = 20.0


@dataclass
class Plan:
    """What to run: the real sizes on CUDA, toy ones for `--cpu-dry-run`."""

    device: str
    datasets: list[str]
    epochs: int
    precisions: list[str] = field(default_factory=lambda: ["fp32", "bf16"])
    losses: list[str] = field(default_factory=lambda: ["bce", "improved"])
    model_settings: dict[str, Any] = field(default_factory=dict)
    catalogue_items: int = MILLION
    # (dataset, training positions in one batch of 256 users, items): the softmax section
    softmax_shapes: list[tuple[str, int, int]] = field(
        default_factory=lambda: [("beauty-s3rec", 1500, 12101), ("lastfm", 11000, 3646)]
    )
    square: int = 2048  # the square matmul beside the softmax's shapes
    compare_args: list[str] = field(default_factory=list)


def cuda_plan(epochs: int) -> Plan:
    return Plan("cuda", ["lastfm", "beauty-s3rec"], epochs)


def dry_run_plan() -> Plan:
    return Plan(
        "cpu",
        ["synthetic"],
        2,
        model_settings={"hidden_size": 16, "num_layers": 1, "max_len": 20},
        catalogue_items=5_000,
        softmax_shapes=[("synthetic", 200, 500)],
        square=128,  # an emulated bf16 2048^3 product takes a minute
        # One seed, and no chunk probe in a check of the script.
        compare_args=["--seeds", "0", "--softmax-chunk", "1048576"],
    )


def compare_smoke(plan: Plan, data_dir: Path, work_dir: Path) -> dict[str, Any]:
    """One whole `lossbench compare --smoke` (bce, ce and improved on the synthetic data,
    with the CI check that improved beats bce) through the command line, in a fresh process."""
    out = work_dir / "compare"
    command = [
        *(sys.executable, "-m", "lossbench", "--data-dir", str(data_dir), "compare", "--smoke"),
        *("--losses", "bce,ce,improved", "--expect", "improved > bce"),
        *plan.compare_args,
        *("--device", plan.device, "--out", str(out)),
    ]
    # The same lossbench as this script; the chunk cache in the bench's data folder.
    paths = [str(Path(lossbench.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path for path in paths if path),
        "LOSSBENCH_DATA_DIR": str(data_dir),
    }
    started = time.perf_counter()
    finished = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=False,
    )
    seconds = time.perf_counter() - started
    results = out / "results.csv"
    return {
        "command": " ".join(command[1:]),
        "exit_code": finished.returncode,
        "seconds": seconds,
        "runs": pl.read_csv(results).to_dicts() if results.is_file() else [],
        "output_tail": (finished.stdout + finished.stderr)[-3000:],
    }


class Report:
    """The JSON document, rewritten atomically after every entry."""

    def __init__(self, path: Path, budget: float) -> None:
        self.path = path
        self.started = time.monotonic()
        self.deadline = self.started + budget
        self.document: dict[str, Any] = {"schema": 1}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, section: str, entry: dict[str, Any], key: str | None = None) -> None:
        self.document.setdefault(section, [] if key is None else {})
        if key is None:
            self.document[section].append(entry)
        else:
            self.document[section][key] = entry
        self.save()

    def save(self) -> None:
        self.document["total_seconds"] = time.monotonic() - self.started
        write_json(self.path, self.document)


def measured(
    what: dict[str, Any], work: Callable[[], dict[str, Any]], report: Report, reserve: float
) -> dict[str, Any]:
    """`what` plus the result of `work()`, its wall seconds, or why it did not run."""
    if report.left() < reserve:
        return {**what, "skipped": f"time budget: {report.left():.0f} s left"}
    started = time.perf_counter()
    try:
        result = work()
    except LossbenchError as error:  # a refused setting (bf16 on a CPU without it)
        return {**what, "skipped": str(error)}
    except Exception as error:  # noqa: BLE001 - one failure must not end the run
        trace = traceback.format_exc().splitlines()[-12:]
        return {**what, "error": f"{type(error).__name__}: {error}", "traceback": trace}
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {**what, **result, "seconds": time.perf_counter() - started}


def parity_section(plan: Plan, report: Report) -> bool:
    device = torch.device(plan.device)
    passed = True
    for loss in ("improved", "ce"):
        for item_chunks in (False, True):
            what = {"loss": loss, "softmax_path": "item chunks" if item_chunks else "fused"}
            work = functools.partial(fast_path_parity, device, loss, item_chunks)
            entry = measured(what, work, report, 0.0)
            passed = passed and entry.get("passed", False)
            report.add("parity", entry)
    work = functools.partial(same_bits, device)
    report.add("chunk_bits", measured({}, work, report, 0.0), key="one block vs two")
    # Needs CUDA: Cut Cross-Entropy's kernels against the chunked path in float64.
    entry = measured(
        {"backend": "cut-cross-entropy"}, functools.partial(cce_parity, device), report, 0.0
    )
    report.add("cce_parity", entry, key="cut-cross-entropy vs chunked")
    return passed and entry.get("passed", False)


def same_bits(device: torch.device) -> dict[str, Any]:
    return {"same_bits": chunk_bits(device)}


def softmax_section(plan: Plan, report: Report) -> None:
    device = torch.device(plan.device)
    for name, positions, n_items in plan.softmax_shapes:
        what = {"dataset": name}
        work = functools.partial(softmax_entry, device, positions, n_items, plan.square)
        report.add("softmax", measured(what, work, report, EAGER_RESERVE))


def softmax_entry(
    device: torch.device, positions: int, n_items: int, square: int
) -> dict[str, Any]:
    """The loss step fp32 against bf16, and the matmul rates of its shapes (GFLOP/s)."""
    rates = matmul_rates(positions, n_items, repeats=3, device=device, square=square)
    step = softmax_step(positions, n_items, rounds=9, device=device)
    if device.type == "cuda" and cce_installed():
        backends = backend_steps(positions, n_items, 9, device, BACKENDS)
    else:
        backends = {"skipped": "cut-cross-entropy needs CUDA and `lossbench[cce]`"}
    return {**step, "matmul": rates, "backends": backends}


BACKENDS: dict[str, LossFn] = {"chunked": full_softmax_ce, "cut-cross-entropy": cce_softmax_ce}


def backend_steps(
    positions: int, n_items: int, rounds: int, device: torch.device, backends: dict[str, LossFn]
) -> dict[str, Any]:
    """The loss step (forward + backward, under training's autocast) of each backend in fp32
    and bf16, interleaved: median milliseconds, peak memory on CUDA, and each backend's
    relative difference from the first one's loss and gradients at the same precision."""
    generator = torch.Generator().manual_seed(0)
    table = (torch.randn(n_items + 1, 64, generator=generator) * 0.05).to(device)
    hidden = (torch.randn(positions, 64, generator=generator) * 0.5).to(device)
    targets = torch.randint(1, n_items + 1, (positions,), generator=generator).to(device)
    table.requires_grad_()
    hidden.requires_grad_()

    def step(fn: LossFn, precision: str) -> tuple[float, list[torch.Tensor]]:
        table.grad, hidden.grad = None, None
        synchronize(device)
        start = time.perf_counter()
        with autocast(precision, device):
            loss = fn(LossInputs(hidden, targets, table), LossParams())
        loss.backward()
        synchronize(device)
        assert hidden.grad is not None and table.grad is not None
        return time.perf_counter() - start, [loss.detach(), hidden.grad, table.grad]

    cases = [(name, precision) for name in backends for precision in ("fp32", "bf16")]
    results, memory = {}, {}
    for name, precision in cases:  # warm-up (kernels compiled), results, peak memory
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        results[name, precision] = step(backends[name], precision)[1]
        if device.type == "cuda":
            memory[name, precision] = torch.cuda.max_memory_allocated(device) / 2**20
    seconds: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
    for _ in range(rounds):
        for case in cases:  # interleaved: drift hits every case alike
            seconds[case].append(step(backends[case[0]], case[1])[0])
    first = next(iter(backends))
    entries: dict[str, Any] = {}
    for name, precision in cases:
        entry: dict[str, Any] = {"ms": 1e3 * statistics.median(seconds[name, precision])}
        if (name, precision) in memory:
            entry["peak_memory_mb"] = memory[name, precision]
        entry["relative_difference"] = {
            part: float((mine.float() - theirs.float()).norm() / theirs.float().norm())
            for part, mine, theirs in zip(
                ("loss", "grad_hidden", "grad_table"),
                results[name, precision],
                results[first, precision],
                strict=True,
            )
        }
        entries[f"{name} {precision}"] = entry
    return entries


def epochs_section(
    plan: Plan, report: Report, data_dir: Path, mirror: str | None, skip_compile: bool
) -> None:
    datasets: dict[str, Any] = {}
    for compile in (False, True):  # every eager entry first: compiling takes the longest
        for name in plan.datasets:
            for precision in plan.precisions:
                for loss in plan.losses:
                    what: dict[str, Any] = {"dataset": name, "loss": loss}
                    what.update(precision=precision, compile=compile)
                    if compile and skip_compile:
                        report.add("epochs", {**what, "skipped": "--skip-compile"})
                        continue
                    work = functools.partial(epoch_entry, plan, datasets, data_dir, mirror, what)
                    reserve = COMPILE_RESERVE if compile else EAGER_RESERVE
                    report.add("epochs", measured(what, work, report, reserve))


def epoch_entry(
    plan: Plan,
    datasets: dict[str, Any],
    data_dir: Path,
    mirror: str | None,
    what: dict[str, Any],
) -> dict[str, Any]:
    """One timed run of `what` (dataset, loss, precision, compile); datasets are prepared
    on first use and kept."""
    name = what["dataset"]
    if name not in datasets:
        datasets[name] = prepared_dataset(data_dir, name, mirror)
    config = run_config(
        name,
        what["loss"],
        plan.epochs,
        precision=what["precision"],
        device=plan.device,
        compile=what["compile"],
        model_settings=plan.model_settings,
    )
    with compile_counters(what["compile"]) as graphs:
        result = timed_run(config, datasets[name])
    backend = softmax_backend(resolve_loss(what["loss"]), torch.device(plan.device))
    compiled = {"torch_compile": graphs} if what["compile"] else {}
    return {**result, "loss_backend": backend, **compiled}


def million_items_section(plan: Plan, report: Report) -> None:
    dataset = random_catalogue(plan.catalogue_items)
    for precision in plan.precisions:
        what = {"n_items": plan.catalogue_items, "batch": "128 x 50", "precision": precision}
        work = functools.partial(catalogue_steps, plan, dataset, precision)
        report.add("million_items", measured(what, work, report, EAGER_RESERVE))


def catalogue_steps(plan: Plan, dataset: Any, precision: str) -> dict[str, Any]:
    """Three training steps (one per epoch) on the big catalogue; the fastest."""
    config = catalogue_step_config(dataset, 3, plan.device)
    run = timed_run(config.model_copy(update={"precision": precision}), dataset)
    return {"seconds_per_step": run["train_seconds_fastest"], **run}


@contextmanager
def compile_counters(enabled: bool) -> Iterator[dict[str, Any]]:
    """torch.compile's work while the block runs: graphs compiled, graph breaks, recompiles.
    A later run of the same model class reuses earlier runs' graphs (0 new ones)."""
    summary: dict[str, Any] = {}
    if not enabled:
        yield summary
        return
    from torch._dynamo.utils import counters

    counters.clear()
    try:
        yield summary
    finally:
        counts: dict[str, dict[str, int]] = {k: dict(v) for k, v in counters.items()}
        breaks = counts.get("graph_break", {})
        summary.update(
            {
                "new_graphs": counts.get("stats", {}).get("unique_graphs", 0),
                "graph_breaks": sum(breaks.values()),
                "graph_break_reasons": sorted({str(r).splitlines()[0] for r in breaks})[:8],
                "recompiles": sum(counts.get("recompiles", {}).values()),
                "frames": counts.get("frames", {}),
            }
        )


def environment(plan: Plan, dry_run: bool) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": plan.device,
        "cpu_dry_run": dry_run,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model_name(),
        "threads": torch.get_num_threads(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if torch.cuda.is_available() and plan.device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        info.update(
            {
                "gpu": properties.name,
                "gpu_memory_gb": properties.total_memory / 2**30,
                "capability": f"{properties.major}.{properties.minor}",
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(),
                "bf16_supported": torch.cuda.is_bf16_supported(),
            }
        )
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-bench.json"))
    parser.add_argument("--data-dir", type=Path, default=None, help="default: lossbench's")
    parser.add_argument(
        "--mirror",
        default=os.environ.get("LOSSBENCH_MIRROR", ""),
        help="dataset mirror folder or URL (default: env LOSSBENCH_MIRROR, else the sources)",
    )
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for all sections")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per timed run")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--skip-compile", action="store_true", help="no compiled epochs")
    parser.add_argument("--cpu-dry-run", action="store_true", help="toy sizes on CPU")
    args = parser.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown or args.epochs < 2 or args.budget <= 0:
        parser.exit(2, f"--sections from {', '.join(SECTIONS)}; --epochs >= 2; --budget > 0\n")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here, nothing to measure (--cpu-dry-run checks it)")
        return 0
    plan = dry_run_plan() if args.cpu_dry_run else cuda_plan(args.epochs)
    if args.cpu_dry_run:  # dynamo's tracing without code generation (minutes on CPU)
        torch.compile = functools.partial(torch.compile, backend="eager")  # type: ignore[assignment]
    data_dir = args.data_dir or default_data_dir()
    url = args.mirror.startswith(("http://", "https://"))
    mirror = args.mirror if url or (args.mirror and Path(args.mirror).is_dir()) else None
    sections = args.sections.split(",")
    report = Report(args.out, args.budget)
    report.document["environment"] = environment(plan, args.cpu_dry_run)
    report.document["plan"] = {**vars(plan), "mirror": mirror, "data_dir": str(data_dir)}
    passed = True
    with tempfile.TemporaryDirectory() as work_dir:
        if "parity" in sections:
            passed = parity_section(plan, report)
        if "softmax" in sections:
            softmax_section(plan, report)
        if "epochs" in sections:
            epochs_section(plan, report, data_dir, mirror, args.skip_compile)
        if "million_items" in sections:
            million_items_section(plan, report)
        if "compare" in sections:
            work = functools.partial(compare_smoke, plan, data_dir, Path(work_dir))
            report.add("compare", measured({}, work, report, EAGER_RESERVE), key="smoke")
    report.save()
    print(summary(report.document, args.out))
    return 0 if passed else 1


def summary(document: dict[str, Any], path: Path) -> str:
    """One line per section: how many entries ran, were skipped or failed."""
    lines = [f"wrote {path} in {document['total_seconds']:.0f} s"]
    for section in ("parity", "softmax", "epochs", "million_items"):
        entries = document.get(section, [])
        failed = sum("error" in e or e.get("passed") is False for e in entries)
        skipped = sum("skipped" in e for e in entries)
        lines.append(f"  {section}: {len(entries)} entries, {failed} failed, {skipped} skipped")
    smoke = document.get("compare", {}).get("smoke")
    if smoke is not None:
        lines.append(f"  compare: exit {smoke.get('exit_code', smoke.get('error'))}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
