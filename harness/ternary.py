"""Ternary (1.58-bit) block linears for the families that train them, and their export as trits.

BitLinear is BitNet b1.58's layer (Ma et al. 2024, arXiv 2402.17764): in the forward pass the latent fp32
weight W becomes t·γ with γ = mean|W| over the whole tensor (one scale per matrix, as in the paper) and
t = clamp(round(W / γ), −1, 1); the input becomes 8-bit codes with an absmax scale per token. Both roundings
pass gradients straight through (STE), so the optimizer trains the latent weights. The artifact never holds
them: TernaryGPT.export_tensors hands each BitLinear's weight to the artifact's "ternary" codec, five trits a
byte plus one fp32 scale (harness/artifact.py), in a form that the restored model quantises back to the same
t·γ, so the round trip changes no forward value beyond float rounding of γ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.config import param
from harness.model import GPT, CastedLinear, GPTConfig, LinearFactory

TIE_NUDGE = 2**-10  # of a code step: far above last-bit noise, far below anything that changes the codes' statistics


@dataclass(frozen=True)
class TernaryConfig(GPTConfig):
    activation_bits: int = param(8, "bits of the per-token absmax activation codes before each ternary matmul "
                                 "(0: activations unquantised, ternary weights only)", choices=(0, 4, 8))


def ternarize(w: Tensor) -> tuple[Tensor, Tensor]:
    """(t, γ): trits t = clamp(round(W/γ), −1, 1) and the absmean scale γ = mean|W| (fp32, per tensor)."""
    w = w.float()
    gamma = w.abs().mean()
    return (w / gamma.clamp_min(1e-8)).round().clamp(-1, 1), gamma


def ternary_weight(w: Tensor) -> Tensor:
    """t·γ, the weight the forward pass uses; gradients reach W unchanged (straight-through)."""
    t, gamma = ternarize(w)
    return w + (t * gamma - w).detach()


def quantize_activations(x: Tensor, levels: int = 127) -> Tensor:
    """Absmax fake quantisation per token to integer codes in −levels..levels (127: 8 bits), over the last dim
    only, so no position or sequence sees another; gradients pass straight through. Ties go up by a hair
    (TIE_NUDGE): bf16-valued inputs such as the embedding's put many x·levels/absmax exactly on k + ½, where
    last-bit differences between kernels (compiled or eager) would otherwise pick either code."""
    x32 = x.float()
    scale = levels / x32.abs().amax(dim=-1, keepdim=True).clamp_min(1e-5)
    q = (x32 * scale + TIE_NUDGE).round().clamp(-levels, levels) / scale
    return x + (q.to(x.dtype) - x).detach()


def stored_weight(w: Tensor) -> Tensor:
    """The ternary tensor the artifact stores for latent weight W: t·(γ/p), p the share of nonzero trits. Its
    own absmean is γ again, so BitLinear maps it to the same t·γ: the restored model computes what the trained
    one did, without the latent weights (t·γ itself would come back as t·γ·p)."""
    t, gamma = ternarize(w)
    share = t.abs().mean()
    magnitude = torch.where(share > 0, gamma / share.clamp_min(1e-12), torch.zeros_like(gamma))
    return (t * magnitude).to(w.dtype)


class BitLinear(CastedLinear):
    """A block linear with ternary weights and 8-bit activations (BitNet b1.58), for Block's `linear=` factory.
    No extra norm inside (the paper's SubLN): the blocks' inputs are RMS-normed already, and the per-token
    absmax scale makes the quantiser blind to the scale of the rest."""

    def __init__(self, in_features: int, out_features: int, zero_init: bool = False, activation_bits: int = 8):
        super().__init__(in_features, out_features, zero_init=zero_init)
        self.levels = 2 ** (activation_bits - 1) - 1 if activation_bits else 0

    def forward(self, x: Tensor) -> Tensor:
        x = quantize_activations(x, self.levels) if self.levels else x
        return F.linear(x, ternary_weight(self.weight).to(x.dtype))


def bit_linears(c: TernaryConfig) -> LinearFactory:
    """Block's `linear=` factory: every block matrix a BitLinear (kinds q, k, v, o, fc, gate, proj alike)."""
    return lambda kind, i, o, zero_init: BitLinear(i, o, zero_init, c.activation_bits)


class TernaryGPT(GPT):
    """A GPT whose BitLinear weights are exported as trits (the export_tensors hook, harness/hooks.py)."""

    def export_tensors(self, state: dict[str, Tensor]) -> dict[str, tuple[str, Tensor]]:
        return {f"{name}.weight": ("ternary", stored_weight(state[f"{name}.weight"]))
                for name, module in self.named_modules() if isinstance(module, BitLinear)}

    @torch.no_grad()
    def metrics(self) -> dict[str, float]:
        """The share of zero trits: what a sparse ternary kernel would skip (this dense form does not)."""
        trits = [ternarize(m.weight)[0] for m in self.modules() if isinstance(m, BitLinear)]
        zeros = sum(float((t == 0).sum()) for t in trits)
        return {"zero_trit_fraction": zeros / max(1, sum(t.numel() for t in trits))}
