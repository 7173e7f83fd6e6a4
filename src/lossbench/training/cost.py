"""What a run's training costs: seconds inside the loss, and the tokens an epoch trains on.

The loss's own time is its forward call plus its backward until the gradient reaches the
hidden states it was given (a hook on them). On CPU the clock is `perf_counter`; on CUDA a pair
of events per interval, read once at the end of the epoch, where the loop synchronizes anyway:
timing the loss never adds a device sync to a training step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor


class LossClock:
    """Sums the seconds spent in the loss over one epoch (`take` reads and restarts it)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._seconds = 0.0  # CPU intervals
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []  # CUDA intervals
        self._backward_started: float | torch.cuda.Event | None = None

    def _now(self) -> float | torch.cuda.Event:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _add(self, start: float | torch.cuda.Event) -> None:
        end = self._now()
        if isinstance(start, float) and isinstance(end, float):
            self._seconds += end - start
        elif isinstance(start, torch.cuda.Event) and isinstance(end, torch.cuda.Event):
            self._events.append((start, end))

    @contextmanager
    def forward(self, hidden: Tensor) -> Iterator[None]:
        """Time the loss call on `hidden` (N, D), and its backward down to `hidden`."""
        start = self._now()
        yield
        self._add(start)
        if hidden.requires_grad:
            hidden.register_hook(self._backward_reached)

    def backward_starts(self) -> None:
        """Called just before `loss.backward()`: the loss's gradient is computed first."""
        self._backward_started = self._now()

    def _backward_reached(self, grad: Tensor) -> None:
        if self._backward_started is not None:
            self._add(self._backward_started)
            self._backward_started = None

    def take(self) -> float:
        """Seconds since the last `take` (on CUDA: waits for the recorded events)."""
        seconds = self._seconds
        for start, end in self._events:
            end.synchronize()
            seconds += start.elapsed_time(end) / 1000.0  # milliseconds
        self._seconds, self._events = 0.0, []
        return seconds


def cost_metrics(history: list[dict[str, float]]) -> dict[str, float | None]:
    """A run's cost from its epochs: seconds per epoch, tokens per second, the loss's share.

    Epochs recorded before the loss was timed (no `loss_seconds`) leave those fields None."""
    train_seconds = sum(row["train_seconds"] for row in history)
    loss_seconds, tokens = _total(history, "loss_seconds"), _total(history, "tokens")
    per_second = train_seconds if train_seconds > 0 else None
    return {
        "train_seconds": train_seconds,
        "train_seconds_per_epoch": train_seconds / len(history),
        "loss_seconds_per_epoch": None if loss_seconds is None else loss_seconds / len(history),
        "loss_share": None
        if loss_seconds is None or per_second is None
        else loss_seconds / per_second,
        "tokens_per_second": None if tokens is None or per_second is None else tokens / per_second,
    }


def _total(history: list[dict[str, float]], name: str) -> float | None:
    """The sum of `name` over the epochs, or None when an epoch lacks it."""
    values = [row.get(name) for row in history]
    if any(value is None for value in values):
        return None
    return float(sum(value for value in values if value is not None))
