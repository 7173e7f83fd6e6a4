"""The plain-function API: a request resolved once into a plan (each name looked up once, no
dataset read), every problem of a request named at once, and docs/api.md's example run."""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import lossbench.data.registry as registry
import lossbench.losses as losses
import lossbench.models as models
from lossbench.api import CompareRequest, CompareResult, TrainRequest
from lossbench.api.plan import resolve
from lossbench.errors import LossbenchError
from lossbench.training.config import validate_config

DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"
QUICK = {"max_epochs": 1, "hidden_size": 8, "batch_size": 64, "threads": 1}


def count_lookups(monkeypatch: pytest.MonkeyPatch) -> Counter[tuple[str, str]]:
    """Wrap the loss, model and dataset lookups, wherever a lossbench module holds them, with
    counters of (lookup, name)."""
    counts: Counter[tuple[str, str]] = Counter()
    originals: dict[str, Callable[..., Any]] = {
        "find_loss": losses.find_loss,
        "resolve_loss": losses.resolve_loss,
        "find_model": models.find_model,
        "model_spec": models.model_spec,
        "model_config": models.model_config,
        "get_dataset": registry.get_dataset,
    }

    def counting(kind: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(name: str, *args: Any, **kwargs: Any) -> Any:
            counts[(kind, name)] += 1
            return original(name, *args, **kwargs)

        return wrapper

    wrappers = {kind: counting(kind, original) for kind, original in originals.items()}
    for module in list(sys.modules.values()):
        if not getattr(module, "__name__", "").startswith("lossbench"):
            continue
        for kind, original in originals.items():
            if getattr(module, kind, None) is original:
                monkeypatch.setattr(module, kind, wrappers[kind])
    return counts


def test_planning_looks_each_loss_model_and_dataset_name_up_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = count_lookups(monkeypatch)
    request = CompareRequest(
        datasets=("synthetic",),
        models=("sasrec",),
        losses=("bce", "improved"),
        seeds=(0, 1, 2),
        out=tmp_path / "out",
        data_dir=tmp_path / "data",
    )
    plan = resolve(request)
    assert len(plan.entries) == 6
    assert {(e.config.loss, e.config.seed) for e in plan.entries} == {
        (loss, seed) for loss in ("bce", "improved") for seed in (0, 1, 2)
    }
    by_name = Counter(name for _, name in counts.elements())
    assert by_name == {"bce": 1, "improved": 1, "sasrec": 1, "synthetic": 1}, counts


def test_planning_reads_no_dataset_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lossbench.data.prepared as prepared

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a dataset was read while planning")

    for name in ("ensure_prepared", "prepare_on_first_use", "load_prepared"):
        if hasattr(prepared, name):
            monkeypatch.setattr(prepared, name, refuse)
    out = tmp_path / "out"
    plan = resolve(CompareRequest(losses=("bce", "ce"), seeds=(0,), out=out, data_dir=tmp_path))
    assert [entry.run_dir.parent.name for entry in plan.entries] == ["bce", "ce"]
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(LossbenchError, match="unknown loss 'nope'"):
        resolve(CompareRequest(losses=("bce", "nope"), out=out, data_dir=tmp_path))


def test_a_request_with_several_problems_names_every_one(tmp_path: Path) -> None:
    with pytest.raises(LossbenchError) as caught:
        resolve(CompareRequest(models=("transformer",), losses=("nope",), out=tmp_path))
    message = str(caught.value)
    assert "invalid grid.models in options: unknown model 'transformer'" in message
    assert "invalid grid.losses in options: unknown loss 'nope'" in message
    assert "\n" not in message  # one line

    with pytest.raises(LossbenchError) as caught:
        validate_config({"loss": "nope", "lr": -1.0, "colour": "red"})
    problems = str(caught.value).split("; ")
    assert problems[0].startswith("invalid loss in options: unknown loss 'nope'")
    assert any(p.startswith("invalid lr in options: ") for p in problems)
    assert any(p.startswith("invalid colour in options: unknown setting") for p in problems)


def test_train_request_plans_one_run_in_its_default_folder(tmp_path: Path) -> None:
    plan = resolve(TrainRequest(loss="bce", seed=3, smoke=True, data_dir=tmp_path))
    assert plan.entry.run_dir == Path("runs/synthetic/sasrec-bce-seed3")
    assert plan.config.preset == "smoke"
    with pytest.raises(LossbenchError, match="--smoke is the preset smoke"):
        resolve(TrainRequest(smoke=True, settings={"preset": "study-s3rec"}))
    with pytest.raises(LossbenchError, match="unknown dataset 'lastfn'"):
        resolve(TrainRequest(dataset="lastfn", data_dir=tmp_path))


def test_the_documented_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/api.md's example, as written, on a small synthetic comparison."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    assert blocks, "docs/api.md has no python example"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOSSBENCH_DATA_DIR", str(tmp_path / "data"))
    namespace: dict[str, Any] = {}
    exec(compile(blocks[0], str(DOCS), "exec"), namespace)  # noqa: S102  the docs' own code
    result = namespace["result"]
    assert isinstance(result, CompareResult)
    assert {row.loss for row in result.rows} >= {"bce", "improved"}
    assert len(result.run_dirs) == 2 and all(
        (d / "metrics.json").is_file() for d in result.run_dirs
    )
    improved = result.row("improved").metrics["ndcg@10"]
    assert improved.mean is not None and 0.0 < improved.mean <= 1.0
    assert result.passed


def test_a_comparison_checks_each_run_once_and_writes_its_plan_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """comparison.json is written once and not read back; each run's fit and status are
    checked once."""
    from rich.console import Console

    import lossbench.compare.ci.step as step
    import lossbench.compare.execute.resume as resume
    import lossbench.compare.plan.build as build
    import lossbench.compare.report.render as render
    import lossbench.training.fit_check as fit_check
    from lossbench.api import compare

    counts: Counter[str] = Counter()

    def counted(key: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[key] += 1
            return original(*args, **kwargs)

        return wrapper

    def write_json(path: Path, document: Any) -> None:
        counts[f"write {path.name}"] += 1
        original_write(path, document)

    original_write = build.write_json
    monkeypatch.setattr(build, "write_json", write_json)
    for module in (build, render, step):
        monkeypatch.setattr(module, "load_saved_plan", counted("read", build.load_saved_plan))
    import lossbench.training.loop as loop

    fits = counted("fits", fit_check.check_fits)
    monkeypatch.setattr(fit_check, "check_fits", fits)
    monkeypatch.setattr(loop, "check_fits", fits)  # what a run's training would call
    monkeypatch.setattr(resume, "run_status", counted("status", resume.run_status))
    request = CompareRequest(
        losses=("bce", "improved"),
        seeds=(0,),
        settings={"max_epochs": 1, "threads": 1},
        smoke=True,
        out=tmp_path / "out",
        data_dir=tmp_path / "data",
    )
    result = compare(request, Console(quiet=True), lambda line: None)
    assert len(result.run_dirs) == 2
    assert counts == {"write comparison.json": 1, "fits": 2, "status": 2}, counts
