"""The machine's softmax chunk: the choice, the bit check, the cache. No timing runs here:
every probe gets a fake timer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lossbench.data.store import make_synthetic_prepared
from lossbench.losses.base import LossInputs
from lossbench.training import softmax_chunk
from lossbench.training.config import build_config
from lossbench.training.loop import train_run
from lossbench.training.setup import resolve_loss
from lossbench.training.softmax_chunk import (
    CACHE_FILE,
    DEFAULT_CHUNK,
    ProbeResult,
    choose,
    machine_key,
    probe,
    step_results,
    tuned_loss,
)

# The real one: conftest.py replaces the module's attribute for every other test.
real_machine_softmax_chunk = softmax_chunk.machine_softmax_chunk
M = 1 << 20


def fake_run(
    milliseconds: dict[int, list[float]], loss_offsets: dict[int, float] | None = None
) -> tuple[list[int], softmax_chunk.StepRun]:
    """A step that answers each chunk's next time from `milliseconds` (and a loss shifted by
    `loss_offsets`), recording the order of the calls."""
    calls: list[int] = []

    def run(chunk: int) -> tuple[float, tuple[torch.Tensor, ...]]:
        calls.append(chunk)
        seconds = milliseconds[chunk][calls.count(chunk) - 1] / 1e3
        loss = torch.tensor(1.5) + (loss_offsets or {}).get(chunk, 0.0)
        return seconds, (loss, torch.ones(3, 2))

    return calls, run


def test_probe_interleaves_candidates_and_takes_each_ones_best_time() -> None:
    times = {M: [50, 40, 41, 45], 2 * M: [60, 36, 39, 37], 4 * M: [44, 43, 42, 44]}
    calls, run = fake_run(times)
    result = probe(run, candidates=(M, 2 * M, 4 * M))
    assert calls == [M, 2 * M, 4 * M] * 4  # round by round
    assert result.milliseconds == {M: 40, 2 * M: 36, 4 * M: 42}
    assert result.chunk == 2 * M and result.differing == []


def test_noise_keeps_the_default() -> None:
    assert choose({M: 0.100, 4 * M: 0.098}, M) == M  # 2% faster: within MIN_GAIN
    assert choose({M: 0.100, 4 * M: 0.090}, M) == 4 * M
    assert choose({M: 0.100, 4 * M: 0.090, 2 * M: 0.090}, M) == 2 * M  # ties: the smaller


def test_a_candidate_whose_bits_differ_is_never_chosen() -> None:
    calls, run = fake_run({M: [50] * 4, 2 * M: [49] * 4, 4 * M: [10] * 4}, {4 * M: 1e-7})
    result = probe(run, candidates=(M, 2 * M, 4 * M))
    assert result.differing == [4 * M]
    assert 4 * M not in result.milliseconds and calls.count(4 * M) == 1  # not timed again
    assert result.chunk == M


def test_the_probe_batch_step_gives_loss_and_both_gradients() -> None:
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(41, 8, generator=generator, requires_grad=True)
    hidden = torch.randn(30, 8, generator=generator, requires_grad=True)
    batch = LossInputs(hidden, torch.randint(1, 41, (30,), generator=generator), table)
    loss, grad_hidden, grad_table = step_results(batch, 1 << 10)  # 64-position blocks
    assert loss.shape == () and grad_hidden.shape == (30, 8) and grad_table.shape == (41, 8)
    assert torch.equal(step_results(batch, 1 << 20)[2], grad_table)


def test_machine_chunk_is_probed_once_then_read_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probes: list[int] = []

    def fake_probe() -> ProbeResult:
        probes.append(1)
        return ProbeResult(4 * M, {M: 40.0, 4 * M: 30.0}, [], 2)

    monkeypatch.setattr(softmax_chunk, "probe", fake_probe)
    assert real_machine_softmax_chunk(tmp_path) == 4 * M
    assert real_machine_softmax_chunk(tmp_path) == 4 * M
    assert len(probes) == 1
    saved = json.loads((tmp_path / CACHE_FILE).read_text())
    key = machine_key()
    assert torch.__version__ in key and key.endswith("| cpu")
    assert saved[key]["chunk"] == 4 * M
    assert saved[key]["milliseconds"] == {str(M): 40.0, str(4 * M): 30.0}

    saved["another CPU | torch 0 | cpu"] = {"chunk": 123}  # other machines' entries stay
    saved[key] = {"chunk": "garbage"}  # an unreadable entry: probed again
    (tmp_path / CACHE_FILE).write_text(json.dumps(saved))
    assert real_machine_softmax_chunk(tmp_path) == 4 * M and len(probes) == 2
    assert json.loads((tmp_path / CACHE_FILE).read_text())["another CPU | torch 0 | cpu"]


def test_an_unwritable_cache_still_gives_the_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(softmax_chunk, "probe", lambda: ProbeResult(2 * M, {}, [], 1))
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the data folder should be
    assert real_machine_softmax_chunk(blocker) == 2 * M


def test_tuned_loss_sets_the_chunk_only_for_a_full_softmax_on_cpu_without_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(softmax_chunk, "machine_softmax_chunk", lambda: 3 * M)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")

    def chunk_of(loss_name: str, device: torch.device, **overrides: object) -> int | None:
        config = build_config(overrides={"loss": loss_name, **overrides})
        return tuned_loss(resolve_loss(config), device).params.softmax_chunk

    assert chunk_of("improved", cpu) == 3 * M
    assert chunk_of("ce", cpu) == 3 * M
    assert chunk_of("bce", cpu) is None  # sampled negatives: no softmax chunk
    assert chunk_of("improved", cpu, softmax_chunk=5000) == 5000  # the user's choice
    assert chunk_of("improved", cuda) is None  # a GPU keeps its default


def test_a_run_records_the_chunk_it_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(softmax_chunk, "machine_softmax_chunk", lambda: 3 * M)
    dataset = make_synthetic_prepared(n_users=80, n_items=40, mean_length=8.0, seed=1)
    config = build_config(
        overrides={
            "loss": "improved",
            "max_epochs": 1,
            "device": "cpu",
            "model_settings": {"hidden_size": 8, "max_len": 10, "num_heads": 2},
        }
    )
    result = train_run(config, dataset, tmp_path)
    assert result.config["loss_settings"]["softmax_chunk"] == 3 * M
    assert result.config["config"]["softmax_chunk"] is None  # the config is what was asked
    assert DEFAULT_CHUNK == M
