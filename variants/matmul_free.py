"""matmul_free — the MatMul-free LM: an element-wise gated recurrence (MLGRU) instead of attention, all ternary.

The MatMul-free LM (Zhu et al. 2024, arXiv 2406.02528): every dense layer is a BitLinear (ternary weights
{−1, 0, +1}·absmean γ per matrix, 8-bit per-token activations, STE; harness/ternary.py), attention is replaced
by the MLGRU token mixer and the MLP by a GLU channel mixer (SwiGLU, the shared MLP's `swiglu` activation, at
the baseline's parameter count). MLGRU per channel, with ⊛ a ternary matmul:
    f_t = σ(x_t⊛W_f + b_f),  c_t = SiLU(x_t⊛W_c),  h_t = f_t⊙h_{t−1} + (1 − f_t)⊙c_t,
    g_t = σ(x_t⊛W_g),  o_t = (g_t⊙h_t)⊛W_o
The paper's other biases are dropped, as the baseline has none; b_f starts at timescales 2..256 tokens spread
over the channels, and f_t is floored at e^−5 (as HGRN lower-bounds its gates): a chunk's cumulative decay then
stays within fp32. The recurrence runs as a scan with no loop over positions: inside 16-token chunks
h = e^{A_t}·cumsum(e^{−A_s}·u_s) (A the running sum of log f, at most 80 in size), and the chunk end states are
combined by a log-depth (Hillis–Steele) scan over chunks. Causal by construction: no position reads a later
one, and no position encoding is needed. Kept: the tied fp embedding and head, Block's norms, residual mixes,
U-Net skips and soft cap (the attention options do not apply: there is no attention).

Stored: 4·d² MLGRU + 3·d·(2/3·2d) GLU trits per layer, 18.9M trits at 9 × 512 beside the int8 embedding:
19,428,352 numbers, 2,774,712 model bytes at init, 4.11 MB with every weight random (int8+zlib: 4.69 MB).
Per token it costs ~1.2× the baseline's block matmul FLOPs and no attention (O(T·d) instead of O(T²·d)).
"Matmul-free" holds only with a ternary kernel (additions and sign flips) and a fused recurrence: here the
ternary weights are dense bf16 matmuls and the scan is a dozen element-wise passes, so on a GPU it is no faster
than the baseline. Preset d768: width 768, 43.3M numbers, 42.5M trits (8.97 MB random). Expected: worse than the
baseline at equal shape (the paper trails Transformer++ at 370M); better per stored byte.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import param
from harness.model import Block, LinearFactory
from harness.registry import register
from harness.ternary import TernaryConfig, TernaryGPT, bit_linears

SCAN_CHUNK = 16
LOG_FORGET_FLOOR = -5.0  # 16 steps of log f ≥ −5 keep e^{±A} within fp32 (e^80 < 3.4e38)


@dataclass(frozen=True)
class MatMulFreeConfig(TernaryConfig):
    mlp_activation: str = param("swiglu", "channel mixer activation (the paper's GLU: swiglu)",
                                choices=("relu2", "swiglu", "geglu", "gelu", "leaky_relu2"))


def linear_scan(log_f: Tensor, u: Tensor) -> Tensor:
    """h_t = f_t·h_{t−1} + u_t with h_{−1} = 0, for (B, T, d) fp32 log f and u, without a loop over positions:
    exact within SCAN_CHUNK-token chunks through cumulative sums, then each chunk's start state from the chunks
    before it by a Hillis–Steele scan (log2 of the chunk count steps). Zero padding at the end is never read."""
    bsz, seq_len, d = u.shape
    n = -(-seq_len // SCAN_CHUNK)
    pad = n * SCAN_CHUNK - seq_len
    log_f = F.pad(log_f, (0, 0, 0, pad)).view(bsz, n, SCAN_CHUNK, d)
    u = F.pad(u, (0, 0, 0, pad)).view(bsz, n, SCAN_CHUNK, d)
    decay = log_f.cumsum(dim=2)  # log of f's product from the chunk's start to t, ≥ 16·(−5)
    local = torch.exp(decay) * torch.cumsum(torch.exp(-decay) * u, dim=2)  # the chunk run from h = 0
    gain, end = torch.exp(decay[:, :, -1]), local[:, :, -1]  # chunk k: H_k = gain_k·H_{k−1} + end_k
    step = 1
    while step < n:  # compose each chunk with the `step` before it; afterwards end_k = H_k
        end = end + gain * F.pad(end, (0, 0, step, 0))[:, :n]
        gain = gain * F.pad(gain, (0, 0, step, 0), value=1.0)[:, :n]
        step *= 2
    start = F.pad(end, (0, 0, 1, 0))[:, :n, None]  # H_{k−1}: the state entering chunk k
    return (local + torch.exp(decay) * start).reshape(bsz, n * SCAN_CHUNK, d)[:, :seq_len]


class MLGRU(nn.Module):
    """The MatMul-free linear GRU token mixer, in Block's attention slot."""

    def __init__(self, c: MatMulFreeConfig, linear: LinearFactory):
        super().__init__()
        d = c.model_dim
        self.c_f, self.c_c, self.c_g = (linear(kind, d, d, False) for kind in ("f", "c", "g"))
        self.proj = linear("o", d, d, True)
        # σ(b) = 1 − 1/τ for timescales τ from 2 to 256 tokens, log-spaced over the channels.
        self.forget_bias = nn.Parameter(torch.log(torch.logspace(0, math.log10(255), d)))

    def forward(self, x: Tensor) -> Tensor:
        z = self.c_f(x).float() + self.forget_bias
        log_f = F.logsigmoid(z).clamp_min(LOG_FORGET_FLOOR)
        h = linear_scan(log_f, -torch.expm1(log_f) * F.silu(self.c_c(x).float()))
        return self.proj(torch.sigmoid(self.c_g(x)) * h.to(x.dtype))


def build(c: MatMulFreeConfig) -> TernaryGPT:
    linear = bit_linears(c)
    return TernaryGPT(c, blocks=[Block(c, attn=MLGRU(c, linear), linear=linear) for _ in range(c.num_layers)])


register("matmul_free", config=MatMulFreeConfig, build=build, doc=__doc__, presets={
    "d768": {"model_dim": 768},  # 2.25× the trits (~9 MB): ternary weights spend the cap on width
})
