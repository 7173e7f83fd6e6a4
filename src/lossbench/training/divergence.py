"""Stop a run whose training loss stops being finite, at the step where it happened.

A non-finite loss sends nan into every weight at the next optimizer step: whatever the run
trains afterwards, and the metrics it would test, are noise. Asking after every step whether
the loss is finite would make the host wait for the device at every step (on a GPU the
queue of kernels drains and the step's launch overhead shows). Instead the first bad step
and its loss are kept on the device, with no wait, and read at points where the loop waits
anyway or rarely: every `CHECK_EVERY` steps and at the epoch's end, where the epoch's mean
loss is read. The run so stops at most `CHECK_EVERY - 1` steps late, and the message names
the exact step. A run spread over several processes checks at the epoch's end only, all
processes together (training/loop.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lossbench.errors import LossbenchError

CHECK_EVERY = 64  # steps between reads of the device flag (each read waits for the device)


class DivergedRun(LossbenchError):
    """The training loss was not finite (nan or inf) at `step` of `epoch`."""

    def __init__(self, message: str, epoch: int, step: int) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step


class FiniteLossWatch:
    """Watches one epoch's step losses; `check` raises `DivergedRun` for the first bad one."""

    def __init__(
        self, device: torch.device, epoch: int, batches: int, lr: float, every_steps: bool = True
    ) -> None:
        """`every_steps` False: checked only when `check` is called (the epoch's end)."""
        self.epoch = epoch
        self.batches = batches
        self.lr = lr
        self.every_steps = every_steps
        self.steps = 0
        self.first_bad_step = torch.zeros((), dtype=torch.int64, device=device)  # 0: none yet
        self.first_bad_loss = torch.zeros((), device=device)

    def add(self, step_loss: Tensor) -> None:
        """Record one step's loss (a detached scalar); every CHECK_EVERY steps, check."""
        self.steps += 1
        new = (self.first_bad_step == 0) & ~torch.isfinite(step_loss)
        # A Python scalar as `input` of torch.where: no host-to-device copy, no wait.
        self.first_bad_step = torch.where(new, self.steps, self.first_bad_step)
        self.first_bad_loss = torch.where(new, step_loss.float(), self.first_bad_loss)
        if self.every_steps and self.steps % CHECK_EVERY == 0:
            self.check()

    def check(self) -> None:
        step = int(self.first_bad_step)  # waits for the device
        if step == 0:
            return
        value = float(self.first_bad_loss)
        where = f"step {step} of {self.batches} in epoch {self.epoch}"
        if self.epoch == 1 and step == 1:  # before any update: the loss itself gives it
            why = "before any update, so the loss itself gives it: see `lossbench check-loss`"
        else:
            why = f"the run diverged: lower --lr (now {self.lr:g})"
        raise DivergedRun(f"the training loss is {value} at {where}, {why}", self.epoch, step)
