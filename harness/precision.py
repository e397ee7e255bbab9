"""Numeric precision of a run: which tensors train in bf16, which keep fp32 master weights, and the autocast dtype.

`challenge` is train_gpt.py's scheme: the model is cast to bf16, then its CastedLinear weights and its vectors,
scalars and control tensors back to fp32. What stays bf16 is every embedding table (in the baseline, the tied
embedding, which Adam then trains in bf16, so the residual stream runs in bf16) and RoPE's inverse
frequencies, so the rotary tables come from bf16 positions: exact up to 256, rounded beyond, as in the
challenge. Forward and backward run under bf16 autocast and Muon orthogonalises in bf16. A variant's own
matrices keep fp32 master weights, as CastedLinear weights do. `fp32` keeps fp32 master weights everywhere; on
CUDA the matmuls still run under bf16 autocast, on a CPU everything is fp32.
Both start from the same values: CastedLinear weights and the tied embedding are initialised as bf16 values
(harness/model.py), as the challenge's cast leaves them, so one seed gives the challenge's step-0 weights under
either scheme.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.model import Rotary

PRECISIONS = ("challenge", "fp32")


def default_precision(device_type: str) -> str:
    """A budget's scheme when it names none: the challenge's on CUDA; fp32 on a CPU, where bf16 is slower."""
    return "challenge" if device_type == "cuda" else "fp32"


def compute_dtype(device_type: str, precision: str) -> torch.dtype | None:
    """The autocast dtype of forward/backward and Muon's Newton–Schulz dtype; None runs plain fp32."""
    return torch.bfloat16 if device_type == "cuda" or precision == "challenge" else None


@torch.no_grad()
def apply(model: nn.Module, precision: str) -> None:
    """Give the model's tensors the scheme's dtypes (after it is on its device)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}")
    if precision != "challenge":
        return
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            module.weight.data = module.weight.data.bfloat16()
        elif isinstance(module, Rotary):
            module.inv_freq = module.inv_freq.bfloat16()
            module._cache = None
