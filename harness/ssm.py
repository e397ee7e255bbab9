"""A selective state-space token mixer (Mamba-style) that takes attention's place in a Block; used by the ssm and
hybrid families. The scan is Mamba-2's chunked form: matmuls within chunks, a small decay matrix across them.

Per token t and head h (E = expand·model_dim channels in H heads of P): h_t = exp(Δ_t·A_h)·h_{t−1} + Δ_t·x_t⊗B_t,
y_t = h_t·C_t + D⊙x_t, with a state of P × N numbers per head. Within a chunk of L tokens the outputs are one
masked L × L product whose decays are differences of the cumulative sums of Δ·A (Dao & Gu 2024, "Transformers
are SSMs", arXiv 2405.21060, as its chunk-scan kernel computes them); the states at the chunk ends are carried
across chunks by an n × n decay matrix over the n chunks, so there is no loop over positions. Decays are
summed and exponentiated in fp32 whatever the activations' dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import param
from harness.model import CastedLinear, GPTConfig
from harness.optim import ParamGroup, default_param_groups


@dataclass(frozen=True)
class SSMConfig(GPTConfig):
    """The baseline plus the shape of its selective state-space mixer."""
    expand: float = param(2.0, "mixer width E ≈ expand·model_dim, rounded to whole heads", low=0.0625, high=8.0)
    state_dim: int = param(16, "state size N: B_t and C_t have N entries, each head's state is P × N",
                           low=1, high=256)
    ssm_head_dim: int = param(64, "channels P per mixer head; the channels of a head share Δ_t and A",
                              low=1, high=4096)
    conv_kernel: int = param(4, "width of the causal depthwise convolution before the scan", low=1, high=64)
    dt_rank: int = param(0, "rank of the low-rank Δ projection (0: ceil(model_dim / 16), as Mamba)", low=0,
                         high=4096)
    chunk_len: int = param(64, "tokens per chunk of the parallel scan (cost only: any value gives the same "
                           "outputs)", low=1, high=4096)

    def mixer_width(self) -> int:
        """E: expand·model_dim rounded to a whole number of heads of ssm_head_dim channels (at least one head)."""
        return max(1, round(self.expand * self.model_dim / self.ssm_head_dim)) * self.ssm_head_dim


def masked_exp(log_decay: Tensor, offset: int = 0) -> Tensor:
    """exp of a (..., rows, cols) matrix of log-decays on and below diagonal `offset`, 0 above it: masked before
    the exp, so the entries above (positive, and large for strong decays) cannot overflow."""
    rows, cols = log_decay.shape[-2:]
    above = torch.ones(rows, cols, dtype=torch.bool, device=log_decay.device).triu(offset + 1)
    return torch.exp(log_decay.masked_fill(above, -math.inf))


def chunked_scan(x: Tensor, dt: Tensor, log_a: Tensor, b: Tensor, c: Tensor, chunk_len: int) -> Tensor:
    """The selective scan for x (Bt, T, H, P), Δ dt (Bt, T, H), A = log_a (H,) < 0, b and c (Bt, T, N) → y (Bt,
    T, H, P), without the D skip. Zero padding at the end reaches no earlier position."""
    bsz, seq_len, heads, width = x.shape
    length = min(chunk_len, seq_len)
    n = -(-seq_len // length)
    pad = n * length - seq_len
    x, b, c = (F.pad(t, [0, 0] * (t.dim() - 2) + [0, pad]).view(bsz, n, length, *t.shape[2:]) for t in (x, b, c))
    wide = torch.promote_types(dt.dtype, torch.float32)
    dt = F.pad(dt.to(wide), (0, 0, 0, pad)).view(bsz, n, length, heads)
    cum = (dt * log_a.to(wide)).permute(0, 1, 3, 2).cumsum(dim=-1)  # (Bt, n, H, L): Σ Δ·A from the chunk start
    xdt = (x * dt.to(x.dtype)[..., None]).transpose(2, 3)  # the input Δ_t·x_t, (Bt, n, H, L, P)
    # Within chunks: y_i = Σ_{j≤i} (C_i·B_j)·exp(Δ_{j+1}A + … + Δ_iA)·Δ_j·x_j, one masked matmul per chunk and head.
    scores = (c @ b.transpose(-1, -2))[:, :, None] * masked_exp(cum[..., :, None] - cum[..., None, :]).to(x.dtype)
    y = scores @ xdt  # (Bt, n, H, L, P)
    # Each chunk's end state, then the state entering each chunk: an n × n decay matrix over the chunk totals.
    to_end = torch.exp(cum[..., -1:] - cum).to(x.dtype)  # (Bt, n, H, L), ≤ 1
    ends = (xdt * to_end[..., None]).transpose(-1, -2) @ b[:, :, None]  # (Bt, n, H, P, N)
    upto = cum[..., -1].transpose(1, 2).cumsum(dim=-1)  # (Bt, H, n): log-decay from the start to chunk c's end
    before = F.pad(upto, (1, 0))[..., :-1]  # … to chunk z's start
    across = masked_exp(before[..., :, None] - upto[..., None, :], -1).to(x.dtype)  # [z, c]: c's end → z's start
    entering = torch.einsum("bhzc,bchpn->bzhpn", across, ends)
    y = y + (c[:, :, None] @ entering.transpose(-1, -2)) * torch.exp(cum).to(x.dtype)[..., None]
    return y.transpose(2, 3).reshape(bsz, n * length, heads, width)[:, :seq_len]


def sequential_scan(x: Tensor, dt: Tensor, log_a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """The same recurrence one position at a time: the reference the chunked form is tested against (a loop
    over positions, so only for tiny sizes)."""
    state = x.new_zeros(x.size(0), x.size(2), x.size(3), b.size(-1))
    out = []
    for t in range(x.size(1)):
        decay = torch.exp(dt[:, t] * log_a)[:, :, None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * b[:, t, None, None, :]
        out.append(torch.einsum("bhpn,bn->bhp", state, c[:, t]))
    return torch.stack(out, dim=1)


def causal_conv(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Depthwise causal convolution of x (B, T, C) with weight (C, 1, k) as k shifted multiply-adds: out_t =
    bias + Σ_j weight[:, 0, j]·x_{t−k+1+j}. Elementwise work that compiles into one kernel (a CPU conv1d of
    this shape is slower than the scan)."""
    kernel = weight.size(-1)
    padded = F.pad(x, (0, 0, kernel - 1, 0))
    w = weight.to(x.dtype)
    out = bias.to(x.dtype) + padded[:, kernel - 1:] * w[:, 0, kernel - 1]
    for j in range(kernel - 1):
        out = out + padded[:, j:j + x.size(1)] * w[:, 0, j]
    return out


class SSMMixer(nn.Module):
    """Mamba's mixer (Gu & Dao 2023, arXiv 2312.00752) with Mamba-2's per-head decay and single input projection:
    in_proj → (z, x, B, C, Δ's low-rank code); (x, B, C) through a causal depthwise conv and silu; Δ = softplus
    (dt_proj(code) + bias) per head; the scan; + D⊙x; gated by silu(z); out_proj (zero-initialised, as the
    baseline's output projections). One in_proj instead of Mamba-1's in_proj and x_proj: one matmul, and no
    matrix of ≤ 65,536 numbers that the export would keep in fp16."""

    def __init__(self, c: SSMConfig):
        super().__init__()
        width = c.mixer_width()
        self.width, self.heads = width, width // c.ssm_head_dim
        self.state_dim, self.chunk_len = c.state_dim, c.chunk_len
        self.dt_rank = c.dt_rank or math.ceil(c.model_dim / 16)
        conv_width = width + 2 * c.state_dim
        self.in_proj = CastedLinear(c.model_dim, width + conv_width + self.dt_rank)
        self.conv_weight = nn.Parameter(torch.empty(conv_width, 1, c.conv_kernel).uniform_(-1, 1)
                                        / c.conv_kernel ** 0.5)  # nn.Conv1d's init
        self.conv_bias = nn.Parameter(torch.zeros(conv_width))
        self.dt_proj = CastedLinear(self.dt_rank, self.heads)
        # Δ starts log-uniform in [0.001, 0.1] (Mamba's init), stored through the inverse of softplus.
        dt = torch.exp(torch.rand(self.heads) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real rates spread over the heads: A_h = −(h+1)·N/H, so 1…N at H = N, as S4D's A_n = −(n+1).
        rates = torch.arange(1, self.heads + 1, dtype=torch.float32) * c.state_dim / self.heads
        self.A_log = nn.Parameter(torch.log(rates))
        self.D = nn.Parameter(torch.ones(width))
        self.out_proj = CastedLinear(width, c.model_dim, zero_init=True)

    def forward(self, u: Tensor) -> Tensor:
        bsz, seq_len, _ = u.shape
        z, xbc, code = self.in_proj(u).split([self.width, self.conv_weight.size(0), self.dt_rank], dim=-1)
        xbc = F.silu(causal_conv(xbc, self.conv_weight, self.conv_bias))
        x, b, c = xbc.split([self.width, self.state_dim, self.state_dim], dim=-1)
        dt = F.softplus(self.dt_proj(code).float() + self.dt_bias.float())
        y = chunked_scan(x.reshape(bsz, seq_len, self.heads, -1), dt, -torch.exp(self.A_log.float()), b, c,
                         self.chunk_len).reshape(bsz, seq_len, -1)
        y = y + x * self.D.to(x.dtype)
        return self.out_proj(y * F.silu(z))


def param_groups(model: nn.Module, c) -> list[ParamGroup]:
    """The baseline's split, with every mixer's conv kernel (3-D), conv bias, Δ bias, log(−A) and D on Adam at the
    scalar learning rate: Muon takes only the 2-D projections."""
    small = [p for m in model.modules() if isinstance(m, SSMMixer)
             for p in (m.conv_weight, m.conv_bias, m.dt_bias, m.A_log, m.D)]
    return default_param_groups(model, c, ParamGroup("ssm_scalars", small, "adam", c.scalar_lr))
