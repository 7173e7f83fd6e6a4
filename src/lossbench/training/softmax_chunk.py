"""The full softmax's chunk for this CPU: measured once, then read from a cache.

Which chunk of logits runs the full softmax fastest depends on the CPU (on one AVX-512 CPU
4M logits ran the loss 15-20% faster than 1M, on an AVX2 one 1M was the fastest), and the
chunk never changes a result (`lossbench.losses.full_softmax`). So on CPU, unless the user
sets `softmax_chunk`, training uses the chunk this probe found fastest: forward + backward of
the loss on one fixed random batch for each candidate, interleaved round by round (a
machine's speed drifts), in well under 2 seconds. A candidate whose loss or gradients
differ from the default's in any bit is never chosen, and one must beat the default by
`MIN_GAIN` to replace it: noise alone keeps the default. The answer is cached in
`<data dir>/softmax_chunk.json`, keyed by the CPU's model name, the torch version and the
device, so the probe runs once per machine.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lossbench.atomic import write_json
from lossbench.losses.base import LossInputs, LossParams
from lossbench.losses.full_softmax import full_softmax_ce, softmax_chunk_for
from lossbench.paths import default_data_dir
from lossbench.training.setup import LossSettings

CACHE_FILE = "softmax_chunk.json"
DEFAULT_CHUNK = softmax_chunk_for(torch.device("cpu"), None)  # 1M logits
CANDIDATES = (DEFAULT_CHUNK, 1 << 21, 1 << 22)  # the default first
MIN_GAIN = 0.03  # a candidate must be this much faster than the default to replace it
# The probe's batch: 1,024 positions over 8,192 items, width 64 (one to eight 128-position
# blocks per chunk); forward + backward is 3.2 GFLOP, ~40 ms on one AVX2 core.
PROBE_POSITIONS, PROBE_ITEMS, PROBE_WIDTH = 1024, 8192, 64
ROUNDS = 4
TIME_BUDGET = 1.2  # seconds: later rounds stop past it (each candidate runs at least once)

# (chunk) -> (seconds, (loss, grad of hidden, grad of table)) of one step on the probe
# batch; tests pass a fake one, so they never time anything.
StepRun = Callable[[int], tuple[float, tuple[torch.Tensor, ...]]]


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    chunk: int  # the chosen one
    milliseconds: dict[int, float]  # best time of each candidate that gave the default's bits
    differing: list[int]  # candidates whose results differed from the default's (never chosen)
    threads: int


def tuned_loss(loss: LossSettings, device: torch.device) -> LossSettings:
    """`loss` with the machine's chunk when it scores the catalogue on CPU without a chunk set."""
    if "catalogue" not in loss.needs or loss.params.softmax_chunk is not None:
        return loss
    if device.type != "cpu":
        return loss
    params = dataclasses.replace(loss.params, softmax_chunk=machine_softmax_chunk())
    return dataclasses.replace(loss, params=params)


def machine_softmax_chunk(cache_dir: Path | None = None) -> int:
    """The chunk for this CPU: from the cache, else probed now (and cached when writable)."""
    path = (cache_dir or default_data_dir()) / CACHE_FILE
    key = machine_key()
    cached = read_cache(path).get(key)
    if isinstance(cached, dict) and isinstance(cached.get("chunk"), int) and cached["chunk"] > 0:
        return int(cached["chunk"])
    result = probe()
    write_cache(path, key, result)
    return result.chunk


def machine_key(device: str = "cpu") -> str:
    """'<CPU model name> | torch <version> | <device>'."""
    return f"{cpu_model_name()} | torch {torch.__version__} | {device}"


def cpu_model_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def probe(run: StepRun | None = None, candidates: tuple[int, ...] = CANDIDATES) -> ProbeResult:
    """Time every candidate, interleaved round by round, and choose. The first round also
    compares each candidate's loss and gradients with the default's, bit for bit; later
    rounds (up to `ROUNDS`, while within `TIME_BUDGET`) only time the eligible ones."""
    if run is None:
        batch = probe_batch()
        run = lambda chunk: timed_step(batch, chunk)  # noqa: E731
    best: dict[int, float] = {}
    differing: list[int] = []
    reference: tuple[torch.Tensor, ...] | None = None
    started = time.perf_counter()
    for chunk in candidates:
        seconds, results = run(chunk)
        reference = reference or results
        if all(torch.equal(a, b) for a, b in zip(results, reference, strict=True)):
            best[chunk] = seconds
        else:
            differing.append(chunk)
    for _ in range(ROUNDS - 1):
        if time.perf_counter() - started > TIME_BUDGET:
            break
        for chunk in best:  # interleaved: drift hits every candidate alike
            best[chunk] = min(best[chunk], run(chunk)[0])
    return ProbeResult(
        chunk=choose(best, candidates[0]),
        milliseconds={chunk: seconds * 1e3 for chunk, seconds in best.items()},
        differing=differing,
        threads=torch.get_num_threads(),
    )


def choose(best_seconds: dict[int, float], default: int) -> int:
    """The fastest chunk, if it beats `default` by `MIN_GAIN`; else `default`."""
    fastest = min(best_seconds, key=lambda chunk: (best_seconds[chunk], chunk))
    if best_seconds[fastest] < best_seconds[default] * (1 - MIN_GAIN):
        return fastest
    return default


def probe_batch() -> LossInputs:
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(PROBE_ITEMS + 1, PROBE_WIDTH, generator=generator) * 0.02
    hidden = torch.randn(PROBE_POSITIONS, PROBE_WIDTH, generator=generator) * 0.5
    targets = torch.randint(1, PROBE_ITEMS + 1, (PROBE_POSITIONS,), generator=generator)
    return LossInputs(hidden.requires_grad_(), targets, table.requires_grad_())


def step_results(batch: LossInputs, chunk: int) -> tuple[torch.Tensor, ...]:
    """Loss and both gradients of the full softmax on `batch` with `chunk`."""
    loss = full_softmax_ce(batch, LossParams(softmax_chunk=chunk))
    grads = torch.autograd.grad(loss, (batch.hidden, batch.item_embeddings))
    return (loss.detach(), *grads)


def timed_step(batch: LossInputs, chunk: int) -> tuple[float, tuple[torch.Tensor, ...]]:
    start = time.perf_counter()
    results = step_results(batch, chunk)
    return time.perf_counter() - start, results


def read_cache(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_cache(path: Path, key: str, result: ProbeResult) -> None:
    """Add this machine's entry; a folder that cannot be written only means probing again."""
    entries = read_cache(path)
    entries[key] = {
        "chunk": result.chunk,
        "milliseconds": {str(chunk): round(ms, 3) for chunk, ms in result.milliseconds.items()},
        "differing_results": result.differing,
        "threads": result.threads,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        write_json(path, entries)
    except OSError:
        pass
