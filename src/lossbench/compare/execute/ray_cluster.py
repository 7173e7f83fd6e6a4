"""The Ray side of the `ray` executor: joining or starting Ray, checking the cluster can run
the comparison, and cancelling its tasks.

Ray is an optional extra (`pip install lossbench[ray]`), imported only here and only when
`--executor ray` is asked for. Before any run is submitted the driver checks that some node
can hold one run's CPUs and GPUs and that every node sees the out folder at the same path
(a run writes its folder from whichever node runs it): it writes a token file there and a
tiny task on each node reads it back.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from lossbench.errors import LossbenchError

POLL_SECONDS = 0.5  # the driver's display refreshes this often while runs train
CHECK_SECONDS = 300.0  # the longest the out-folder check waits for every node to answer
CANCEL_GRACE_SECONDS = 30.0  # cancelled runs get this long to unwind before they are killed
MOST_CHARACTERS = 400  # of a failed run's one-line error


def import_ray() -> Any:
    """The `ray` module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise LossbenchError(
            "--executor ray needs Ray, which is not installed: pip install 'lossbench[ray]'"
        ) from None
    return ray


@contextmanager
def ray_session(ray: Any, address: str | None, console: Console) -> Iterator[None]:
    """Connect to Ray for the block: to `address` (`auto`, `ray://host:port`), or a new local
    instance sized to the local machine. A Ray this process had already started (a script, a test)
    is used as it is and left running."""
    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address is None:
        options["include_dashboard"] = False
        console.print("starting a local Ray instance", highlight=False)
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise LossbenchError(f"could not start or reach {where}: {one_line(error)}") from None
    try:
        yield
    finally:
        ray.shutdown()


def alive_nodes(ray: Any) -> list[dict[str, Any]]:
    """The Ray nodes that can run a task: alive, with CPUs."""
    return [
        node for node in ray.nodes() if node.get("Alive") and node["Resources"].get("CPU", 0) > 0
    ]


def check_resources(ray: Any, cpus: int, gpus: float) -> list[dict[str, Any]]:
    """The nodes, refusing a run that no node can hold (its task would wait forever)."""
    nodes = alive_nodes(ray)
    most_cpus = max((node["Resources"].get("CPU", 0.0) for node in nodes), default=0.0)
    most_gpus = max((node["Resources"].get("GPU", 0.0) for node in nodes), default=0.0)
    if cpus > most_cpus:
        raise LossbenchError(
            f"--cpus-per-run {cpus} is more than any node of the Ray cluster has "
            f"({most_cpus:g} CPUs); lower it"
        )
    if gpus > most_gpus:
        raise LossbenchError(
            f"--gpus-per-run {gpus:g} is more than any node of the Ray cluster has "
            f"({most_gpus:g} GPUs); lower it, or leave it out to train on CPUs"
        )
    return nodes


def run_slots(nodes: Sequence[dict[str, Any]], cpus: int, gpus: float) -> int:
    """How many runs the nodes hold at once."""
    slots = 0
    for node in nodes:
        resources = node["Resources"]
        fits = int(resources.get("CPU", 0.0) // cpus)
        if gpus:
            fits = min(fits, int(resources.get("GPU", 0.0) // gpus))
        slots += fits
    return slots


def check_out_folder(ray: Any, out_dir: Path) -> None:
    """One line, before any run trains, when a node cannot see (or write) the out folder."""
    folder = out_dir.absolute()
    token = secrets.token_hex(16)
    path = folder / f".worker-check-{token}"
    path.write_text(token)
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = ray.remote(num_cpus=0)(sees_token)
        answers = ray.get(
            [
                probe.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                ).remote(str(path), token)
                for node in alive_nodes(ray)
            ],
            timeout=CHECK_SECONDS,
        )
    except ray.exceptions.GetTimeoutError:
        raise LossbenchError(
            f"the Ray nodes did not answer the out-folder check within {CHECK_SECONDS:g} s; "
            "is the cluster busy or its workers failing to start?"
        ) from None
    except ray.exceptions.RayError as error:
        raise LossbenchError(
            f"a Ray node could not run lossbench ({task_failure(ray, error)}): every node "
            "needs the driver's versions of Python, torch and lossbench"
        ) from None
    finally:
        path.unlink(missing_ok=True)
    for host, sees in answers:
        if not sees:
            raise LossbenchError(
                f"the Ray node {host} cannot see the out folder {folder}: every node must "
                "reach it, writable, at the same path (a shared filesystem such as NFS); "
                "see docs/scale-out.md"
            )


def send_file_plugins(ray: Any) -> None:
    """Losses and models loaded from a file (`./my_loss.py:fn`) go to the workers by value:
    a worker could not import their modules by name."""
    from lossbench.plugins import file_modules

    for module in file_modules():
        ray.cloudpickle.register_pickle_by_value(module)


def sees_token(path: str, token: str) -> tuple[str, bool]:
    """On a node: (its address, whether it reads `token` at `path` and may write beside it)."""
    import ray

    host = ray.util.get_node_ip_address()
    try:
        sees = Path(path).read_text() == token and os.access(Path(path).parent, os.W_OK)
    except OSError:
        sees = False
    return host, sees


def cancel_tasks(ray: Any, refs: Sequence[Any], console: Console) -> None:
    """Cancel the runs still out: running ones get a KeyboardInterrupt and unwind (temporary
    files removed, locks released); those that have not ended after a grace are killed."""
    if not refs:
        return
    console.print(f"[yellow]interrupted: cancelling {len(refs)} run(s) not finished[/]")
    left = list(refs)
    deadline = time.monotonic() + CANCEL_GRACE_SECONDS
    while left and time.monotonic() < deadline:
        # Asked again each second: a cancel that reaches a task while it is being handed to
        # its worker can be lost, and the task would then train on.
        for ref in left:
            ray.cancel(ref)
        _, left = ray.wait(left, num_returns=len(left), timeout=1.0)
    for ref in left:
        ray.cancel(ref, force=True)


def task_failure(ray: Any, error: BaseException) -> str:
    """One line for a Ray task that did not return: the innermost error of one that raised
    outside lossbench's own handling (code that would not import), else how its worker died."""
    if isinstance(error, ray.exceptions.RayTaskError):
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        return one_line(LossbenchError(lines[-1] if lines else type(error).__name__))
    return f"{one_line(error)} (--max-retries K re-runs a run whose worker died)"


def one_line(error: BaseException) -> str:
    """A run's error as one line: a LossbenchError's message, else `Type: message`."""
    text = str(error) if isinstance(error, LossbenchError) else f"{type(error).__name__}: {error}"
    text = " ".join(text.split())
    return text if len(text) <= MOST_CHARACTERS else text[: MOST_CHARACTERS - 3] + "..."
