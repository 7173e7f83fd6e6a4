"""A Linear layer whose row count repeats from step to step under bf16 autocast on CPU.

oneDNN, which runs bf16 matmuls on CPU, compiles a kernel for each new shape. A packed batch
(`TransformerEncoder`) has a different number of real-item rows every step, so every linear
layer met a new shape every step: on an AMX Xeon a (1,500 x 64) @ (64 x 256) product with its
backward took 5.9 ms at a new shape against 1.0 ms at a known one (fp32: 1.9 ms either way).
Rows are padded with zeros to a multiple of `ROW_BUCKET` there, so a few shapes recur and stay
in oneDNN's cache; the padding rows' outputs are dropped, so results are those of `nn.Linear`.
fp32, fp64 and GPUs take `nn.Linear`'s path unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Rows are padded to a multiple of this: at most 63 spare rows (about 4% of a beauty-s3rec
# batch's 1,500), and about 25 row counts over an epoch.
ROW_BUCKET = 256


def pads_rows(inputs: Tensor) -> bool:
    """Is this a bf16-autocast product on CPU, where a new row count costs a kernel build?"""
    return (
        inputs.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


class BucketedLinear(nn.Linear):
    """`nn.Linear` (same parameters, same state dict) whose (..., in) input is computed as
    (rows padded to a multiple of `ROW_BUCKET`, in) under CPU bf16 autocast."""

    def forward(self, inputs: Tensor) -> Tensor:
        if not pads_rows(inputs):
            return super().forward(inputs)
        flat = inputs.reshape(-1, inputs.shape[-1])  # (R, in)
        rows = flat.shape[0]
        spare = -rows % ROW_BUCKET
        if spare:
            flat = F.pad(flat, (0, 0, 0, spare))  # (R + spare, in), zero rows
        outputs = super().forward(flat)[:rows]  # (R, out)
        return outputs.reshape(*inputs.shape[:-1], outputs.shape[-1])
