"""eigenweight — every block matrix stored as U·diag(σ)·Vᵀ of rank r, never materialised.

Each m×n weight becomes U (m×r), σ (r) and V (n×r), applied as ((x·V)·σ)·Uᵀ, so a layer costs r·(m+n+1)
numbers instead of m·n: at rank 128 the 9-layer baseline's blocks shrink about 2.6×, which buys width or depth
under the 16 MB cap. U, σ, V start from a truncated SVD of the baseline's own initial matrix (σ = 0 for the
zero-initialised output projections, so the model starts where the baseline does); Muon trains U and V, Adam
trains σ. Rank is clamped to min(m, n) per matrix. Presets cover the study's plain, asymmetric
(attention/MLP), wide-and-low-rank and recurrent configurations.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from harness.config import param
from harness.model import GPT, Block, RecurrentGPTConfig
from harness.registry import register
from harness.tune.space import Choice, Int

ATTENTION_KINDS = ("q", "k", "v", "o")


@dataclass(frozen=True)
class EigenweightConfig(RecurrentGPTConfig):
    rank: int = param(128, "rank r of every block matrix (clamped to min(m, n))", low=1, high=8192)
    attn_rank: int = param(0, "rank of q, k, v, o (0: use --rank)", low=0, high=8192)
    mlp_rank: int = param(0, "rank of the MLP's fc and proj (0: use --rank)", low=0, high=8192)


class EigenLinear(nn.Module):
    """x ↦ ((x·V)·σ)·Uᵀ; U, V from the truncated SVD of a default-initialised nn.Linear weight."""

    def __init__(self, in_features: int, out_features: int, rank: int, zero_init: bool):
        super().__init__()
        weight = torch.empty(out_features, in_features)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # what nn.Linear (so the baseline) starts from
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        r = min(rank, in_features, out_features)
        self.U = nn.Parameter(u[:, :r].contiguous())
        self.V = nn.Parameter(vh[:r].T.contiguous())
        self.sigma = nn.Parameter(torch.zeros(r) if zero_init else s[:r].clone())

    def forward(self, x: Tensor) -> Tensor:
        return ((x @ self.V.to(x.dtype)) * self.sigma.to(x.dtype)) @ self.U.T.to(x.dtype)


def build(c: EigenweightConfig) -> GPT:
    def linear(kind: str, in_features: int, out_features: int, zero_init: bool) -> nn.Module:
        rank = (c.attn_rank if kind in ATTENTION_KINDS else c.mlp_rank) or c.rank
        return EigenLinear(in_features, out_features, rank, zero_init)

    return GPT(c, blocks=[Block(c, linear=linear) for _ in range(c.num_layers)])


register("eigenweight", config=EigenweightConfig, build=build, doc=__doc__, presets={
    "r64": {"rank": 64},
    "r128": {"rank": 128},
    "r256": {"rank": 256},
    "attn32_mlp96": {"attn_rank": 32, "mlp_rank": 96},
    "attn96_mlp32": {"attn_rank": 96, "mlp_rank": 32},
    "attn128_mlp32": {"attn_rank": 128, "mlp_rank": 32},
    "d1024_r64": {"model_dim": 1024, "rank": 64},
    "d768_r48": {"model_dim": 768, "rank": 48},
    "d1024_r32": {"model_dim": 1024, "rank": 32},
    "r128_rec34x2": {"rank": 128, "num_layers": 9, "repeat_layers": (3, 4), "repeat_times": 2},
}, space={"rank": Int(16, 512, log=True), "mlp_rank": Choice(0, 32, 64, 128, 256)})  # mlp_rank 0: same as rank
